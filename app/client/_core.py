"""What the sync and async clients share: configuration, retries, errors and request bodies.

Only the sending differs between ``Client`` and ``AsyncClient``; everything here is plain.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import orjson

from app.client.models import ApiError
from app.integrations.base import retry_after_header as retry_after

DEFAULT_URL = "http://127.0.0.1:8000"
MAX_WAIT_S = 30.0
"""The longest one ``?wait=`` / ``Prefer: wait`` the API holds a request."""

Progress = Callable[[int, int | None], None]
"""Called as an upload goes: (bytes sent so far, total bytes or None when unknown)."""


@dataclass(frozen=True, slots=True)
class Retries:
    """How 429 and 503 answers are retried: after the server's ``Retry-After`` when it gives
    one, else after a jittered exponential backoff; at most ``max_retries`` times, and never
    after a ``Retry-After`` longer than ``max_wait_s`` (the error is raised at once)."""

    max_retries: int = 3
    max_wait_s: float = 60.0
    backoff_s: float = 0.5
    statuses: frozenset[int] = frozenset({429, 503})

    def delay(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before trying again after ``response``; None: do not."""
        if response.status_code not in self.statuses or attempt >= self.max_retries:
            return None
        asked = retry_after(response)
        if asked is not None:
            return asked if asked <= self.max_wait_s else None
        return min(self.max_wait_s, self.backoff_s * float(2**attempt) * (0.5 + random.random()))


NO_RETRIES = Retries(max_retries=0)


def error_of(response: httpx.Response) -> ApiError:
    """The ``ApiError`` of a non-2xx answer (inferq's or OpenAI's error shape, or neither)."""
    try:
        body = response.json()
        err = body["error"]
        code, message = str(err.get("code") or err.get("type") or ""), str(err["message"])
    except (ValueError, KeyError, TypeError, AttributeError):
        body, code, message = None, "http_error", response.text[:500]
    return ApiError(
        response.status_code, code, message, body=body, retry_after=retry_after(response)
    )


def base_url(url: str | None) -> str:
    return (url or os.environ.get("INFERQ_API_URL") or DEFAULT_URL).rstrip("/")


def auth_headers(api_key: str | None) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get("INFERQ_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def prediction_body(model: str, **fields: Any) -> dict[str, Any]:
    """A ``POST /v1/predictions`` body with the options that were given."""
    return {"model": model, **{k: v for k, v in fields.items() if v is not None}}


def job_form(**fields: Any) -> dict[str, str]:
    """The form fields of a job upload (``model``, ``format``, ``callback_url``, ...)."""
    return {k: str(v) for k, v in fields.items() if v is not None}


class Counting:
    """A binary file that reports the bytes read from it (httpx streams it in blocks); the
    rest is the file's own, so httpx still learns its length."""

    def __init__(self, f: IO[bytes], progress: Progress | None, total: int | None) -> None:
        self.f = f
        self.progress = progress
        self.total = total
        self.sent = 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sent += len(data)
        if self.progress is not None and data:
            self.progress(self.sent, self.total)
        return data

    def rewind(self) -> None:
        """Back to the start, for another try of the upload."""
        self.f.seek(0)
        self.sent = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


class Lines:
    """Rows or lines from an iterator, read as a JSONL file of unknown length (sent chunked)."""

    def __init__(self, items: Iterable[Any], progress: Progress | None) -> None:
        self.items: Iterator[Any] = iter(items)
        self.progress = progress
        self.buf = b""
        self.sent = 0

    def read(self, n: int = -1) -> bytes:
        want = n if n > 0 else 1 << 20
        while len(self.buf) < want:
            item = next(self.items, None)
            if item is None:
                break
            self.buf += to_line(item)
        data, self.buf = self.buf[:want], self.buf[want:]
        self.sent += len(data)
        if self.progress is not None and data:
            self.progress(self.sent, None)
        return data


def to_line(item: Any) -> bytes:
    """One JSONL line: bytes and str as they are, anything else dumped as JSON."""
    if isinstance(item, bytes):
        line = item
    elif isinstance(item, str):
        line = item.encode()
    else:
        line = orjson.dumps(item)
    return line if line.endswith(b"\n") else line + b"\n"


def upload_source(
    source: str | Path | Iterable[Any], progress: Progress | None
) -> tuple[str, Any, IO[bytes] | None]:
    """(file name, file-like to send, file to close) for a path or an iterator of rows."""
    if isinstance(source, str | Path):
        path = Path(source)
        f = path.open("rb")
        return path.name, Counting(f, progress, path.stat().st_size), f
    return "rows.jsonl", Lines(source, progress), None


def remaining(end: float | None, now: float) -> float:
    return MAX_WAIT_S if end is None else max(0.0, min(MAX_WAIT_S, end - now))
