"""One Redis client per kombu channel instead of one per command.

kombu's Redis transport builds a new ``redis.Redis`` around its connection pool for every
publish and every acknowledgement (``Channel.conn_or_acquire``), and ``redis.Redis.__init__``
fills a case-insensitive table of some two hundred response callbacks each time: 6-7 % of a
worker's Python time under load, and part of every publish in the API. A client is only a
handle on the pool (thread-safe, holding no connection of its own), so the channel keeps one
and builds it again only when its pool changes (after a reconnect). ``install`` is called by
``workers.celery_app``, so the API's publisher and the workers both have it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def install() -> None:
    try:
        from kombu.transport import redis as transport
    except ImportError:  # pragma: no cover - redis comes with celery[redis]
        return
    channel: Any = transport.Channel
    if getattr(channel.conn_or_acquire, "_inferq_cached", False):
        return

    @contextmanager
    def conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool  # (re)built on first use; raises once the channel is closed
        cached = self.__dict__.get("_inferq_client")
        if cached is None or cached.connection_pool is not pool:
            cached = self._create_client()
            self.__dict__["_inferq_client"] = cached
        yield cached

    conn_or_acquire._inferq_cached = True  # type: ignore[attr-defined]
    channel.conn_or_acquire = conn_or_acquire
