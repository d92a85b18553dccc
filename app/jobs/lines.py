"""Input lines of a job: telling JSONL from CSV, cutting a byte stream into records, and
turning one chunk's records into model inputs (or a per-line error).

The API only cuts records (no JSON parsing there, it must keep up with the upload); parsing and
validation happen in the worker, where a bad line fails alone.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson

from app.errors import InvalidInput
from app.predictions.inputs import validate_input
from app.registry import Manifest

InputFormat = Literal["jsonl", "csv"]

BOM = b"\xef\xbb\xbf"
MAX_CUSTOM_ID = 255
MAX_CSV_RECORD_BYTES = 1 << 20
"""A quoted CSV field longer than this is taken for an unbalanced quote."""

EXTENSIONS: dict[str, InputFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
}
CONTENT_TYPES: dict[str, InputFormat] = {
    "application/jsonl": "jsonl",
    "application/x-jsonl": "jsonl",
    "application/x-ndjson": "jsonl",
    "application/json-lines": "jsonl",
    "application/json": "jsonl",
    "text/csv": "csv",
    "application/csv": "csv",
}


def detect_format(filename: str | None, content_type: str | None) -> InputFormat:
    """JSONL or CSV, from the file's extension, else its content type; ``InvalidInput`` if neither says."""
    name = (filename or "").lower()
    for ext, fmt in EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype in CONTENT_TYPES:
        return CONTENT_TYPES[ctype]
    raise InvalidInput(
        f"cannot tell the format of file {filename or '(no name)'!r} "
        f"(content type {ctype or 'none'!r}): name it *.jsonl or *.csv, or send it as "
        "application/jsonl or text/csv",
        code="unsupported_format",
    )


class RecordSplitter:
    """Cuts a byte stream into records: non-blank lines (JSONL), or CSV records, whose quoted
    fields may hold newlines (a record ends at a newline outside quotes)."""

    def __init__(self, fmt: InputFormat) -> None:
        self.csv = fmt == "csv"
        self._carry = b""
        self._open: list[bytes] = []  # lines of a CSV record whose quote is still open
        self._open_bytes = 0
        self._started = False

    def feed(self, data: bytes) -> list[bytes]:
        """The records completed by ``data``."""
        data = self._carry + data
        if not self._started:
            if len(data) < len(BOM) and BOM.startswith(data):
                self._carry = data  # maybe the start of a byte order mark: wait for more
                return []
            self._started = True
            data = data.removeprefix(BOM)
        parts = data.split(b"\n")
        self._carry = parts.pop()
        return self._records(parts)

    def end(self) -> list[bytes]:
        """The last records; ``InvalidInput`` when a CSV quote is never closed."""
        parts, self._carry = ([self._carry] if self._carry else []), b""
        records = self._records(parts)
        if self._open:
            raise InvalidInput("the CSV file ends inside a quoted field (a '\"' is not closed)")
        return records

    def _records(self, parts: list[bytes]) -> list[bytes]:
        if not self.csv:
            return [p for p in parts if p.strip()]
        out: list[bytes] = []
        for p in parts:
            odd = p.count(b'"') & 1
            if self._open:
                self._open.append(p)
                self._open_bytes += len(p)
                if odd:
                    out.append(b"\n".join(self._open))
                    self._open, self._open_bytes = [], 0
                elif self._open_bytes > MAX_CSV_RECORD_BYTES:
                    raise InvalidInput("a CSV record is over 1 MiB: is a '\"' left unclosed?")
            elif odd:
                self._open, self._open_bytes = [p], len(p)
            elif p.strip():
                out.append(p)
        return out


def split_records(blob: bytes, fmt: InputFormat) -> list[bytes]:
    """A stored chunk's records (the inverse of joining them with ``\\n``)."""
    splitter = RecordSplitter(fmt)
    splitter._started = True  # a stored chunk has no BOM
    return splitter.feed(blob) + splitter.end()


def check_first_line(record: bytes, filename: str | None) -> None:
    """A JSONL file must hold JSON objects: refuse, early, a file that is something else."""
    if not record.lstrip().startswith(b"{"):
        head = record[:40].decode("utf-8", "replace")
        raise InvalidInput(
            f"{filename or 'the input'} is not JSONL: its first line {head!r} is not a JSON "
            "object (a CSV file must be named *.csv or sent as text/csv)",
            code="unsupported_format",
        )


