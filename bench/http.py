"""The load generator's HTTP clients: a minimal asyncio HTTP/1.1 one, and httpx.

The benchmark client shares the cores with the system it measures, so what it costs per request
is taken from inferq's figure. httpx's ``AsyncClient`` costs several milliseconds of CPU per
request at 64 concurrent connections on this class of machine; the minimal client (keep-alive
connections, ``Content-Length`` or chunked bodies, nothing else) costs a small fraction of that.
Both talk to a server on loopback only; ``--http-client httpx`` picks httpx.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import orjson


def _decode(data: bytes) -> Any:
    """A JSON body, or its text when it is not JSON (a proxy's or a crashed server's answer)."""
    if not data:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return data.decode("utf-8", "replace")


class JsonClient(Protocol):
    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]: ...

    async def aclose(self) -> None: ...


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer


class MiniClient:
    """Keep-alive HTTP/1.1 connections to one ``http://host:port``; JSON in, JSON out."""

    def __init__(self, base_url: str) -> None:
        u = urlsplit(base_url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self._idle: list[_Conn] = []
        self._all: list[_Conn] = []

    async def _conn(self) -> tuple[_Conn, bool]:
        """An idle connection (reused: True) or a new one."""
        if self._idle:
            return self._idle.pop(), True
        conn = _Conn(*await asyncio.open_connection(self.host, self.port))
        self._all.append(conn)
        return conn, False

    def _drop(self, conn: _Conn) -> None:
        conn.writer.close()
        if conn in self._all:
            self._all.remove(conn)

    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        payload = b"" if body is None else orjson.dumps(body)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        while True:
            conn, reused = await self._conn()
            try:
                return await self._exchange(conn, head.encode() + payload)
            except (asyncio.IncompleteReadError, ConnectionError):
                self._drop(conn)
                # The server closes keep-alive connections that sat idle (uvicorn: 5 s) without
                # reading what was sent on them: send it again on a fresh one.
                if not reused:
                    raise

    async def _exchange(self, conn: _Conn, request: bytes) -> tuple[int, Any]:
        conn.writer.write(request)
        status, keep_alive, headers = await self._head(conn.reader)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            data = await self._chunked(conn.reader)
        elif "content-length" in headers:
            data = await conn.reader.readexactly(int(headers["content-length"]))
        else:  # no length: the body ends when the server closes the connection
            data = await conn.reader.read()
            keep_alive = False
        if keep_alive:
            self._idle.append(conn)
        else:
            self._drop(conn)
        return status, _decode(data)

    @staticmethod
    async def _head(reader: asyncio.StreamReader) -> tuple[int, bool, dict[str, str]]:
        """(status, whether the connection stays open, headers with lower-case names)."""
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        version, status, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = connection == "keep-alive" or (version == "HTTP/1.1" and connection != "close")
        return int(status), keep_alive, headers

    @staticmethod
    async def _chunked(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)

    async def aclose(self) -> None:
        for conn in self._all:
            conn.writer.close()
        self._all.clear()
        self._idle.clear()


class HttpxClient:
    """The same interface on ``httpx.AsyncClient``."""

    def __init__(self, base_url: str, connections: int) -> None:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.client = httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits)

    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        content = None if body is None else orjson.dumps(body)
        sent = dict(headers or {})
        if body is not None:
            sent["content-type"] = "application/json"
        r = await self.client.request(method, path, content=content, headers=sent)
        return r.status_code, _decode(r.content)

    async def aclose(self) -> None:
        await self.client.aclose()


def make_client(kind: str, base_url: str, connections: int) -> JsonClient:
    """``mini`` (default) or ``httpx``."""
    if kind == "httpx":
        return HttpxClient(base_url, connections)
    return MiniClient(base_url)
