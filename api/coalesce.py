"""Group concurrent requests into one database round trip (group commit).

When a flush slot is free, what is pending goes at once (no added latency at low load); while
flushes are in flight, new items gather and leave together when a slot frees up, so under load
many POSTs become one INSERT and one broker message, and many long-polls one SELECT.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from starlette.concurrency import run_in_threadpool

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """``await submit(item)`` → the result ``flush`` gave for it.

    ``flush(items)`` runs in a worker thread and returns one result per item, or an exception
    instance for an item that failed alone; if it raises, each item is flushed alone so one
    bad item fails one caller.
    """

    def __init__(
        self,
        flush: Callable[[list[T]], Sequence[R | BaseException]],
        *,
        max_items: int = 256,
        max_in_flight: int = 2,
    ) -> None:
        self.flush = flush
        self.max_items = max_items
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._kick: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, fut))
        if self._runner is None or self._runner.done():
            self._kick = asyncio.Event()
            # in a context of its own: not in the first caller's (its trace id, say) for good
            self._runner = loop.create_task(self._run(), context=contextvars.Context())
        assert self._kick is not None
        self._kick.set()
        return await fut

    async def _run(self) -> None:
        assert self._kick is not None
        while True:
            await self._kick.wait()
            self._kick.clear()
            while self._pending:
                await self._slots.acquire()
                group, self._pending = (
                    self._pending[: self.max_items],
                    self._pending[self.max_items :],
                )
                asyncio.get_running_loop().create_task(self._flush(group))

    async def _flush(self, group: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            items = [item for item, _ in group]
            try:
                results = await run_in_threadpool(self.flush, items)
            except Exception:
                if len(items) == 1:
                    raise
                results = [await run_in_threadpool(self._one, item) for item in items]
            for (_, fut), res in zip(group, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
        except BaseException as exc:
            for _, fut in group:
                if not fut.done():
                    fut.set_exception(exc)
        finally:
            self._slots.release()

    async def close(self) -> None:
        """Stop the runner task (at shutdown)."""
        if self._runner is not None and not self._runner.done():
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    def _one(self, item: T) -> R | BaseException:
        try:
            return self.flush([item])[0]
        except Exception as exc:
            return exc
