"""Accepting predictions: validate, store (source of truth), then publish.

A request is committed before it is published; if the publish fails the rows keep
``published_at = NULL`` and the sweeper publishes them as soon as the broker is back.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app import metrics, retention, tracing
from app.db import predictions as crud
from app.db.base import new_id, utcnow
from app.db.engine import session_scope
from app.db.models import PRIORITIES, Prediction, Status
from app.delivery import egress
from app.errors import Conflict, InvalidInput
from app.predictions.admission import Admission, OverLimit
from app.predictions.inputs import validate_input
from app.registry import Registry
from app.settings import Settings

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """Puts a message carrying prediction ids on the model's queue."""

    def publish(self, model: str, ids: Sequence[str], priority: int) -> None: ...


@dataclass(slots=True)
class Submission:
    """A caller's request for one or more predictions of one model."""

    tenant: str
    model: str
    inputs: list[Any]
    many: bool = False
    callback_url: str | None = None
    priority: str = "normal"
    deadline_s: float | None = None
    metadata: dict[str, Any] | None = None
    idempotency_key: str | None = None
    model_version: str | None = None
    ttl_s: float | None = None
    """How long to keep the predictions (capped by ``max_ttl``); None: the tenant's retention."""
    traceparent: str | None = None
    """The W3C trace context its rows carry (``app.tracing``); None: the current one."""
    rows: list[dict[str, Any]] = field(default_factory=list)

    def request_hash(self) -> str:
        body = [
            self.model,
            self.model_version,
            self.inputs,
            self.many,
            self.callback_url,
            self.priority,
            self.deadline_s,
            self.metadata,
        ]
        if self.ttl_s is not None:  # only then: the hashes of earlier requests stay the same
            body.append(self.ttl_s)
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def prepare(
    sub: Submission, *, registry: Registry, settings: Settings, now: datetime
) -> Submission:
    """Validate ``sub`` and build its rows; raises ``InvalidInput`` / ``UnknownModel``."""
    entry = registry.get(sub.model, sub.model_version)
    if sub.priority not in PRIORITIES:
        raise InvalidInput(f"priority must be one of {list(PRIORITIES)}, got {sub.priority!r}")
    if sub.deadline_s is not None and not 0 < sub.deadline_s <= 86_400:
        raise InvalidInput("deadline_s must be a number of seconds in (0, 86400]")
    if not sub.inputs:
        raise InvalidInput("inputs must not be empty")
    if sub.callback_url is not None:
        egress.check_caller_url(sub.callback_url, settings)
    if len(sub.inputs) > settings.max_inputs_per_request:
        raise InvalidInput(
            f"at most {settings.max_inputs_per_request} inputs per request, got {len(sub.inputs)}"
        )
    normalised = [
        validate_input(
            entry.manifest,
            value,
            max_text_chars=settings.max_text_chars,
            where=f"inputs[{i}]" if sub.many else "input",
        )
        for i, value in enumerate(sub.inputs)
    ]
    deadline = None if sub.deadline_s is None else now + timedelta(seconds=sub.deadline_s)
    expiry = retention.expires_at(settings, retention.Kind.predictions, sub.tenant, now, sub.ttl_s)
    req_hash = sub.request_hash() if sub.idempotency_key else None
    trace = sub.traceparent or tracing.current_header()
    sub.rows = [
        {
            "id": new_id("pred"),
            "tenant": sub.tenant,
            "model": entry.manifest.name,
            "model_version": entry.manifest.version,
            "status": "queued",
            "priority": PRIORITIES[sub.priority],
            "input": value,
            "callback_url": sub.callback_url,
            "metadata_": sub.metadata,
            "idempotency_key": _idem_key(sub.idempotency_key, i),
            "request_hash": req_hash,
            "deadline_at": deadline,
            "created_at": now,
            "published_at": now,
            "attempts": 0,
            "expires_at": expiry,
            "traceparent": trace,
        }
        for i, value in enumerate(normalised)
    ]
    return sub


def _idem_key(key: str | None, i: int) -> str | None:
    return None if key is None else f"{key}#{i}"


