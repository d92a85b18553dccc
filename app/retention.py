"""How long stored objects are kept: per kind, per tenant, per request.

Every stored object has an ``expires_at``. Predictions, jobs (with their chunks and results)
and integration events expire ``ttl`` after they were created; a delivery (with its attempts)
``ttl`` after it became final (``delivered`` or ``dead``), so it is never purged while it is
still being sent. The ``ttl`` is the request's ``ttl_s`` (predictions and jobs, capped by
``max_ttl``), else the tenant's own retention (``INFERQ_TENANT_RETENTION``), else the default of
its kind (``INFERQ_RETENTION_<KIND>_SECONDS``).

Nothing live is ever purged: a queued or running object past its expiry is kept until it is
final, and is purged at the next run after that. An object that is final and past its expiry is
*expired*: every read answers 404 for it, as it will once the purge (``app.purge``) has run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from app.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from app.settings import Settings

DAY_S = 86_400.0
DEFAULT_RETENTION_S = 7 * DAY_S
"""The default of every kind, and what a row stored without an explicit expiry gets."""
DEFAULT_MAX_TTL_S = 30 * DAY_S


class Kind(StrEnum):
    """What is kept, each with its own default retention."""

    predictions = "predictions"
    jobs = "jobs"
    deliveries = "deliveries"
    events = "events"


TENANT_KEYS = frozenset({*(k.value for k in Kind), "max_ttl"})
"""The keys a tenant's entry in ``INFERQ_TENANT_RETENTION`` may have (values in seconds)."""


def retention_s(settings: Settings, kind: Kind | str, tenant: str) -> float:
    """Seconds objects of ``kind`` of ``tenant`` are kept (the tenant's own, else the default)."""
    own = settings.tenant_retention.get(tenant)
    if own is not None and kind in own:
        return float(own[kind])
    return float(getattr(settings, f"retention_{kind}_seconds"))


def max_ttl_s(settings: Settings, tenant: str) -> float:
    """The longest ``ttl_s`` a request of ``tenant`` may ask for."""
    own = settings.tenant_retention.get(tenant)
    if own is not None and "max_ttl" in own:
        return float(own["max_ttl"])
    return float(settings.max_ttl_seconds)


def expires_at(
    settings: Settings,
    kind: Kind | str,
    tenant: str,
    start: datetime,
    ttl_s: float | None = None,
) -> datetime:
    """When an object of ``kind`` made at ``start`` expires: ``start`` plus the request's
    ``ttl_s`` when given, else the tenant's retention.

    Raises: ``InvalidInput`` (``ttl_too_long``, a 422) for a ``ttl_s`` over the tenant's cap, or
    not a positive number.
    """
    if ttl_s is None:
        return start + timedelta(seconds=retention_s(settings, kind, tenant))
    cap = max_ttl_s(settings, tenant)
    if not 0 < ttl_s <= cap:  # NaN fails the comparison too
        raise InvalidInput(
            f"ttl_s must be a number of seconds in (0, {cap:g}] ({human(cap)}), got {ttl_s:g}",
            code="ttl_too_long" if ttl_s > cap else "invalid_input",
        )
    return start + timedelta(seconds=ttl_s)


def is_expired(final: bool, expiry: datetime | None, now: datetime) -> bool:
    """True when an object is gone for its readers: final and past its expiry."""
    return final and expiry is not None and expiry <= now


def human(seconds: float) -> str:
    """``7 days``, ``1 day``, ``6 hours``, ``90 seconds``: a retention as people say it."""
    for unit, size in (("day", DAY_S), ("hour", 3600.0), ("minute", 60.0)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds:g} seconds"


_WHAT = {
    Kind.predictions: ("prediction", "created"),
    Kind.jobs: ("job", "created"),
    Kind.deliveries: ("delivery", "final"),
    Kind.events: ("event", "created"),
}


def not_found(settings: Settings, kind: Kind, object_id: str, tenant: str) -> NotFound:
    """The 404 of an unknown, another tenant's or an expired object, saying how long such
    objects are kept (the same words whichever it is, so nothing leaks across tenants)."""
    what, since = _WHAT[kind]
    kept = human(retention_s(settings, kind, tenant))
    return NotFound(
        f"{what} {object_id} not found ({kind.value} are kept for {kept} after they are "
        f"{since}, unless the request set ttl_s)"
        if kind in (Kind.predictions, Kind.jobs)
        else f"{what} {object_id} not found ({kind.value} are kept for {kept} after they are "
        f"{since})"
    )


@contextmanager
def noting(settings: Settings, kind: Kind, object_id: str, tenant: str) -> Iterator[None]:
    """Within: a plain ``NotFound`` (of the object ``object_id``) becomes ``not_found``'s, which
    says how long such objects are kept. Subclasses (an unknown model) pass as they are."""
    try:
        yield
    except NotFound as exc:
        if type(exc) is not NotFound:
            raise
        raise not_found(settings, kind, object_id, tenant) from None


def check_tenant_retention(value: Mapping[str, Mapping[str, float]]) -> None:
    """Raise ``ValueError`` for an ``INFERQ_TENANT_RETENTION`` entry with an unknown key or a
    value that is not a positive number of seconds."""
    for tenant, entry in value.items():
        unknown = set(entry) - TENANT_KEYS
        if unknown:
            raise ValueError(
                f"INFERQ_TENANT_RETENTION[{tenant!r}]: unknown keys {sorted(unknown)}; "
                f"allowed: {sorted(TENANT_KEYS)}"
            )
        for key, seconds in entry.items():
            if not float(seconds) > 0:
                raise ValueError(
                    f"INFERQ_TENANT_RETENTION[{tenant!r}][{key!r}] must be a positive number "
                    f"of seconds, got {seconds!r}"
                )
