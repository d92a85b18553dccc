"""A batch's output and error files, rendered from its plan and its job's result lines.

Both come in input order, one line per request line (OpenAI's format): ``{"id", "custom_id",
"response": {"status_code", "request_id", "body"}, "error"}``. A request whose every text ran
goes to the output file with status 200 and the embeddings response as its body; one refused
before it ran, or whose text failed in the model, goes to the error file with the status and
error body ``/v1/embeddings`` would have answered; one that never ran (the batch expired or was
cancelled first) goes there with ``response: null`` and ``error: {"code": "batch_expired" |
"batch_cancelled", "message"}``. No I/O here: the caller streams the plan and the results in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from app.openai_compat import embeddings, wire
from app.openai_compat.batch_plan import PlanEntry

Which = Literal["output", "error"]
NOT_RUN = ("cancelled", "not_run")
"""Codes of a job line that never ran (``app.jobs.results``)."""
BLOCK_BYTES = 1 << 20
MISSING = orjson.dumps({"error": {"code": "not_run", "message": "no result was stored"}})


@dataclass(slots=True)
class Outcome:
    """What became of one request line."""

    index: int
    entry: PlanEntry
    vectors: list[Any] | None = None
    """Every text's vector, when all ran."""
    status: int | None = None
    """The response's status; None when the request never ran."""
    error: dict[str, Any] | None = None
    """The response's error body (with a status), or the line's ``error`` (without)."""

    @property
    def ok(self) -> bool:
        return self.vectors is not None


def walk(plan: Iterable[bytes], results: Iterator[bytes], *, ended: str) -> Iterator[Outcome]:
    """Pair each plan line with its job result lines (as many as it has texts). ``ended`` is
    the batch's state: what never ran is ``batch_expired`` or ``batch_cancelled``."""
    for index, raw in enumerate(plan):
        entry = PlanEntry.load(raw)
        if entry.error is not None:
            e = entry.error
            body = wire.error_body(e["message"], e["type"], e["code"])
            yield Outcome(index, entry, status=e["status"], error=body)
            continue
        # a result line missing (the job's chunks gone before the batch) counts as never run
        rows = [orjson.loads(next(results, MISSING)) for _ in range(entry.texts)]
        failed = next((r["error"] for r in rows if r.get("error") is not None), None)
        if failed is None:
            yield Outcome(index, entry, vectors=[r["output"]["embedding"] for r in rows])
        elif failed.get("code") in NOT_RUN:
            yield Outcome(index, entry, error=_not_run(ended))
        else:
            status, body = wire.result_error(failed.get("code", "error"), failed.get("message", ""))
            yield Outcome(index, entry, status=status, error=body)


def _not_run(ended: str) -> dict[str, str]:
    if ended == "expired":
        return {
            "code": "batch_expired",
            "message": "This request could not be executed before the completion window expired.",
        }
    return {"code": "batch_cancelled", "message": "This request was cancelled with its batch."}


def line(batch_id: str, model: str, o: Outcome) -> bytes:
    """The file line of one outcome."""
    suffix = batch_id.removeprefix("batch_")[:16]
    response: dict[str, Any] | None = None
    if o.ok:
        assert o.vectors is not None
        fmt = "base64" if o.entry.base64 else "float"
        body = embeddings.response_body(model, o.vectors, o.entry.tokens, fmt)
        response = {"status_code": 200, "request_id": f"req_{suffix}_{o.index}", "body": body}
        error = None
    elif o.status is not None:
        response = {
            "status_code": o.status,
            "request_id": f"req_{suffix}_{o.index}",
            "body": o.error,
        }
        error = None
    else:
        error = o.error
    out = {
        "id": f"batch_req_{suffix}_{o.index}",
        "custom_id": o.entry.custom_id,
        "response": response,
        "error": error,
    }
    return orjson.dumps(out) + b"\n"


def render(
    outcomes: Iterable[Outcome], *, batch_id: str, model: str, which: Which
) -> Iterator[bytes]:
    """The output (``which="output"``) or error file, in blocks of about a mebibyte."""
    buf: list[bytes] = []
    size = 0
    for o in outcomes:
        if o.ok != (which == "output"):
            continue
        data = line(batch_id, model, o)
        buf.append(data)
        size += len(data)
        if size >= BLOCK_BYTES:
            yield b"".join(buf)
            buf, size = [], 0
    if buf:
        yield b"".join(buf)


def tally(outcomes: Iterable[Outcome]) -> tuple[int, int]:
    """(requests that succeeded, requests that failed)."""
    ok = failed = 0
    for o in outcomes:
        if o.ok:
            ok += 1
        else:
            failed += 1
    return ok, failed
