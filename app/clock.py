"""One clock for every host: the database's.

Leases, deadlines, queue waits, publish times and delivery schedules are instants that one
process writes and another compares: an API stamps ``created_at``, a worker on another host
stamps a lease, a sweeper on a third decides it ran out. Their clocks need not agree (a host
whose NTP is off by a minute would lose every lease it takes, or hold ones it lost), so each
process reads Postgres' clock at start-up (and again every ``RESYNC_S``) and keeps its own
clock's offset from it: ``now()`` is the database's time, within a round trip. SQLite is on
this host: no offset.

``INFERQ_TEST_CLOCK_SKEW_SECONDS`` (tests only) moves this process's own clock, as a host
whose clock is wrong; the offset then takes it out again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)

SKEW_ENV = "INFERQ_TEST_CLOCK_SKEW_SECONDS"
RESYNC_S = 300.0
SAMPLES = 5
WARN_S = 1.0

_skew = timedelta(seconds=float(os.environ.get(SKEW_ENV) or 0.0))
_offset = timedelta(0)
_lock = threading.Lock()
_keeper: threading.Thread | None = None


def local_now() -> datetime:
    """This host's own clock."""
    return datetime.now(UTC) + _skew


def now() -> datetime:
    """The database's clock (this host's, corrected by the last offset measured)."""
    return datetime.now(UTC) + _skew + _offset


def offset() -> timedelta:
    return _offset


def measure(engine: Any) -> timedelta | None:
    """The database's clock minus this host's, from the sample with the shortest round trip;
    None on SQLite (the same host)."""
    if engine.dialect.name != "postgresql":
        return None
    from sqlalchemy import text

    best: tuple[timedelta, timedelta] | None = None
    with engine.connect() as conn:
        for _ in range(SAMPLES):
            t0 = local_now()
            db = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
            t1 = local_now()
            rtt = t1 - t0
            if best is None or rtt < best[0]:
                best = (rtt, db - (t0 + rtt / 2))
        conn.rollback()
    assert best is not None
    return best[1]


def sync(engine: Any) -> timedelta:
    """Measure and keep the offset; returns it (logged when it is large)."""
    global _offset
    measured = measure(engine)
    if measured is None:
        return _offset
    with _lock:
        _offset = measured
    seconds = measured.total_seconds()
    if abs(seconds) >= WARN_S:
        log.warning(
            "this host's clock is off the database's; using the database's",
            extra={"offset_s": round(seconds, 3)},
        )
    return measured


def keep_synced(engine: Any, every_s: float = RESYNC_S) -> None:
    """``sync`` now, then every ``every_s`` seconds on a daemon thread (once per process);
    a failed measurement keeps the last offset."""
    global _keeper
    try:
        sync(engine)
    except Exception as exc:
        log.warning("database clock not read", extra={"error": repr(exc)[:200]})
    if engine.dialect.name != "postgresql":
        return
    with _lock:
        if _keeper is not None and _keeper.is_alive():
            return

        def loop() -> None:
            while True:
                time.sleep(every_s)
                try:
                    sync(engine)
                except Exception as exc:
                    log.warning("database clock not read", extra={"error": repr(exc)[:200]})

        _keeper = threading.Thread(target=loop, name="db-clock", daemon=True)
        _keeper.start()
