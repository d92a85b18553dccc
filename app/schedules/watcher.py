"""The event trigger: a new file in a watched folder starts a run, once.

A schedule whose file source says ``"watch": true`` watches the folders its glob covers. The
watcher is a step of the schedules tick (beat sends it every few seconds) that scans those
folders, rather than a long-lived inotify process: a scan needs no state but the database,
so it is restart-safe by construction, works on network mounts where inotify events never
arrive, and any number of workers may run it at once.

"Once" is a row in ``watched_files`` keyed by (schedule, path, sha256), inserted in the same
transaction as the run it starts; a second scan, a restarted watcher or a concurrent one finds
the row (or loses the insert race) and starts nothing. Files are hashed only when their
(path, size, mtime) is new, and only after they have been still for ``settle_seconds``, so a
file that is still being written is not taken in half-way.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from app.db import schedules as crud
from app.db.base import new_id
from app.db.engine import session_scope
from app.db.schedules import Schedule
from app.errors import InvalidInput
from app.schedules import access, sources
from app.schedules.config import ScheduleConfig
from app.settings import Settings

log = logging.getLogger(__name__)

BATCH = 500


def scan(
    *, sessions: sessionmaker[Session], cfg: ScheduleConfig, settings: Settings, now: datetime
) -> int:
    """Start a run for every new file of every watching schedule (only files in its tenant's
    folders); returns how many."""
    with session_scope(sessions) as s:
        watching = crud.watching(session=s)
    started = 0
    for sched in watching:
        try:
            roots = access.roots_for(sched.tenant, settings=settings, cfg=cfg)
            started += _scan_one(sessions, cfg, roots, sched, now.timestamp())
        except (InvalidInput, OSError) as exc:
            log.warning(
                "cannot watch the schedule's folder",
                extra={"schedule": sched.id, "error": getattr(exc, "message", str(exc))},
            )
    return started


def _scan_one(
    sessions: sessionmaker[Session],
    cfg: ScheduleConfig,
    roots: access.Roots,
    sched: Schedule,
    now_ts: float,
) -> int:
    pattern = sources.resolve_path(sched.source["path"], roots, where="source.path")
    inside, refused = sources.matching_files(pattern, roots)
    if refused:
        log.warning(
            "files that lead out of the tenant's folders are not taken in",
            extra={"schedule": sched.id, "paths": [str(p) for p in refused[:10]]},
        )
    files = [
        (str(p), st.st_size, st.st_mtime_ns)
        for p in inside
        if (st := p.stat()) and now_ts - st.st_mtime >= cfg.settle_seconds
    ]
    started = 0
    for start in range(0, len(files), BATCH):
        part = files[start : start + BATCH]
        with session_scope(sessions) as s:
            known = crud.known_stats(session=s, schedule_id=sched.id, paths=[f[0] for f in part])
        for path, size, mtime_ns in part:
            if (path, size, mtime_ns) not in known and _take_in(
                sessions, sched, path, size, mtime_ns
            ):
                started += 1
    return started


def _take_in(
    sessions: sessionmaker[Session], sched: Schedule, path: str, size: int, mtime_ns: int
) -> bool:
    """Record the file and start its run in one transaction; False if it was seen before."""
    from pathlib import Path

    started = time.monotonic()
    sha = sources.file_sha256(Path(path))
    run_id = new_id("run")
    with session_scope(sessions) as s:
        new = crud.record_file(
            session=s,
            schedule_id=sched.id,
            path=path,
            size=size,
            mtime_ns=mtime_ns,
            sha256=sha,
            run_id=run_id,
        )
        if new:
            crud.add_run(session=s, schedule=sched, trigger="file", file_path=path, run_id=run_id)
    if new:
        log.info(
            "new file in a watched folder",
            extra={
                "schedule": sched.id,
                "path": path,
                "sha256": sha[:12],
                "hash_ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
    return new