@dataclass(slots=True)
class CsvPlan:
    """How a CSV row becomes a model input, from the header and the model."""

    columns: list[str]
    custom_id: int | None
    build: Callable[[list[str]], dict[str, Any]] = field(repr=False)


def csv_plan(columns: list[str], manifest: Manifest) -> CsvPlan:
    """Map a CSV header onto the model's input; ``InvalidInput`` naming what is missing."""
    index = {c: i for i, c in enumerate(columns)}
    if len(index) != len(columns):
        raise InvalidInput(f"the CSV header repeats a column: {columns}")
    cid = index.get("custom_id")
    if manifest.kind == "tabular":
        positional = [f"f{i}" for i in range(manifest.n_features or 0)]
        names = manifest.feature_names or positional
        if "features" in index:
            wanted, build = {"features"}, _features_json(index["features"])
        else:
            if not set(names) <= set(index) and set(positional) <= set(index):
                names = positional
            wanted, build = set(names), _feature_columns(names, [index.get(c, -1) for c in names])
            missing = [c for c in names if c not in index]
            if missing:
                raise InvalidInput(
                    f"the CSV header lacks column(s) {', '.join(missing)}; model "
                    f"{manifest.name!r} needs {', '.join(names)} (or f0..f{len(names) - 1}, "
                    "or one 'features' column holding a JSON array)"
                )
    else:
        if "text" not in index:
            raise InvalidInput(
                f"the CSV header has no 'text' column; model {manifest.name!r} takes text"
            )
        wanted, build = {"text"}, _text_column(index["text"])
    extra = [c for c in columns if c not in wanted and c != "custom_id"]
    if extra:
        raise InvalidInput(
            f"the CSV header has unknown column(s) {', '.join(extra)}; allowed: custom_id, "
            f"{', '.join(sorted(wanted))}"
        )
    return CsvPlan(columns, cid, build)


def parse_header(record: bytes) -> list[str]:
    try:
        text = record.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the CSV header is not valid UTF-8: {exc}") from exc
    return [c.strip() for c in next(csv.reader([text]))]


def _text_column(i: int) -> Callable[[list[str]], dict[str, Any]]:
    return lambda row: {"text": row[i]}


def _features_json(i: int) -> Callable[[list[str]], dict[str, Any]]:
    def build(row: list[str]) -> dict[str, Any]:
        try:
            return {"features": orjson.loads(row[i])}
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"column 'features' is not a JSON array: {exc}") from exc

    return build


def _feature_columns(names: list[str], idx: list[int]) -> Callable[[list[str]], dict[str, Any]]:
    def build(row: list[str]) -> dict[str, Any]:
        out: list[float] = []
        for name, i in zip(names, idx, strict=True):
            cell = row[i].strip()
            try:
                out.append(float(cell))
            except ValueError:
                raise InvalidInput(f"column {name!r}: {cell[:30]!r} is not a number") from None
        return {"features": out}

    return build


@dataclass(slots=True)
class ParsedChunk:
    """Per record: its custom_id, and either its validated input or its error."""

    custom_ids: list[str | None]
    inputs: list[dict[str, Any] | None]
    errors: list[dict[str, str] | None]


def parse_chunk(
    blob: bytes,
    *,
    fmt: InputFormat,
    columns: list[str] | None,
    manifest: Manifest,
    max_text_chars: int,
) -> ParsedChunk:
    """Parse and validate every record of a chunk; a bad record fails alone."""
    records = split_records(blob, fmt)
    plan = csv_plan(columns or [], manifest) if fmt == "csv" else None
    n = len(records)
    out = ParsedChunk([None] * n, [None] * n, [None] * n)
    values: list[tuple[int, Any]] = []
    for i, rec in enumerate(records):
        try:
            if plan is None:
                obj = _json_object(rec)
                out.custom_ids[i] = _custom_id(obj)
                values.append((i, _unwrap(obj)))
            else:
                cid, value = _csv_record(rec, plan)
                out.custom_ids[i] = cid
                values.append((i, value))
        except InvalidInput as exc:
            out.errors[i] = {"code": exc.code, "message": exc.message}
    if manifest.kind == "tabular":
        values = _features_fast(values, records, manifest.n_features or 0, out)
    for i, value in values:
        try:
            out.inputs[i] = validate_input(manifest, value, max_text_chars=max_text_chars)
        except InvalidInput as exc:
            out.errors[i] = {"code": exc.code, "message": exc.message}
    return out


