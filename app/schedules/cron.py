"""Cron expressions and time zones: checking them and finding the next firing time."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from app.errors import InvalidInput


def check_timezone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; ``InvalidInput`` if there is none of that name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidInput(
            f"timezone: unknown time zone {name!r}; use an IANA name such as 'Europe/Berlin'"
        ) from exc


def check_cron(expr: str) -> str:
    """A five-field cron expression (or a macro like ``@daily``) that fires at some point.

    Raises:
        InvalidInput: it is malformed, has a seconds field, or never fires (``0 0 31 2 *``).
    """
    expr = " ".join(expr.split())
    if not expr.startswith("@") and len(expr.split(" ")) != 5:
        raise InvalidInput(
            f"cron: {expr!r} must have five fields (minute hour day-of-month month day-of-week)"
        )
    if not croniter.is_valid(expr):
        raise InvalidInput(f"cron: {expr!r} is not a valid cron expression")
    try:
        croniter(expr, datetime.now(UTC)).get_next(datetime)
    except CroniterBadDateError as exc:
        raise InvalidInput(f"cron: {expr!r} never fires") from exc
    return expr


def next_run(expr: str, timezone: str, after: datetime) -> datetime:
    """The first time after ``after`` at which ``expr``, read in ``timezone``, fires (UTC)."""
    local = after.astimezone(ZoneInfo(timezone))
    nxt: datetime = croniter(expr, local).get_next(datetime)
    return nxt.astimezone(UTC)
