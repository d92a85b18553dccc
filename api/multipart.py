"""A streaming ``multipart/form-data`` reader: parts and their bytes as they arrive.

Starlette's ``request.form()`` spools a whole file to disk before the route sees a byte; a bulk
job wants to cut and store the upload while it is still coming in, so this feeds the body to
``python_multipart``'s push parser and hands out events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import InvalidInput

MAX_HEADER_BYTES = 8192


@dataclass(slots=True)
class Part:
    """One part of the form: a field, or a file when it has a ``filename``."""

    name: str
    filename: str | None
    content_type: str | None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def is_file(self) -> bool:
        return self.filename is not None


Event = tuple[Literal["start"], Part] | tuple[Literal["data"], bytes] | tuple[Literal["end"], None]


class MultipartReader:
    """Feed it the body's blocks; it returns ``start`` / ``data`` / ``end`` events."""

    def __init__(self, content_type: str) -> None:
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if not boundary:
            raise InvalidInput("the multipart/form-data body has no boundary in its Content-Type")
        self._events: list[Event] = []
        self._field = b""
        self._value = b""
        self._headers: dict[str, str] = {}
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_part_data": self._data,
                "on_part_end": self._end,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
            },
        )

    def feed(self, block: bytes) -> list[Event]:
        try:
            self._parser.write(block)
        except Exception as exc:
            raise InvalidInput(f"the multipart/form-data body is malformed: {exc}") from exc
        events, self._events = self._events, []
        return events

    def close(self) -> None:
        try:
            self._parser.finalize()
        except Exception as exc:
            raise InvalidInput(f"the multipart/form-data body is malformed: {exc}") from exc

    def _begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]
        self._check_header()

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        self._check_header()

    def _check_header(self) -> None:
        if len(self._field) + len(self._value) > MAX_HEADER_BYTES:
            raise InvalidInput("a multipart part header is too long")

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").lower()] = self._value.decode(
            "utf-8", "replace"
        )
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", ""))
        name = options.get(b"name")
        if name is None:
            raise InvalidInput("a multipart part has no name in its Content-Disposition")
        filename = options.get(b"filename")
        part = Part(
            name=name.decode("utf-8", "replace"),
            filename=None if filename is None else filename.decode("utf-8", "replace"),
            content_type=self._headers.get("content-type"),
            headers=self._headers,
        )
        self._events.append(("start", part))

    def _data(self, data: bytes, start: int, end: int) -> None:
        self._events.append(("data", data[start:end]))

    def _end(self) -> None:
        self._events.append(("end", None))


async def read_events(content_type: str, body: AsyncIterator[bytes]) -> AsyncIterator[Event]:
    """Every event of a streamed multipart body, in order."""
    reader = MultipartReader(content_type)
    async for block in body:
        for event in reader.feed(block):
            yield event
    reader.close()