def find_replay(session: Session, sub: Submission) -> list[Prediction] | None:
    """The predictions an earlier request with the same idempotency key created, if any.

    Raises ``Conflict`` when the key was used for a different request.
    """
    if not sub.idempotency_key:
        return None
    keys = [_idem_key(sub.idempotency_key, i) or "" for i in range(len(sub.inputs))]
    found = crud.get_by_idempotency(session=session, tenant=sub.tenant, keys=keys[:1])
    if not found:
        return None
    if found[0].request_hash != sub.request_hash():
        raise Conflict(
            "Idempotency-Key was already used with a different request body",
            code="idempotency_conflict",
        )
    return crud.get_by_idempotency(session=session, tenant=sub.tenant, keys=keys)


Stored = list[Prediction] | None | OverLimit
"""Per submission: the earlier predictions it replays, None (its rows stored) or why it was
refused (nothing of it stored)."""


def store_and_publish(
    subs: Sequence[Submission],
    *,
    sessions: sessionmaker[Session],
    publisher: Publisher,
    admission: Admission | None = None,
) -> list[Stored]:
    """Store every submission's rows in one transaction, then publish them.

    Returns, per submission, the earlier predictions when it replays an idempotency key
    (None when its own rows were stored), or the ``OverLimit`` that refused it (a replay is
    never refused: it stores nothing). A ``Conflict`` for one submission is raised only when it
    is alone; in a group, each is retried alone so one bad key fails one request.
    """
    try:
        with session_scope(sessions) as s:
            found: list[Stored] = [find_replay(s, sub) for sub in subs]
            fresh = [i for i, rep in enumerate(found) if rep is None]
            if admission is not None and fresh:
                wants = [
                    (subs[i].tenant, subs[i].rows[0]["model"], len(subs[i].rows)) for i in fresh
                ]
                for i, verdict in zip(fresh, admission.admit(s, wants), strict=True):
                    found[i] = verdict
            replays = found
            rows = [
                r for sub, rep in zip(subs, replays, strict=True) if rep is None for r in sub.rows
            ]
            crud.insert_predictions(session=s, rows=rows)
    except (IntegrityError, Conflict):
        if len(subs) == 1:
            with session_scope(sessions) as s:  # a concurrent twin won the race: replay it
                replay = find_replay(s, subs[0])
            if replay is None:
                raise
            return [replay]
        raise
    publish_rows(rows, publisher=publisher, sessions=sessions)
    return replays


def publish_rows(
    rows: Sequence[dict[str, Any]],
    *,
    publisher: Publisher,
    sessions: sessionmaker[Session],
    chunk: int = 256,
) -> None:
    """Publish stored rows, one message per (model, priority) chunk; failures are left to the sweeper."""
    groups: dict[tuple[str, int], list[str]] = {}
    traces: dict[tuple[str, int], str | None] = {}
    for r in rows:
        key = (r["model"], r["priority"])
        groups.setdefault(key, []).append(r["id"])
        traces.setdefault(key, r.get("traceparent"))
    for key, ids in groups.items():
        model, priority = key
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            try:
                # The message carries its first request's trace (each row carries its own).
                with tracing.use(tracing.parse(traces[key])):
                    publisher.publish(model, part, priority)
            except Exception as exc:
                log.warning(
                    "publish failed; the sweeper will publish again",
                    extra={"model": model, "count": len(part), "error": repr(exc)},
                )
                try:
                    with session_scope(sessions) as s:
                        crud.mark_published(session=s, ids=part, when=None)
                except Exception:
                    log.exception("could not mark unpublished rows")


def cancel(
    *, sessions: sessionmaker[Session], settings: Settings, tenant: str, prediction_id: str
) -> Prediction:
    """Cancel a prediction that has not started; ``NotFound`` (an expired one too) /
    ``Conflict`` otherwise."""
    with session_scope(sessions) as s:
        if not crud.cancel_prediction(session=s, tenant=tenant, prediction_id=prediction_id):
            p = crud.get_prediction(session=s, tenant=tenant, prediction_id=prediction_id)
            if p is None or retention.is_expired(Status(p.status).is_final, p.expires_at, utcnow()):
                raise retention.not_found(
                    settings, retention.Kind.predictions, prediction_id, tenant
                )
            raise Conflict(
                f"prediction {prediction_id} is {p.status}; only queued ones can be cancelled",
                code="not_cancellable",
            )
        p = crud.get_prediction(session=s, tenant=tenant, prediction_id=prediction_id)
        assert p is not None
        crud.notify_done(session=s, ids=[p.id])
    metrics.ended(p.model, "cancelled")
    return p


def now() -> datetime:
    return utcnow()
