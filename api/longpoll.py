"""``?wait=<seconds>``: hold a GET until what it reads is final, woken by Postgres NOTIFY.

Workers ``NOTIFY inferq_done`` with the ids of predictions they finish and of jobs that end (see
``app.notify``); without Postgres (the embedded SQLite default) the wait polls with a backoff.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from api.deps import Runtime

T = TypeVar("T")

MAX_WAIT_S = 30.0
NOTIFY_RECHECK_S = 1.0
"""With NOTIFY, read again at least this often anyway: a NOTIFY lost with the listener's
connection costs at most this, and a job's counters move while it runs."""


async def wait_final(
    rt: Runtime,
    key: str,
    load: Callable[[], Awaitable[T]],
    is_final: Callable[[T], bool],
    wait: float,
    *,
    skip_first_read: bool = False,
    final: Callable[[], T | None] | None = None,
) -> T:
    """``load()`` until ``is_final`` or ``wait`` seconds have passed; each read after the first
    waits for the NOTIFY naming ``key`` (or the recheck interval). Subscribed before the first
    read, so a change stored in between is never missed. ``skip_first_read``: the caller knows
    ``key`` is not final yet (it just submitted it); the wait still ends in a read. ``final``:
    after a NOTIFY, what it brought (``CompletionHub.take_final``), if anything: then that is
    the answer, with no read."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()

    def wake(_: str) -> None:
        loop.call_soon_threadsafe(event.set)

    rt.hub.subscribe(key, wake)
    try:
        end = loop.time() + wait
        value = None if skip_first_read else await load()
        interval = NOTIFY_RECHECK_S if rt.hub.enabled else 0.05
        while value is None or not is_final(value):
            remaining = end - loop.time()
            if remaining <= 0 and value is not None:
                break
            try:  # (``asyncio.timeout``, not ``wait_for``: no task per wait)
                async with asyncio.timeout(max(min(interval, remaining), 0.0)):
                    await event.wait()
            except TimeoutError:
                if not rt.hub.enabled:
                    interval = min(interval * 1.5, 0.5)
            event.clear()
            if final is not None and (done := final()) is not None:
                return done
            value = await load()
    finally:
        rt.hub.unsubscribe(key, wake)
    return value
