"""Where a run's data comes from: files (JSONL, CSV, Parquet) or a SQL query.

Everything is streamed: a file is read line by line (Parquet by record batch), a query through
a server-side cursor, so a source of a million rows never sits in memory. What was read (file
paths and sha256, the query, its row count and watermark) is recorded while it is read, so the
provenance describes exactly the bytes and rows the job got.

A SQL source's watermark is the highest value of its watermark column among the rows read; the
next run binds it to ``:watermark``. To repeat a run, bind ``watermark_from`` and keep rows up to
``watermark_to``. As with any high-water mark, a row committed later with a value at or below
the mark (a long transaction's ``now()``) is not read: use a column set at commit order, such
as a sequence, where that matters. Queries run in a read-only transaction.

What a tenant may read (its folders, its registered databases, never inferq's own) is
``access``'s; every file is opened through ``access.open_inside`` and every connection is asked
by ``access.guard`` before a query runs.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Literal

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from app.errors import InvalidInput
from app.registry import Manifest
from app.schedules.access import Roots, Target, guard, open_inside
from app.schedules.specs import FileFormat
from app.settings import Settings

Fmt = Literal["jsonl", "csv", "rows"]
EXTENSIONS: dict[str, FileFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
BATCH_ROWS = 2048
BOM = b"\xef\xbb\xbf"
GLOB = frozenset("*?[")


@dataclass(slots=True)
class Read:
    """Lines for ``create_job`` and the record of what they are (complete once consumed)."""

    fmt: Fmt
    lines: Iterator[Any]
    data: dict[str, Any]
    watermark: Any = None


# --- paths ---------------------------------------------------------------------------------


def resolve_path(pattern: str, roots: Roots, *, where: str) -> Path:
    """``pattern`` made absolute (relative: under the first folder) and checked to lie in one
    of the tenant's folders.

    Raises:
        InvalidInput: the tenant has no folders; the path has a ``..``; it is outside the
            folders, or a folder on its way (or the file itself) is a symlink leading out.
    """
    if not roots.anywhere and not roots.folders:
        raise InvalidInput(
            f"{where}: no folders are registered for you; an operator sets them in {roots.setting}"
        )
    p = Path(pattern).expanduser()
    if not roots.anywhere and ".." in p.parts:
        raise InvalidInput(f"{where}: {pattern!r} may not contain '..'")
    if not p.is_absolute():
        p = (roots.folders[0] if roots.folders else Path.cwd()) / p
    p = Path(os.path.normpath(p))
    if not roots.allows(Path(os.path.realpath(_fixed_part(p)))):
        folders = os.pathsep.join(str(r) for r in roots.folders)
        raise InvalidInput(
            f"{where}: {pattern!r} is outside the folders you may use ({folders}), or leads "
            f"out of them through a symlink; see {roots.setting}"
        )
    return p


def _fixed_part(path: Path) -> Path:
    """The folders of a glob before its first wildcard (the whole path if it has none)."""
    parts = path.parts
    n = next((i for i, part in enumerate(parts) if GLOB & set(part)), len(parts))
    return Path(*parts[:n])


def file_format(pattern: str, given: FileFormat | None, *, where: str) -> FileFormat:
    if given is not None:
        return given
    suffix = Path(pattern).suffix.lower()
    if suffix not in EXTENSIONS:
        raise InvalidInput(
            f"{where}: cannot tell the format of {pattern!r} from its extension; "
            "set format to jsonl, csv or parquet"
        )
    return EXTENSIONS[suffix]


def matching_files(pattern: Path, roots: Roots) -> tuple[list[Path], list[Path]]:
    """Regular files matching the glob, sorted: those whose real path is in ``roots``, and
    those refused because it is not (a symlink out)."""
    found = sorted(Path(p) for p in glob.glob(str(pattern), recursive=True))
    files = [p for p in found if p.is_file() and not p.name.startswith(".")]
    inside = [p for p in files if roots.allows(Path(os.path.realpath(p)))]
    return inside, [p for p in files if p not in set(inside)]


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return _sha256(f)


def _sha256(f: IO[bytes]) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


# --- files ---------------------------------------------------------------------------------


def read_files(
    paths: list[Path],
    fmt: FileFormat,
    *,
    roots: Roots,
    features: list[list[str]] | None = None,
) -> Read:
    """The rows of ``paths`` (each opened only if in ``roots``) as one stream. CSV files must
    share their header."""
    data: dict[str, Any] = {"type": "file", "format": fmt, "files": []}
    if fmt == "parquet":
        return Read("rows", _parquet_rows(paths, roots, data["files"], features), data)
    if fmt == "csv":
        headers = {_first_line(p, roots) for p in paths}
        if len(headers) > 1:
            raise InvalidInput("source: the CSV files matching the path have different headers")
    return Read(fmt, _text_lines(paths, roots, fmt, data["files"]), data)


def _first_line(path: Path, roots: Roots) -> bytes:
    with open_inside(path, roots) as f:
        return f.readline().removeprefix(BOM).rstrip(b"\r\n")


def _text_lines(
    paths: list[Path], roots: Roots, fmt: FileFormat, record: list[dict[str, Any]]
) -> Iterator[bytes]:
    for n, path in enumerate(paths):
        h, size, rows = hashlib.sha256(), 0, 0
        with open_inside(path, roots) as f:
            for i, raw in enumerate(f):
                h.update(raw)
                size += len(raw)
                # every record ends with a newline (files are joined) and no file keeps its BOM
                line = (raw.removeprefix(BOM) if i == 0 else raw).rstrip(b"\r\n") + b"\n"
                if fmt == "csv" and i == 0:
                    if n == 0:
                        yield line
                    continue
                if line.strip():
                    rows += 1
                    yield line
        record.append({"path": str(path), "sha256": h.hexdigest(), "bytes": size, "rows": rows})


def _parquet_rows(
    paths: list[Path],
    roots: Roots,
    record: list[dict[str, Any]],
    features: list[list[str]] | None,
) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for path in paths:
        rows = 0
        with open_inside(path, roots) as f:
            sha, size = _sha256(f), os.fstat(f.fileno()).st_size
            f.seek(0)
            pf = pq.ParquetFile(f)
            try:
                for batch in pf.iter_batches(batch_size=BATCH_ROWS):
                    for rec in batch.to_pylist():
                        rows += 1
                        yield to_row(rec, features=features)
            finally:
                pf.close()
        record.append({"path": str(path), "sha256": sha, "bytes": size, "rows": rows})


def feature_sets(manifest: Manifest) -> list[list[str]]:
    """Column sets that a tabular model's ``features`` may be spread over, as CSV uploads allow:
    the model's feature names, or ``f0``..``f<n-1>``."""
    if manifest.kind != "tabular":
        return []
    positional = [f"f{i}" for i in range(manifest.n_features or 0)]
    return [manifest.feature_names, positional] if manifest.feature_names else [positional]


