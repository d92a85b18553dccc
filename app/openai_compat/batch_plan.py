"""From a Batch API input file to a job: each request line is checked on its own and becomes
one job line per text, or a refusal that fails that line alone.

An input line is ``{"custom_id", "method": "POST", "url": "/v1/embeddings", "body": {...}}``
with the embeddings request as ``body``. A batch runs one model (as OpenAI's do): the first valid
line's; a line naming another fails alone. What is kept of every line is its *plan*: the
``custom_id``, the number of texts and their tokens, the encoding, or the refusal (status and
error). The plan and the job's result lines, both in input order, are all the output and
error files are made from (``batch_render``). No I/O here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.errors import InferqError, InvalidInput
from app.jobs.lines import MAX_CUSTOM_ID
from app.openai_compat import embeddings, wire
from app.registry import ModelEntry, Registry
from app.settings import Settings

ENDPOINTS = ("/v1/embeddings",)
"""The endpoints a batch may run."""

Counter = Callable[[ModelEntry, Sequence[str]], list[int]]


@dataclass(slots=True)
class PlanEntry:
    """One input line: its ``custom_id`` and texts, or why it was refused."""

    custom_id: str | None
    texts: int = 0
    tokens: int = 0
    base64: bool = False
    error: dict[str, Any] | None = None
    """``{"status", "type", "code", "message"}`` of a refused line."""

    def dump(self) -> bytes:
        return orjson.dumps([self.custom_id, self.texts, self.tokens, int(self.base64), self.error])

    @classmethod
    def load(cls, line: bytes) -> PlanEntry:
        cid, texts, tokens, b64, error = orjson.loads(line)
        return cls(cid, texts, tokens, bool(b64), error)


@dataclass
class Planner:
    """Fed the input file's request lines in order; gives the job lines of each."""

    registry: Registry
    settings: Settings
    count_tokens: Counter
    endpoint: str
    entries: list[bytes] = field(default_factory=list)
    model: ModelEntry | None = None
    texts: int = 0
    refused: int = 0
    _seen: dict[str, int] = field(default_factory=dict)

    def take(self, raw: bytes) -> list[bytes]:
        """Plan the next request line; returns its job lines (none for a refused line)."""
        line_no = len(self.entries) + 1
        obj: Any = None
        try:
            obj = _json(raw)
            entry, lines = self._plan(obj, line_no)
        except InferqError as exc:
            status, body = wire.render_error(exc)
            err = body["error"]
            cid = obj.get("custom_id") if isinstance(obj, dict) else None
            entry = PlanEntry(
                cid if isinstance(cid, str) and len(cid) <= MAX_CUSTOM_ID else None,
                error={
                    "status": status,
                    "type": err["type"],
                    "code": err["code"],
                    "message": f"line {line_no}: {err['message']}",
                },
            )
            lines = []
            self.refused += 1
        self.entries.append(entry.dump())
        self.texts += len(lines)
        return lines

    def _plan(self, obj: dict[str, Any], line_no: int) -> tuple[PlanEntry, list[bytes]]:
        cid = _custom_id(obj, self._seen)
        method, url = obj.get("method"), obj.get("url")
        if not isinstance(method, str) or method.upper() != "POST":
            raise InvalidInput(f"method must be 'POST', got {method!r}")
        if url != self.endpoint:
            raise InvalidInput(f"url must be the batch's endpoint {self.endpoint!r}, got {url!r}")
        extra = sorted(set(obj) - {"custom_id", "method", "url", "body"})
        if extra:
            raise InvalidInput(f"unknown field(s) {', '.join(extra)}")
        req = embeddings.parse(obj.get("body"), where="body")
        entry = self.registry.get(req.model)
        embeddings.check_model(entry, req)
        if self.model is not None and entry.manifest.name != self.model.manifest.name:
            raise InvalidInput(
                f"a batch runs one model: this line asks {req.model!r}, the batch runs "
                f"{self.model.manifest.name!r} (its first valid line's)"
            )
        texts, listed = embeddings.texts_of(req)
        embeddings.check_texts(entry, texts, listed, self.settings)
        self.model = entry
        self._seen[cid] = line_no
        tokens = sum(self.count_tokens(entry, texts))
        lines = [orjson.dumps({"custom_id": cid, "input": {"text": t}}) for t in texts]
        return PlanEntry(cid, len(texts), tokens, req.encoding_format == "base64"), lines


def _json(raw: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the line is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidInput("the line must be a JSON object")
    return obj


def _custom_id(obj: dict[str, Any], seen: dict[str, int]) -> str:
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid:
        raise InvalidInput("custom_id must be a non-empty string")
    if len(cid) > MAX_CUSTOM_ID:
        raise InvalidInput(f"custom_id is longer than {MAX_CUSTOM_ID} characters")
    if cid in seen:
        raise InvalidInput(f"custom_id {cid!r} repeats line {seen[cid]}'s; each must be unique")
    return cid