def _features_fast(
    values: list[tuple[int, Any]], records: list[bytes], n: int, out: ParsedChunk
) -> list[tuple[int, Any]]:
    """Validate well-formed ``{"features": [n numbers]}`` inputs as one numpy matrix; return
    the rest, to be validated one by one (with the precise error message)."""
    fast: list[int] = []
    rows: list[list[Any]] = []
    slow: list[tuple[int, Any]] = []
    for i, value in values:
        feats = value.get("features") if type(value) is dict and len(value) == 1 else None
        rec = records[i]
        if type(feats) is list and len(feats) == n and b"true" not in rec and b"false" not in rec:
            fast.append(i)
            rows.append(feats)
        else:
            slow.append((i, value))
    if not rows:
        return slow
    try:
        matrix = np.array(rows)
    except (ValueError, TypeError):
        return values
    if matrix.dtype.kind not in "iuf" or matrix.shape != (len(rows), n):
        return values
    matrix = matrix.astype(np.float64, copy=False)
    finite = np.isfinite(matrix).all(axis=1)
    for k, i in enumerate(fast):
        if finite[k]:
            out.inputs[i] = {"features": matrix[k]}
        else:
            slow.append((i, {"features": rows[k]}))
    return slow


def custom_ids(blob: bytes, *, fmt: InputFormat, columns: list[str] | None) -> list[str | None]:
    """Only the custom_ids of a chunk's records (for inputs that never ran)."""
    ids: list[str | None] = []
    cid_col = (columns or []).index("custom_id") if "custom_id" in (columns or []) else None
    for rec in split_records(blob, fmt):
        try:
            if fmt == "jsonl":
                obj = orjson.loads(rec)
                ids.append(_custom_id(obj) if isinstance(obj, dict) else None)
            else:
                row = next(csv.reader([rec.decode("utf-8")]))
                ids.append(row[cid_col] if cid_col is not None and cid_col < len(row) else None)
        except (ValueError, InvalidInput):
            ids.append(None)
    return ids


def _json_object(rec: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(rec)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the line is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidInput("the line must be a JSON object")
    return obj


def _unwrap(obj: dict[str, Any]) -> Any:
    """The model input of a line: its ``input``, or the line itself less its custom_id."""
    if "input" in obj:
        if len(obj) == 1 or (len(obj) == 2 and "custom_id" in obj):
            return obj["input"]
        extra = sorted(set(obj) - {"custom_id", "input"})
        if extra:
            raise InvalidInput(
                f"the line has unknown field(s) {', '.join(extra)} next to 'input'; "
                "allowed: custom_id, input"
            )
        return obj["input"]
    if "custom_id" in obj:
        return {k: v for k, v in obj.items() if k != "custom_id"}
    return obj


def _custom_id(obj: dict[str, Any]) -> str | None:
    cid = obj.get("custom_id")
    if cid is None or (type(cid) is str and len(cid) <= MAX_CUSTOM_ID):
        return cid
    if isinstance(cid, bool) or not isinstance(cid, str | int):
        raise InvalidInput("custom_id must be a string")
    cid = str(cid)
    if len(cid) > MAX_CUSTOM_ID:
        raise InvalidInput(f"custom_id is longer than {MAX_CUSTOM_ID} characters")
    return cid


def _csv_record(rec: bytes, plan: CsvPlan) -> tuple[str | None, Any]:
    try:
        text = rec.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the row is not valid UTF-8: {exc}") from exc
    row = next(csv.reader([text]))
    cid = row[plan.custom_id] if plan.custom_id is not None and plan.custom_id < len(row) else None
    if len(row) != len(plan.columns):
        raise InvalidInput(f"the row has {len(row)} cells; the header has {len(plan.columns)}")
    if cid is not None and len(cid) > MAX_CUSTOM_ID:
        raise InvalidInput(f"custom_id is longer than {MAX_CUSTOM_ID} characters")
    return (cid or None), plan.build(row)
