"""Prometheus metrics of the work itself: batches, queue waits, outcomes, the sweeper, deliveries.

Defined here, in the core, because the points they measure are in the core (the batcher's
observer, the executor's store, the sweeper, the dispatcher); ``prometheus_client`` is neither
HTTP nor Celery. Each worker process serves them on its own port (``workers/tasks_metrics.py``);
the API's ``/metrics`` serves the same registry (its cancellations, the queue gauges of
``app.queue_stats``). Names follow Prometheus' conventions: base units, ``_seconds``,
``_total`` on counters. docs/observability.md lists them.

The hot path pays a few lock-protected additions per batch: every per-model child is looked up
once (``ModelMetrics``) and outcomes are tallied before they are counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

from prometheus_client import Counter, Histogram, Info

from app.db.base import utcnow


class _Item(Protocol):
    length: int
    enqueued_at: float
    accepted_at: float | None


BATCH_SIZE = Histogram(
    "inferq_batch_size",
    "Inputs per model run",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
BATCH_PADDED_TOKENS = Histogram(
    "inferq_batch_padded_tokens",
    "Padded tokens per model run (inputs times the longest; a tabular row counts one)",
    ["model"],
    buckets=(16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536),
)
QUEUE_WAIT = Histogram(
    "inferq_queue_wait_seconds",
    "From a request's acceptance to the start of the batch that runs it",
    ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
RUN_SECONDS = Histogram(
    "inferq_batch_run_seconds",
    "Model run time per batch (ONNX Runtime, the adapter's pre- and post-processing)",
    ["model"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ITEMS = Counter(
    "inferq_items_total",
    "Inputs that ended, by outcome (succeeded, failed, expired, cancelled) and error code",
    ["model", "outcome", "code"],
)
LEASE_EXPIRIES = Counter(
    "inferq_lease_expiries_total",
    "Running predictions whose worker's lease ran out, found and handed on by the sweeper",
    ["model"],
)
REPUBLISHED = Counter(
    "inferq_sweeper_republished_total",
    "Predictions the sweeper published again (lost message or lost worker)",
    ["model"],
)
DELIVERY_ATTEMPTS = Counter(
    "inferq_delivery_attempts_total",
    "Outbound delivery attempts by kind (webhook, integration) and outcome (delivered, retry, dead)",
    ["kind", "outcome"],
)
DELIVERY_LAG = Histogram(
    "inferq_delivery_lag_seconds",
    "From a delivery's creation (its result stored) to the 2xx that delivered it",
    ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600),
)
RUNTIME = Info(
    "inferq_runtime",
    "The ONNX Runtime execution provider each loaded model version runs on",
    ["model", "version"],
)


class ModelMetrics:
    """One model's children of the metrics above, looked up once; the batcher's observer."""

    __slots__ = ("_items", "_run", "_size", "_tokens", "_wait", "model")

    def __init__(self, model: str) -> None:
        self.model = model
        self._size = BATCH_SIZE.labels(model)
        self._tokens = BATCH_PADDED_TOKENS.labels(model)
        self._wait = QUEUE_WAIT.labels(model)
        self._run = RUN_SECONDS.labels(model)
        self._items: dict[tuple[str, str], Any] = {}

    def started(self, batch: Sequence[_Item], now: float) -> None:
        """A batch leaves the queue at ``now`` (the batcher's clock): each input's wait."""
        observe = self._wait.observe
        for item in batch:
            since = item.accepted_at if item.accepted_at is not None else item.enqueued_at
            observe(max(0.0, now - since))

    def ran(self, items: Sequence[_Item], seconds: float) -> None:
        """One model run of ``items`` took ``seconds``."""
        self._size.observe(len(items))
        self._tokens.observe(len(items) * max(i.length for i in items))
        self._run.observe(seconds)

    def ended(self, outcomes: Iterable[tuple[str, str | None]]) -> None:
        """Count final states, given as ``(status, error code)``; ``skipped`` is not one."""
        tally: dict[tuple[str, str], int] = {}
        for status, code in outcomes:
            if status != "skipped":
                key = (status, code or "")
                tally[key] = tally.get(key, 0) + 1
        for key, n in tally.items():
            child = self._items.get(key)
            if child is None:
                child = self._items[key] = ITEMS.labels(self.model, *key)
            child.inc(n)


def ended(model: str, status: str, code: str | None = None, n: int = 1) -> None:
    """Count ``n`` inputs of ``model`` that ended ``status`` (outside a batch: cancelled, ...)."""
    ITEMS.labels(model, status, code or "").inc(n)


def runtime(model: str, version: str, session: Any) -> None:
    """Record the provider ``session`` (an ``InferenceSession``) really runs on."""
    import onnxruntime as ort

    providers = list(session.get_providers()) if session is not None else []
    RUNTIME.labels(model, version).info(
        {
            "provider": providers[0] if providers else "unknown",
            "device": "cuda" if providers and providers[0].startswith("CUDA") else "cpu",
            "onnxruntime": ort.__version__,
        }
    )


def swept(stale: Iterable[Any], taken: Iterable[tuple[str, str, int]]) -> None:
    """The sweeper published ``taken`` (id, model, priority) of its ``stale`` rows again; those
    that were running under a lease that ran out (due and published before) are lease expiries."""
    lost = {r.id for r in stale if r.due and r.published_at is not None}
    per_model: dict[str, list[int]] = {}
    for pid, model, _ in taken:
        counts = per_model.setdefault(model, [0, 0])
        counts[0] += 1
        counts[1] += pid in lost
    for model, (republished, expired) in per_model.items():
        REPUBLISHED.labels(model).inc(republished)
        if expired:
            LEASE_EXPIRIES.labels(model).inc(expired)


def delivery_attempt(
    kind: str, *, ok: bool, final: bool, created_at: datetime | None, now: datetime | None = None
) -> None:
    """One attempt of a ``kind`` delivery: delivered, to be retried, or dead."""
    outcome = "delivered" if ok else ("dead" if final else "retry")
    DELIVERY_ATTEMPTS.labels(kind, outcome).inc()
    if ok and created_at is not None:
        lag = ((now or utcnow()) - created_at).total_seconds()
        DELIVERY_LAG.labels(kind).observe(max(0.0, lag))
