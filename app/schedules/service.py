"""Schedules as callers manage them: create, change, delete, run now, and their public bodies.

Every check that needs the world happens here, before anything is stored: the cron expression
and time zone, the model, whether the source's path may be read and its query runs, and whether
the tenant may use the folders and databases named (``access``; checked again at run time).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlparse

from sqlalchemy.orm import Session, sessionmaker

from app.db import schedules as crud
from app.db.base import new_id, utcnow
from app.db.engine import session_scope
from app.db.schedules import Schedule, ScheduleRun
from app.delivery import egress
from app.errors import Conflict, InvalidInput, NotFound
from app.predictions.views import iso
from app.registry import Registry
from app.schedules import access, sinks, sources
from app.schedules.config import ScheduleConfig
from app.schedules.cron import check_cron, check_timezone, next_run
from app.schedules.specs import (
    FileSink,
    FileSource,
    ScheduleCreate,
    ScheduleUpdate,
    SqlSource,
    TableSink,
    dump,
)
from app.settings import Settings


def check(
    values: dict[str, Any],
    *,
    registry: Registry,
    settings: Settings,
    cfg: ScheduleConfig,
    tenant: str,
    changed: set[str] | None = None,
) -> None:
    """Raise ``InvalidInput`` (``UnknownModel``) unless ``values`` make a schedule that can run
    for ``tenant``.

    ``changed`` (a PATCH) limits the checks that need the world to the fields sent, so that a
    schedule can be paused while its database is down or its model has gone.
    """
    source = values["source"]
    watch = isinstance(source, FileSource) and source.watch
    if values.get("cron") is None:
        if not watch:
            raise InvalidInput(
                "cron: required (only a schedule that watches for files may omit it)"
            )
    else:
        values["cron"] = check_cron(values["cron"])
    check_timezone(values["timezone"])
    if changed is None or changed & {"model", "model_version"}:
        registry.get(values["model"], values.get("model_version"))
    roots = access.roots_for(tenant, settings=settings, cfg=cfg)
    if changed is None or "source" in changed:
        _check_source(source, settings=settings, roots=roots, tenant=tenant)
    if values.get("sink") is not None and (changed is None or "sink" in changed):
        _check_sink(values["sink"], settings=settings, roots=roots, tenant=tenant)
    url = values.get("callback_url")
    if url is not None and (
        urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc
    ):
        raise InvalidInput("callback_url: must be an http(s) URL")
    if url is not None:
        egress.check_caller_url(url, settings)


def _check_source(
    source: FileSource | SqlSource, *, settings: Settings, roots: access.Roots, tenant: str
) -> None:
    if isinstance(source, FileSource):
        sources.resolve_path(source.path, roots, where="source.path")
        sources.file_format(source.path, source.format, where="source.format")
        return
    target = access.target(dump(source) or {}, tenant=tenant, settings=settings, where="source")
    query = sources.check_query(source.query)
    if source.watermark_column is not None and ":watermark" not in query:
        raise InvalidInput("source.query: filter on :watermark when watermark_column is set")
    if source.watermark_column is None and ":watermark" in query:
        raise InvalidInput("source.watermark_column: required when the query uses :watermark")
    oid = sources.probe(target, settings, query, source.watermark_column)
    if source.watermark_column is not None and source.initial_watermark is None:
        sources.lowest(oid, source.watermark_column)


def _check_sink(
    sink: FileSink | TableSink, *, settings: Settings, roots: access.Roots, tenant: str
) -> None:
    if isinstance(sink, FileSink):
        sources.resolve_path(sinks.path_for_check(sink.path), roots, where="sink.path")
        return
    target = access.target(dump(sink) or {}, tenant=tenant, settings=settings, where="sink")
    access.check_table(target, sink.table, settings)


def _next(values: dict[str, Any], now: datetime) -> datetime | None:
    if not values.get("enabled", True) or values.get("cron") is None:
        return None
    return next_run(values["cron"], values["timezone"], now)


def create_schedule(
    *,
    sessions: sessionmaker[Session],
    registry: Registry,
    settings: Settings,
    tenant: str,
    body: ScheduleCreate,
    cfg: ScheduleConfig | None = None,
) -> Schedule:
    """Check and store a schedule; its first run is the next cron time after now."""
    cfg = cfg or ScheduleConfig.from_env()
    values: dict[str, Any] = dict(body)
    check(values, registry=registry, settings=settings, cfg=cfg, tenant=tenant)
    now = utcnow()
    with session_scope(sessions) as s:
        if crud.name_taken(session=s, tenant=tenant, name=body.name, other_than=None):
            raise Conflict(f"a schedule named {body.name!r} exists", code="name_taken")
        sched = Schedule(
            id=new_id("sch"),
            tenant=tenant,
            name=body.name,
            cron=values["cron"],
            timezone=body.timezone,
            model=body.model,
            model_version=body.model_version,
            source=dump(body.source),
            sink=dump(body.sink),
            callback_url=body.callback_url,
            enabled=body.enabled,
            next_run_at=_next(values, now),
            created_at=now,
            updated_at=now,
        )
        s.add(sched)
    return sched


def update_schedule(
    *,
    sessions: sessionmaker[Session],
    registry: Registry,
    settings: Settings,
    tenant: str,
    schedule_id: str,
    patch: ScheduleUpdate,
    cfg: ScheduleConfig | None = None,
) -> Schedule:
    """Apply the fields sent; the next run is recomputed. A new source restarts its watermark."""
    cfg = cfg or ScheduleConfig.from_env()
    changes = patch.changes()
    for required in ("name", "timezone", "model", "source", "enabled"):
        if required in changes and changes[required] is None:
            raise InvalidInput(f"{required}: must not be null")
    now = utcnow()
    with session_scope(sessions) as s:
        sched = _get_locked(s, tenant, schedule_id)
        values: dict[str, Any] = {
            "name": sched.name,
            "cron": sched.cron,
            "timezone": sched.timezone,
            "model": sched.model,
            "model_version": sched.model_version,
            "source": _parse_source(sched.source),
            "sink": _parse_sink(sched.sink),
            "enabled": sched.enabled,
            "callback_url": sched.callback_url,
        }
        values.update(changes)
        check(
            values,
            registry=registry,
            settings=settings,
            cfg=cfg,
            tenant=tenant,
            changed=set(changes),
        )
        if "name" in changes and crud.name_taken(
            session=s, tenant=tenant, name=values["name"], other_than=sched.id
        ):
            raise Conflict(f"a schedule named {values['name']!r} exists", code="name_taken")
        if "source" in changes and dump(values["source"]) != sched.source:
            sched.watermark = None
        for key in ("name", "cron", "timezone", "model", "model_version", "enabled"):
            setattr(sched, key, values[key])
        sched.callback_url = values["callback_url"]
        sched.source = dump(values["source"])
        sched.sink = dump(values["sink"])
        sched.next_run_at = _next(values, now)
        sched.updated_at = now
    return sched


def _parse_source(raw: dict[str, Any]) -> FileSource | SqlSource:
    return (
        FileSource.model_validate(raw) if raw["type"] == "file" else SqlSource.model_validate(raw)
    )


def _parse_sink(raw: dict[str, Any] | None) -> FileSink | TableSink | None:
    if raw is None:
        return None
    return FileSink.model_validate(raw) if raw["type"] == "file" else TableSink.model_validate(raw)


def _get_locked(s: Session, tenant: str, schedule_id: str) -> Schedule:
    sched = crud.get_schedule(session=s, tenant=tenant, schedule_id=schedule_id)
    if sched is None:
        raise NotFound(f"schedule {schedule_id} not found")
    return sched


def list_schedules(*, sessions: sessionmaker[Session], tenant: str) -> list[Schedule]:
    with session_scope(sessions) as s:
        return crud.list_schedules(session=s, tenant=tenant)


def get_schedule(*, sessions: sessionmaker[Session], tenant: str, schedule_id: str) -> Schedule:
    with session_scope(sessions) as s:
        return _get_locked(s, tenant, schedule_id)


def delete_schedule(*, sessions: sessionmaker[Session], tenant: str, schedule_id: str) -> None:
    """Delete a schedule and its run history; the jobs it made stay."""
    with session_scope(sessions) as s:
        s.delete(_get_locked(s, tenant, schedule_id))


def request_run(*, sessions: sessionmaker[Session], tenant: str, schedule_id: str) -> ScheduleRun:
    """Queue a run now (the next tick carries it out), whether or not the schedule is enabled."""
    with session_scope(sessions) as s:
        sched = _get_locked(s, tenant, schedule_id)
        return crud.add_run(session=s, schedule=sched, trigger="manual", scheduled_for=utcnow())


def list_runs(
    *, sessions: sessionmaker[Session], tenant: str, schedule_id: str, limit: int = 20
) -> list[ScheduleRun]:
    with session_scope(sessions) as s:
        _get_locked(s, tenant, schedule_id)
        return crud.list_runs(session=s, schedule_id=schedule_id, limit=limit)


def schedule_public(s: Schedule) -> dict[str, Any]:
    """The body of ``GET /v1/schedules/{id}``; absent fields are left out, not null."""
    body: dict[str, Any] = {
        "id": s.id,
        "name": s.name,
        "cron": s.cron,
        "timezone": s.timezone,
        "model": s.model,
        "source": s.source,
        "enabled": s.enabled,
        "next_run_at": iso(s.next_run_at),
        "created_at": iso(s.created_at),
        "updated_at": iso(s.updated_at),
    }
    optional = {
        "model_version": s.model_version,
        "sink": s.sink,
        "callback_url": s.callback_url,
        "last_run_at": iso(s.last_run_at),
        "watermark": s.watermark,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


def run_public(r: ScheduleRun) -> dict[str, Any]:
    """A run: what fired it, what it read (provenance) and the job it made."""
    body: dict[str, Any] = {
        "id": r.id,
        "schedule_id": r.schedule_id,
        "trigger": r.trigger,
        "status": r.status,
        "created_at": iso(r.created_at),
    }
    optional = {
        "scheduled_for": iso(r.scheduled_for),
        "file_path": r.file_path,
        "job_id": r.job_id,
        "error": r.error,
        "provenance": r.provenance,
        "completed_at": iso(r.completed_at),
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if r.sink_status is not None:
        sink: dict[str, Any] = {"status": r.sink_status}
        if r.sink_error:
            sink["error"] = r.sink_error
        if r.sink_written_at is not None:
            sink["written_at"] = iso(r.sink_written_at)
        body["sink"] = sink
    return body
