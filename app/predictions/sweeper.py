"""The sweeper (run by beat): ends poison inputs and publishes again work whose message was lost.

Two decisions nobody else can take, since a dead worker runs nothing more:

- a prediction whose worker was lost ``INFERQ_MAX_ATTEMPTS`` times (running under a lease that
  ran out, claimed that often) ends ``failed`` with ``worker_lost``, its webhook and
  integration outbox rows and the NOTIFY for long-polls in the same transaction (``app.poison``
  says why only the poison gets there: rows of a lost worker run alone afterwards);
- what may have lost its message is published again, by the rule of ``app.requeue``: rows
  never published or whose worker was lost always, queued rows only when their model's queue
  cannot be holding their message any more, so a long backlog is never copied.

Running twice, or in two processes at once, is harmless: every write is conditional.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app import metrics
from app.db import predictions as crud
from app.db import sweeps
from app.db.base import utcnow
from app.db.engine import session_scope
from app.predictions.executor import AfterCommit, WriteHook, store_final
from app.predictions.service import Publisher
from app.requeue import QueueView
from app.settings import Settings

log = logging.getLogger(__name__)

MESSAGE_IDS = 256
"""Ids per message the sweeper publishes."""


@dataclass(slots=True)
class SweepReport:
    republished: int
    held_back: int = 0
    """Stale rows not published again: their model's queue still holds their backlog."""
    failed: int = 0
    """Predictions ended ``worker_lost``."""


def sweep_predictions(
    *,
    sessions: sessionmaker[Session],
    publisher: Publisher,
    settings: Settings,
    write_hooks: Sequence[WriteHook] = (),
    after_commit: Sequence[AfterCommit] = (),
    lost_before: datetime | None = None,
) -> SweepReport:
    """End poison inputs, then publish again what may have lost its message (see the module).

    One sweep at a time, across every worker thread and host (a Postgres advisory lock): two at
    once (a sweeper with two threads, a sweep that ran long) would split or repeat one backlog's
    publish. A regular sweep that finds another running leaves the work to it; a recovery
    (``lost_before``) waits for its turn."""
    with sweep_turn(sessions, wait=lost_before is not None) as mine:
        if not mine:
            return SweepReport(0)
        return _sweep(
            sessions=sessions,
            publisher=publisher,
            settings=settings,
            write_hooks=write_hooks,
            after_commit=after_commit,
            lost_before=lost_before,
        )


SWEEP_LOCK = 0x696E6671  # "infq"
"""The advisory lock key of ``sweep_predictions``."""
_local_turn = threading.Lock()


@contextmanager
def sweep_turn(sessions: sessionmaker[Session], *, wait: bool) -> Iterator[bool]:
    """Whether this sweep may run (held until the block ends): a Postgres session-level
    advisory lock on a connection of its own (autocommit: no transaction held open), a
    process-wide lock elsewhere (SQLite: one host)."""
    bind = sessions.kw.get("bind")
    if bind is None or bind.dialect.name != "postgresql":
        got = _local_turn.acquire(blocking=wait)
        try:
            yield got
        finally:
            if got:
                _local_turn.release()
        return
    with bind.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        fn = "pg_advisory_lock" if wait else "pg_try_advisory_lock"
        got = conn.execute(text(f"SELECT {fn}(:k)"), {"k": SWEEP_LOCK}).scalar() is not False
        try:
            yield got
        finally:
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": SWEEP_LOCK})


def _sweep(
    *,
    sessions: sessionmaker[Session],
    publisher: Publisher,
    settings: Settings,
    write_hooks: Sequence[WriteHook] = (),
    after_commit: Sequence[AfterCommit] = (),
    lost_before: datetime | None = None,
) -> SweepReport:
    """End poison inputs, then publish again what may have lost its message (see the module).
    ``write_hooks`` and ``after_commit`` are the workers' (webhooks, integrations).

    ``lost_before``: the broker lost every message it held (it restarted without keeping them:
    ``app.requeue.BrokerWatch`` found out at that time), so every live request published
    before then and not held by a live worker is published again now, whatever the requeue
    time and the queue's depth say."""
    failed = fail_poison(
        sessions=sessions, settings=settings, write_hooks=write_hooks, after_commit=after_commit
    )
    now = utcnow()
    requeue_after = timedelta(seconds=settings.requeue_after_seconds)
    requeue_before = now - requeue_after if lost_before is None else lost_before
    with session_scope(sessions) as s:
        stale = sweeps.stale(session=s, now=now, requeue_before=requeue_before)
    if lost_before is None:
        chosen = _choose(sessions, publisher, stale, now=now, requeue_after=requeue_after)
    else:
        chosen = [row.id for row in stale]
    with session_scope(sessions) as s:
        taken = sweeps.take_for_publish(  # stamped when taken, not when the sweep began
            session=s, ids=chosen, now=utcnow(), requeue_before=requeue_before
        )
    _publish(sessions, publisher, taken)
    metrics.swept(stale, taken)
    report = SweepReport(len(taken), len(stale) - len(chosen), failed)
    if taken or failed:
        log.info(
            "sweeper",
            extra={"republished": len(taken), "held_back": report.held_back, "failed": failed},
        )
    return report


def fail_poison(
    *,
    sessions: sessionmaker[Session],
    settings: Settings,
    write_hooks: Sequence[WriteHook] = (),
    after_commit: Sequence[AfterCommit] = (),
) -> int:
    """End ``worker_lost`` the predictions whose worker was lost ``max_attempts`` times;
    returns how many."""

    def write(s: Session) -> list[crud.Written]:
        return sweeps.fail_lost(session=s, now=utcnow(), max_attempts=settings.max_attempts)

    written = store_final(sessions, write, write_hooks, after_commit)
    if written:
        log.warning(
            "poison inputs failed: their worker was lost too often",
            extra={"count": len(written), "ids": [w.id for w in written[:20]]},
        )
    return len(written)


def _choose(
    sessions: sessionmaker[Session],
    publisher: Publisher,
    stale: list[sweeps.StaleRow],
    *,
    now: datetime,
    requeue_after: timedelta,
) -> list[str]:
    """The ids of ``stale`` whose message may be lost (``app.requeue``)."""
    views: dict[str, QueueView] = {}
    chosen = []
    for row in stale:
        if not row.due:
            view = views.get(row.model)
            if view is None:
                view = views[row.model] = _view(sessions, publisher, row.model, now)
            if not view.may_be_lost(row.published_at, requeue_after):
                continue
        chosen.append(row.id)
    return chosen


def _view(
    sessions: sessionmaker[Session], publisher: object, model: str, now: datetime
) -> QueueView:
    def front() -> datetime | None:
        with sessions() as s:
            return sweeps.newest_held(session=s, model=model, now=now)

    return QueueView.read(publisher, model, front)


def _publish(
    sessions: sessionmaker[Session], publisher: Publisher, taken: list[tuple[str, str, int]]
) -> None:
    groups: dict[tuple[str, int], list[str]] = {}
    for pid, model, priority in taken:
        groups.setdefault((model, priority), []).append(pid)
    for (model, priority), ids in groups.items():
        for start in range(0, len(ids), MESSAGE_IDS):
            part = ids[start : start + MESSAGE_IDS]
            try:
                publisher.publish(model, part, priority)
            except Exception as exc:
                log.warning("sweeper publish failed", extra={"error": repr(exc)})
                with session_scope(sessions) as s:
                    crud.mark_published(session=s, ids=part, when=None)