def to_row(
    record: dict[str, Any], drop: str | None = None, features: list[list[str]] | None = None
) -> dict[str, Any]:
    """A table row as a job row: ``custom_id`` names it, ``input`` (or the other columns) is
    the model input; a tabular model's feature columns become its ``features`` array."""
    rec = {k: v for k, v in record.items() if k != drop}
    custom_id = rec.pop("custom_id", None)
    value: Any = rec
    if set(rec) == {"input"}:
        value = rec["input"]
    elif features and "features" not in rec:
        for names in features:
            if set(names) <= set(rec):
                rest = {k: v for k, v in rec.items() if k not in set(names)}
                value = {"features": [rec[n] for n in names], **rest}
                break
    row: dict[str, Any] = {"input": jsonable(value)}
    if custom_id is not None:
        row["custom_id"] = str(custom_id)
    return row


def jsonable(value: Any) -> Any:
    """Database and Arrow values as JSON values (numbers, strings, lists, objects)."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


# --- SQL -----------------------------------------------------------------------------------

_TIME_OIDS = {1082, 1114, 1184}  # date, timestamp, timestamptz
_NUMBER_OIDS = {20, 21, 23, 26, 700, 701, 1700}
_TEXT_OIDS = {25, 1042, 1043}


def sql_engine(url: str) -> Engine:
    args = {"connect_timeout": 5} if url.startswith("postgresql") else {}
    return create_engine(url, poolclass=NullPool, connect_args=args)


def check_query(query: str) -> str:
    q = query.strip().rstrip(";").strip()
    if not q.lower().startswith(("select", "with")) or ";" in q:
        raise InvalidInput("source.query: must be one SELECT (or WITH … SELECT) statement")
    return q


def probe(
    target: Target, settings: Settings, query: str, watermark_column: str | None
) -> int | None:
    """Run the query for no rows to check it; returns the watermark column's type (a PG oid).

    Raises:
        InvalidInput: the database is inferq's own (where not allowed), the query fails, or it
            does not return the watermark column.
    """
    params = {"watermark": None} if ":watermark" in query else {}
    engine = sql_engine(target.url)
    try:
        with engine.connect() as conn:
            guard(conn, target, settings)
            res = conn.execute(text(f"SELECT * FROM ({query}) AS inferq_q LIMIT 0"), params)
            description = res.cursor.description if res.cursor is not None else None
            names = list(res.keys())
    except InvalidInput:
        raise
    except Exception as exc:
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0][:300]
        raise InvalidInput(f"source.query: the database refused it: {first}") from exc
    finally:
        engine.dispose()
    if watermark_column is None:
        return None
    if watermark_column not in names:
        raise InvalidInput(
            f"source.query: must return the watermark column {watermark_column!r} "
            f"(it returns {', '.join(names)})"
        )
    if description is None:
        return None
    type_code = description[names.index(watermark_column)][1]
    return type_code if isinstance(type_code, int) else None


def lowest(type_oid: int | None, column: str) -> Any:
    """A ``:watermark`` below every value of the column: the first run reads everything."""
    if type_oid in _TIME_OIDS:
        return "-infinity"
    if type_oid in _NUMBER_OIDS:
        return float("-inf")
    if type_oid in _TEXT_OIDS:
        return ""
    raise InvalidInput(
        f"source.initial_watermark: cannot tell where {column!r} begins; set initial_watermark"
    )


def read_sql(
    *,
    target: Target,
    settings: Settings,
    query: str,
    watermark_column: str | None,
    watermark: Any,
    features: list[list[str]] | None = None,
) -> Read:
    """Stream the rows of ``query`` (bound to ``:watermark``) in a read-only transaction, once
    the server has said it is not inferq's own database (where that is not allowed)."""
    engine = sql_engine(target.url)
    data: dict[str, Any] = {
        "type": "sql",
        **target.record(),
        "query": query,
        "watermark_column": watermark_column,
        "watermark_from": watermark,
        "rows": 0,
    }
    read = Read("rows", iter(()), data)
    read.lines = _sql_rows(
        engine, (target, settings), query, watermark_column, watermark, read, features
    )
    return read


def _sql_rows(
    engine: Engine,
    check: tuple[Target, Settings],
    query: str,
    column: str | None,
    watermark: Any,
    read: Read,
    features: list[list[str]] | None,
) -> Iterator[dict[str, Any]]:
    params = {"watermark": watermark} if ":watermark" in query else {}
    high: Any = None
    rows = 0
    try:
        with engine.connect() as conn:
            guard(conn, *check)
            if conn.dialect.name == "postgresql":
                conn.execute(text("SET TRANSACTION READ ONLY"))
            result = conn.execution_options(stream_results=True, yield_per=1000).execute(
                text(query), params
            )
            for rec in result.mappings():
                if column is not None:
                    value = rec[column]
                    if value is not None and (high is None or value > high):
                        high = value
                rows += 1
                yield to_row(dict(rec), drop=column, features=features)
    finally:
        engine.dispose()
    read.data["rows"] = rows
    read.watermark = jsonable(high) if high is not None else None
    read.data["watermark_to"] = read.watermark
