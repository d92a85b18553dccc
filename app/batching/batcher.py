"""Gathers items from many in-flight messages into model batches.

A batch leaves when its length bucket holds ``max_batch_size`` items or when its oldest item
has waited ``max_delay_ms`` (counted from when the request was accepted, when the caller says how
long it waited before it got here). Items of one batch share a length bucket (little padding);
within a bucket ``high`` priority goes before ``normal`` before ``low``, then oldest first. Items
past their deadline leave as ``expired`` without running; items the ``admit`` hook refuses
(cancelled, taken by another worker) are skipped. A batch that raises is bisected until only the inputs that break
it fail. Every batch's outcomes go to ``sink`` (one bulk write) before any future resolves;
with a ``writer`` pool that write overlaps the next batch's run. An ``observer`` (metrics) hears
of each batch as it starts and of each model run that returned. Each batch runs in a trace span
linked to the trace contexts of the items it carries (``app.tracing``); its write is in it too.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from contextvars import copy_context
from dataclasses import dataclass, field
from typing import Any, Protocol

from app import tracing
from app.tracing import TraceContext

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Outcome:
    """What became of one item: ``succeeded`` with a value, or a final error state."""

    status: str  # succeeded | failed | expired | skipped
    value: Any = None
    error_code: str | None = None
    error_message: str | None = None
    batch_size: int | None = None
    run_ms: float | None = None


@dataclass(eq=False, slots=True)
class BatchItem:
    """One unit of work. ``deadline`` and ``enqueued_at`` are on the batcher's clock."""

    key: str
    payload: Any
    length: int = 1
    priority: int = 1
    deadline: float | None = None
    enqueued_at: float = 0.0
    seq: int = 0
    future: Future[Outcome] = field(default_factory=Future)
    accepted_at: float | None = None
    """When the request was accepted, on the batcher's clock, if the caller knows (metrics)."""
    token: int | None = None
    """A fencing token the sink writes the result with (the claim it ran under), if any."""
    trace: TraceContext | None = None
    """The request's trace context: the span of the batch that carries it links to it."""


RunBatch = Callable[[list[Any]], Sequence[Any]]
Sink = Callable[[list[BatchItem], list[Outcome]], None]
Admit = Callable[[list[BatchItem]], set[str]]


class Observer(Protocol):
    """Told of each batch as it starts and of each model run that returned (metrics)."""

    def started(self, batch: list[BatchItem], now: float) -> None: ...

    def ran(self, items: list[BatchItem], seconds: float) -> None: ...


