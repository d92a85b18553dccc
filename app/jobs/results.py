"""Reading a job's results: one line per input, in input order, chunk by chunk.

A chunk's result lines are stored as one blob, so JSONL results stream straight from the
database (a server-side cursor, a few chunks in memory at a time). CSV is made from them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any, Literal

import orjson
from sqlalchemy import case, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.jobs import ChunkStatus, Job, JobChunk, JobStatus
from app.errors import Conflict, InvalidInput, NotFound
from app.jobs import store
from app.jobs.lines import custom_ids
from app.registry import Registry

ResultFormat = Literal["jsonl", "csv"]
MEDIA_TYPES = {"jsonl": "application/jsonl", "csv": "text/csv; charset=utf-8"}
NOT_RUN = {
    ChunkStatus.cancelled.value: {
        "code": "cancelled",
        "message": "the job was cancelled before this input ran",
    },
}
STILL_RUNNING = {"code": "not_run", "message": "this input had not run when the job ended"}


def open_results(
    *,
    sessions: sessionmaker[Session],
    registry: Registry,
    tenant: str,
    job_id: str,
    fmt: str,
) -> Iterator[bytes]:
    """The results of an ended job as a stream of byte blocks.

    Raises, before the first block: ``NotFound``, ``Conflict`` (the job has not ended),
    ``InvalidInput`` (a format other than jsonl or csv).
    """
    if fmt not in MEDIA_TYPES:
        raise InvalidInput(f"format must be 'jsonl' or 'csv', got {fmt!r}")
    with sessions() as s:
        job = store.get_job(session=s, tenant=tenant, job_id=job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    if not JobStatus(job.status).is_final:
        raise Conflict(
            f"job {job_id} is {job.status} ({job.succeeded + job.failed} of {job.total} done); "
            "its results can be read once it has ended",
            code="job_not_finished",
        )
    blocks = _jsonl_blocks(sessions, job)
    if fmt == "csv":
        return _csv_blocks(blocks, _output_columns(registry, job))
    return blocks


def _jsonl_blocks(sessions: sessionmaker[Session], job: Job) -> Iterator[bytes]:
    not_done = JobChunk.status != ChunkStatus.done.value
    stmt = (
        select(
            JobChunk.status,
            JobChunk.start_index,
            JobChunk.results,
            case((not_done, JobChunk.lines), else_=None),
        )
        .where(JobChunk.job_id == job.id)
        .order_by(JobChunk.seq)
        .execution_options(yield_per=4)
    )
    with sessions() as s:
        for status, start, results, lines in s.execute(stmt):
            if results is not None and status == ChunkStatus.done.value:  # else: a probe
                yield bytes(results) + b"\n"
                continue
            error = NOT_RUN.get(status, STILL_RUNNING)
            cids = custom_ids(bytes(lines), fmt=_fmt(job), columns=job.columns)
            yield b"".join(
                orjson.dumps({"index": start + i, "custom_id": cid, "error": error}) + b"\n"
                for i, cid in enumerate(cids)
            )


def _output_columns(registry: Registry, job: Job) -> list[str]:
    """The output schema's top-level fields, or one ``output`` column holding JSON."""
    try:
        schema = registry.get(job.model, job.model_version).manifest.output_schema
    except NotFound:
        return ["output"]
    props = schema.get("properties")
    return list(props) if isinstance(props, dict) and props else ["output"]


def _csv_blocks(jsonl: Iterator[bytes], columns: list[str]) -> Iterator[bytes]:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index", "custom_id", *columns, "error_code", "error_message"])
    for block in jsonl:
        for line in block.splitlines():
            row = orjson.loads(line)
            writer.writerow(_csv_row(row, columns))
        yield buf.getvalue().encode()
        buf.seek(0)
        buf.truncate()
    if buf.tell():
        yield buf.getvalue().encode()


def _csv_row(row: dict[str, Any], columns: list[str]) -> list[Any]:
    out = row.get("output")
    err = row.get("error") or {}
    if out is None:
        cells: list[Any] = [""] * len(columns)
    elif columns == ["output"]:
        cells = [orjson.dumps(out).decode()]
    else:
        cells = [_cell(out.get(c)) for c in columns]
    cid = row.get("custom_id")
    return [
        row.get("index"),
        "" if cid is None else cid,
        *cells,
        err.get("code", ""),
        err.get("message", ""),
    ]


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return value


def _fmt(job: Job) -> Literal["jsonl", "csv"]:
    return "csv" if job.input_format == "csv" else "jsonl"
