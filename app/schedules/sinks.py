"""Where a run's results go besides the results store: a table or a JSONL file.

A sink is written once the run's job is final, from the job's stored result lines (one JSON
object per input, in input order). Writing is idempotent: a table sink replaces the job's rows
in one transaction, a file sink is written beside its target and renamed over it, so a sink
written twice (a worker died after writing, before recording it) leaves the same result.

Where a tenant may write is ``access``'s: a file stays in the tenant's folders (the real path
of its folder is checked after the folders are made, and the file is created without following
a symlink); a table is in a database registered for the tenant, never inferq's own (with API
keys off, never one of inferq's own tables), asked again on the open connection.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, delete, insert

from app.db.base import JSONType
from app.errors import InvalidInput
from app.schedules import access, sources
from app.schedules.access import Roots, Target
from app.settings import Settings

BATCH = 1000


def write(
    sink: dict[str, Any],
    lines: Iterable[bytes],
    *,
    names: dict[str, str],
    settings: Settings,
    roots: Roots,
    tenant: str,
) -> dict[str, Any]:
    """Write result ``lines`` to ``sink``; returns where and how many (for the run's record).

    ``names`` fills the path template: ``job_id``, ``run_id``, ``schedule_id``; ``roots`` and
    ``tenant`` say where the tenant may write.
    """
    if sink["type"] == "file":
        return _to_file(sink["path"], lines, names=names, roots=roots)
    t = access.target(sink, tenant=tenant, settings=settings, where="sink")
    access.check_table(t, sink["table"], settings)
    return _to_table(t, settings, sink["table"], lines, job_id=names["job_id"])


def target_path(template: str, *, names: dict[str, str], roots: Roots) -> Path:
    values = {**names, "date": datetime.now(UTC).strftime("%Y-%m-%d")}
    try:
        filled = template.format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        raise InvalidInput(f"sink.path: cannot fill in {template!r}: {exc!r}") from exc
    return sources.resolve_path(filled, roots, where="sink.path")


def _to_file(
    template: str, lines: Iterable[bytes], *, names: dict[str, str], roots: Roots
) -> dict[str, Any]:
    path = target_path(template, names=names, roots=roots)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not roots.allows(Path(os.path.realpath(path.parent))):
        raise InvalidInput(f"sink.path: {path.parent} leads out of the folders you may use")
    tmp = path.with_name(f".{path.name}.{names['run_id']}.tmp")
    tmp.unlink(missing_ok=True)  # a crashed attempt's (or a planted symlink: not followed)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    n = 0
    with os.fdopen(fd, "wb") as f:
        for line in lines:
            f.write(line.rstrip(b"\n") + b"\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return {"type": "file", "path": str(path), "rows": n}


def _table(name: str) -> Table:
    schema, _, table = name.rpartition(".")
    return Table(
        table,
        MetaData(schema=schema or None),
        Column("job_id", String(40), primary_key=True),
        Column("job_index", Integer, primary_key=True),
        Column("custom_id", String(255), nullable=True),
        Column("status", String(16)),
        Column("output", JSONType, nullable=True),
        Column("error", JSONType, nullable=True),
        Column("written_at", DateTime(timezone=True)),
    )


def _to_table(
    t: Target, settings: Settings, name: str, lines: Iterable[bytes], *, job_id: str
) -> dict[str, Any]:
    table = _table(name)
    engine = sources.sql_engine(t.url)
    now = datetime.now(UTC)
    n = 0
    try:
        with engine.connect() as conn:
            access.guard(conn, t, settings, table=name)
            with conn.begin():
                table.metadata.create_all(conn, checkfirst=True)
                conn.execute(delete(table).where(table.c.job_id == job_id))
                for batch in _batches(lines, job_id, now):
                    conn.execute(insert(table), batch)
                    n += len(batch)
    finally:
        engine.dispose()
    return {"type": "table", **t.record(), "table": name, "rows": n}


def _batches(lines: Iterable[bytes], job_id: str, now: datetime) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for n, line in enumerate(lines):
        obj = orjson.loads(line)
        batch.append(
            {
                "job_id": job_id,
                "job_index": obj.get("index", n),
                "custom_id": obj.get("custom_id"),
                "status": "failed" if obj.get("error") is not None else "succeeded",
                "output": obj.get("output"),
                "error": obj.get("error"),
                "written_at": now,
            }
        )
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def path_for_check(template: str) -> str:
    """The sink path with its placeholders filled by dummies, to check it at creation."""
    names = {"job_id": "job", "run_id": "run", "schedule_id": "sch", "date": "2000-01-01"}
    try:
        return template.format(**names)
    except KeyError as exc:
        raise InvalidInput(
            f"sink.path: unknown placeholder {{{exc.args[0]}}}; use {{job_id}}, {{run_id}}, "
            "{schedule_id} or {date}"
        ) from exc
    except (IndexError, ValueError) as exc:
        raise InvalidInput(f"sink.path: {template!r} is not a valid path template") from exc