class DynamicBatcher:
    """A thread-safe batch queue plus the loop that runs batches on ``runners`` threads."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int,
        max_delay_ms: float,
        length_buckets: Sequence[int] = (),
        max_batch_tokens: int = 0,
        sink: Sink | None = None,
        admit: Admit | None = None,
        clock: Callable[[], float] = time.monotonic,
        writer: Executor | None = None,
        observer: Observer | None = None,
        trace_name: str = "inferq.batch",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_delay_ms < 0:
            raise ValueError("max_delay_ms must not be negative")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000.0
        self.edges = sorted(length_buckets)
        self.max_batch_tokens = max_batch_tokens
        self.sink = sink
        self.admit = admit
        self.clock = clock
        self.writer = writer
        self.observer = observer
        self.trace_name = trace_name
        """The name of each batch's span (``app.tracing``)."""
        self._buckets: dict[int, list[BatchItem]] = {}
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- queue -------------------------------------------------------------------------------
    def submit(self, item: BatchItem, *, waited: float = 0.0) -> Future[Outcome]:
        """Queue ``item``; its future resolves to an ``Outcome`` once the batch is stored.

        ``waited``: seconds the item already spent queued before it got here (in the broker);
        they count against ``max_delay_ms`` and its age among items of the same priority.
        """
        item.enqueued_at = self.clock() - max(0.0, waited)
        item.seq = next(self._seq)
        bucket = bisect.bisect_left(self.edges, item.length)
        with self._cond:
            self._buckets.setdefault(bucket, []).append(item)
            self._cond.notify()
        return item.future

    def pending(self) -> int:
        with self._cond:
            return sum(len(b) for b in self._buckets.values())

    def take_batch(self, *, timeout: float | None = 0.0) -> list[BatchItem] | None:
        """The next batch that is due, waiting up to ``timeout`` seconds (None: no limit)."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                now = self.clock()
                expired = self._pop_expired(now)
                if expired:
                    self._cond.release()
                    try:
                        self._finish(
                            expired,
                            [
                                Outcome(
                                    "expired",
                                    error_code="expired",
                                    error_message="deadline passed before it ran",
                                )
                            ]
                            * len(expired),
                        )
                    finally:
                        self._cond.acquire()
                    continue
                batch, wait = self._pop_ready(now)
                if batch:
                    return batch
                remaining = None if end is None else end - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                waits = [w for w in (wait, remaining) if w is not None]
                self._cond.wait(min(waits) if waits else None)

    def _pop_expired(self, now: float) -> list[BatchItem]:
        out: list[BatchItem] = []
        for key, items in self._buckets.items():
            keep = [i for i in items if i.deadline is None or i.deadline > now]
            if len(keep) != len(items):
                out.extend(i for i in items if not (i.deadline is None or i.deadline > now))
                self._buckets[key] = keep
        return out

    def _pop_ready(self, now: float) -> tuple[list[BatchItem] | None, float | None]:
        """Pop the best ready bucket's batch; else say how long until one is due."""
        best_key, best_rank, next_due = None, None, None
        for key, items in self._buckets.items():
            if not items:
                continue
            oldest = min(i.enqueued_at for i in items)
            due_at = oldest + self.max_delay
            if self._full(items) or due_at <= now:
                rank = (min(i.priority for i in items), oldest)
                if best_rank is None or rank < best_rank:
                    best_key, best_rank = key, rank
            else:
                next_due = due_at if next_due is None else min(next_due, due_at)
        if best_key is None:
            return None, None if next_due is None else max(next_due - now, 0.0)
        items = sorted(self._buckets[best_key], key=lambda i: (i.priority, i.enqueued_at, i.seq))
        n = self._fit(items)
        batch, rest = items[:n], items[n:]
        self._buckets[best_key] = rest
        return batch, None

    def _full(self, items: list[BatchItem]) -> bool:
        """Enough waiting to fill a batch, by count or by padded tokens."""
        if len(items) >= self.max_batch_size:
            return True
        if self.max_batch_tokens:
            return len(items) * max(i.length for i in items) >= self.max_batch_tokens
        return False

    def _fit(self, items: list[BatchItem]) -> int:
        """How many of ``items`` (in order) make one batch within both limits (at least one)."""
        n = min(len(items), self.max_batch_size)
        if not self.max_batch_tokens:
            return n
        longest = 0
        for k, item in enumerate(items[:n]):
            longest = max(longest, item.length)
            if k > 0 and (k + 1) * longest > self.max_batch_tokens:
                return k
        return n

    # -- running -----------------------------------------------------------------------------
    def process(self, batch: list[BatchItem]) -> None:
        """Admit, run (bisecting on error), store and resolve one batch."""
        if self.admit is not None:
            try:
                allowed = self.admit(batch)
            except Exception as exc:  # the store is down: the messages will be retried
                for item in batch:
                    item.future.set_exception(exc)
                return
            skipped = [i for i in batch if i.key not in allowed]
            for item in skipped:
                item.future.set_result(Outcome("skipped"))
            batch = [i for i in batch if i.key in allowed]
        if not batch:
            return
        if self.observer is not None:
            self.observer.started(batch, self.clock())
        carried = [i.trace for i in batch]
        with tracing.batch_span(self.trace_name, carried, {"inferq.batch_size": len(batch)}):
            outcomes: dict[int, Outcome] = {}
            self._run_bisect(batch, outcomes)
            self._finish(batch, [outcomes[id(i)] for i in batch])

    def _run_bisect(self, items: list[BatchItem], outcomes: dict[int, Outcome]) -> None:
        start = time.perf_counter()
        try:
            values = self.run_batch([i.payload for i in items])
            if len(values) != len(items):
                raise RuntimeError(f"model returned {len(values)} outputs for {len(items)} inputs")
        except Exception as exc:
            if len(items) == 1:
                log.warning("inference failed", extra={"key": items[0].key, "error": repr(exc)})
                outcomes[id(items[0])] = Outcome(
                    "failed",
                    error_code="inference_failed",
                    error_message=str(exc)[:500],
                    batch_size=1,
                )
                return
            mid = len(items) // 2
            self._run_bisect(items[:mid], outcomes)
            self._run_bisect(items[mid:], outcomes)
            return
        seconds = time.perf_counter() - start
        if self.observer is not None:
            self.observer.ran(items, seconds)
        run_ms = seconds * 1000
        for item, value in zip(items, values, strict=True):
            outcomes[id(item)] = Outcome("succeeded", value, batch_size=len(items), run_ms=run_ms)

    def _finish(self, items: list[BatchItem], outcomes: list[Outcome]) -> None:
        """Store then resolve; on the ``writer`` pool if there is one, so the next batch can
        run on the model while this one is written."""
        if self.writer is not None:  # in this batch's trace context (the write is its child)
            self.writer.submit(copy_context().run, self._store_and_resolve, items, outcomes)
        else:
            self._store_and_resolve(items, outcomes)

    def _store_and_resolve(self, items: list[BatchItem], outcomes: list[Outcome]) -> None:
        try:
            if self.sink is not None:
                self.sink(items, outcomes)
        except Exception as exc:
            for item in items:
                item.future.set_exception(exc)
            return
        for item, outcome in zip(items, outcomes, strict=True):
            item.future.set_result(outcome)

    def run_forever(self) -> None:
        while not self._stop.is_set():
            batch = self.take_batch(timeout=0.2)
            if batch:
                try:
                    self.process(batch)
                except Exception:  # never let a runner thread die
                    log.exception("batch processing failed")

    def start(self, runners: int = 1, *, name: str = "batcher") -> None:
        for n in range(runners):
            t = threading.Thread(target=self.run_forever, name=f"{name}-{n}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)
        if self.writer is not None:
            self.writer.shutdown(wait=True)
