"""Carrying schedules out: the tick that fires due schedules, takes in new files, runs what is
pending and writes finished runs' sinks.

Beat sends one ``inferq.schedules_tick`` message every ``tick_seconds``; whichever worker takes
it calls ``tick``. All state is in Postgres, and every step claims its rows with
``FOR UPDATE SKIP LOCKED`` and changes them in the same transaction (a due schedule's
``next_run_at`` is advanced as its run is inserted), so ticks may overlap, come from two beats
or be retried, and a schedule still fires once per due time.

A run reads its source, hands the rows to ``create_job`` (bulk jobs) and records, on the run
and on the job, the provenance that makes it repeatable: schedule, data read (paths and sha256,
or query, row count and watermarks), model name, version and sha256, inferq version, parameters.
Runs missed while nothing ticked (beat down for an hour) are coalesced into one. Runs of one
schedule take turns, so two runs never read a SQL source from the same watermark.

Sinks are written by the tick, not by a jobs finish hook: the hook runs inside the transaction
that ends the job, where writing a million rows elsewhere does not belong, and a small job can
end before its run has recorded the job id. The tick finds runs whose job has ended and writes
their sink idempotently (see ``sinks``).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app import __version__, tracing
from app.db import schedules as crud
from app.db.base import utcnow
from app.db.engine import session_scope
from app.db.schedules import RunStatus, Schedule, ScheduleRun
from app.errors import InferqError, InvalidInput
from app.jobs.ingest import JobPublisher
from app.jobs.results import open_results
from app.jobs.service import create_job
from app.predictions.views import iso
from app.registry import ModelEntry, Registry
from app.schedules import access, sinks, sources, watcher
from app.schedules.config import ScheduleConfig
from app.schedules.cron import next_run
from app.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Ticker:
    """What a tick needs; workers build one at start-up."""

    sessions: sessionmaker[Session]
    publisher: JobPublisher
    registry: Registry
    settings: Settings
    cfg: ScheduleConfig


@dataclass(slots=True)
class TickReport:
    fired: int = 0
    files: int = 0
    ran: int = 0
    sinks: int = 0


_housekeeping = threading.Lock()


def tick(t: Ticker, *, now: datetime | None = None) -> TickReport:
    """One pass: fire due schedules, take in new files, carry out pending runs, write sinks."""
    now = now or utcnow()
    report = TickReport()
    if _housekeeping.acquire(blocking=False):  # a slow tick in this process must not pile up
        try:
            report.fired = fire_due(t.sessions, now)
            report.files = watcher.scan(
                sessions=t.sessions, cfg=t.cfg, settings=t.settings, now=now
            )
            with session_scope(t.sessions) as s:
                crud.requeue_stale_runs(
                    session=s,
                    now=now,
                    stale_after=timedelta(seconds=t.cfg.stale_run_seconds),
                    max_attempts=t.cfg.max_run_attempts,
                )
        finally:
            _housekeeping.release()
    for _ in range(t.cfg.runs_per_tick):
        with session_scope(t.sessions) as s:
            run = crud.claim_run(session=s, now=utcnow())
        if run is None:
            break
        with tracing.span("inferq.schedule_run", root=True, attributes={"inferq.run": run.id}):
            execute(t, run.id)  # one trace per run: its logs, its job's messages and webhook
        report.ran += 1
    report.sinks = write_sinks(t)
    return report


def fire_due(sessions: sessionmaker[Session], now: datetime) -> int:
    """A pending run for every enabled schedule due at ``now``; its next time moves on."""
    with session_scope(sessions) as s:
        due = crud.claim_due(session=s, now=now)
        for sched in due:
            crud.add_run(session=s, schedule=sched, trigger="cron", scheduled_for=sched.next_run_at)
            sched.next_run_at = next_run(sched.cron, sched.timezone, now) if sched.cron else None
    if due:
        log.info("schedules fired", extra={"schedules": [d.id for d in due]})
    return len(due)


def execute(t: Ticker, run_id: str) -> None:
    """Read the run's source and make its job; the run ends ``submitted``, ``skipped`` or
    ``failed`` (a source that cannot be read fails the run, never the tick)."""
    with session_scope(t.sessions) as s:
        run = s.get(ScheduleRun, run_id)
        sched = None if run is None else s.get(Schedule, run.schedule_id)
    if run is None or sched is None:
        return
    try:
        outcome = _make_job(t, sched, run)
    except InferqError as exc:  # "empty_input": a CSV source with only its header
        skipped = exc.code == "empty_input"
        _finish(
            t, run, status=RunStatus.skipped if skipped else RunStatus.failed, error=exc.message
        )
        return
    except Exception as exc:
        log.exception("schedule run failed", extra={"run": run.id})
        _finish(t, run, status=RunStatus.failed, error=f"{type(exc).__name__}: {exc}"[:2000])
        return
    if outcome is None:
        return
    job_id, provenance, watermark = outcome
    with session_scope(t.sessions) as s:
        crud.finish_run(
            session=s,
            run_id=run.id,
            status=RunStatus.submitted.value,
            job_id=job_id,
            provenance=provenance,
            completed_at=utcnow(),
            sink_status=None if sched.sink is None else "waiting",
        )
        current = s.get(Schedule, sched.id)
        if current is not None:
            current.last_run_at = utcnow()
            if watermark is not None and current.source == sched.source:
                current.watermark = watermark
    log.info("schedule run made a job", extra={"run": run.id, "job": job_id})


def _finish(t: Ticker, run: ScheduleRun, *, status: RunStatus, error: str | None) -> None:
    with session_scope(t.sessions) as s:
        crud.finish_run(
            session=s, run_id=run.id, status=status.value, error=error, completed_at=utcnow()
        )
        current = s.get(Schedule, run.schedule_id)
        if current is not None:
            current.last_run_at = utcnow()
    log.info("schedule run ended", extra={"run": run.id, "status": status.value, "error": error})


_END = object()


def _make_job(
    t: Ticker, sched: Schedule, run: ScheduleRun
) -> tuple[str, dict[str, Any], Any] | None:
    entry = t.registry.get(sched.model, sched.model_version)
    read = open_source(t, sched, run, features=sources.feature_sets(entry.manifest))
    if read is None:
        return None
    first = next(read.lines, _END)
    if first is _END:
        what = "no new rows" if read.data["type"] == "sql" else "no input lines"
        _finish(t, run, status=RunStatus.skipped, error=what)
        return None
    provenance = run_provenance(sched, run, entry, read.data)
    job = create_job(
        sessions=t.sessions,
        publisher=t.publisher,
        registry=t.registry,
        settings=t.settings,
        tenant=sched.tenant,
        model=entry.manifest.name,
        model_version=entry.manifest.version,
        lines=itertools.chain([first], read.lines),
        fmt=read.fmt,
        callback_url=sched.callback_url,
        schedule_id=sched.id,
        provenance=provenance,
        sink=access.public_spec(sched.sink),
    )
    return job.id, provenance, read.watermark


def open_source(
    t: Ticker, sched: Schedule, run: ScheduleRun, *, features: list[list[str]]
) -> sources.Read | None:
    """The run's data as a stream; None (the run is skipped) when no file matches.

    What the tenant may read is checked again here: the operator may have changed its folders
    or connections since the schedule was made."""
    src = sched.source
    if src["type"] == "file":
        return _open_files(t, sched, run, features=features)
    target = access.target(src, tenant=sched.tenant, settings=t.settings, where="source")
    query = sources.check_query(src["query"])
    column = src.get("watermark_column")
    bound = sched.watermark
    if column is not None and bound is None:
        bound = src.get("initial_watermark")
        if bound is None:
            bound = sources.lowest(sources.probe(target, t.settings, query, column), column)
    read = sources.read_sql(
        target=target,
        settings=t.settings,
        query=query,
        watermark_column=column,
        watermark=bound,
        features=features,
    )
    read.data["watermark_from"] = (
        sched.watermark if sched.watermark is not None else src.get("initial_watermark")
    )
    return read


def _open_files(
    t: Ticker, sched: Schedule, run: ScheduleRun, *, features: list[list[str]]
) -> sources.Read | None:
    src = sched.source
    roots = access.roots_for(sched.tenant, settings=t.settings, cfg=t.cfg)
    fmt = sources.file_format(src["path"], src.get("format"), where="source.format")
    refused: list[Path] = []
    if run.file_path is not None:
        path = Path(run.file_path)
        if not path.is_file() or not roots.allows(Path(os.path.realpath(path))):
            raise InvalidInput(f"source: {run.file_path} is gone or may not be read")
        paths = [path]
    else:
        pattern = sources.resolve_path(src["path"], roots, where="source.path")
        paths, refused = sources.matching_files(pattern, roots)
    if not paths:
        why = f" ({len(refused)} lead out of your folders, not read)" if refused else ""
        _finish(t, run, status=RunStatus.skipped, error=f"no file matches {src['path']}{why}")
        return None
    read = sources.read_files(paths, fmt, roots=roots, features=features)
    read.data["path"] = src["path"]
    if refused:
        read.data["refused"] = [str(p) for p in refused]
    return read


def run_provenance(
    sched: Schedule, run: ScheduleRun, entry: ModelEntry, data: dict[str, Any]
) -> dict[str, Any]:
    """What produced a run's results; ``data`` is filled in while the source is read."""
    m = entry.manifest
    return {
        "schedule": {
            "id": sched.id,
            "name": sched.name,
            "run_id": run.id,
            "trigger": run.trigger,
            "scheduled_for": iso(run.scheduled_for),
            "cron": sched.cron,
            "timezone": sched.timezone,
            "source": access.public_spec(sched.source),
            "sink": access.public_spec(sched.sink),
            "model_version": sched.model_version,
            "callback_url": sched.callback_url,
        },
        "data": data,
        "model": {"name": m.name, "version": m.version, "sha256": m.sha256},
        "inferq_version": __version__,
    }


def write_sinks(t: Ticker, *, limit: int = 4) -> int:
    """Write the sinks of runs whose job has ended; a failure is recorded on the run."""
    written = 0
    for _ in range(limit):
        with session_scope(t.sessions) as s:
            crud.promote_waiting_sinks(session=s)
            run = crud.claim_sink(session=s)
            if run is None:
                break
            sched = s.get(Schedule, run.schedule_id)
            sink = None if sched is None else sched.sink
            names = {"job_id": run.job_id or "", "run_id": run.id, "schedule_id": run.schedule_id}
            try:
                if sink is None:
                    raise InvalidInput("the schedule has no sink any more")
                done = sinks.write(
                    sink,
                    result_lines(t, run.tenant, run.job_id or ""),
                    names=names,
                    settings=t.settings,
                    roots=access.roots_for(run.tenant, settings=t.settings, cfg=t.cfg),
                    tenant=run.tenant,
                )
                run.sink_status, run.sink_written_at = "written", utcnow()
                run.sink_error = None
                if isinstance(run.provenance, dict):
                    run.provenance = {**run.provenance, "sink_written": done}
                written += 1
            except Exception as exc:
                message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                log.warning("sink write failed", extra={"run": run.id, "error": message})
                run.sink_status, run.sink_error = "failed", message[:2000]
    return written


def result_lines(t: Ticker, tenant: str, job_id: str) -> Iterator[bytes]:
    """An ended job's result lines (JSON objects), in input order."""
    blocks = open_results(
        sessions=t.sessions, registry=t.registry, tenant=tenant, job_id=job_id, fmt="jsonl"
    )
    for block in blocks:
        yield from (line for line in block.split(b"\n") if line)
