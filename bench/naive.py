"""``naive``: the usual setup inferq is measured against.

A separate, minimal Celery app: one task per item, no batching, the result stored in the Celery
result backend (Redis). The worker runs prefork with as many processes as inferq has worker
processes, one intra-op thread each, and builds the ONNX session once per process. The client
sends every item with ``delay()`` and collects every result with ``.get()``.

The worker side is this module: ``celery -A bench.naive:app worker``, configured by the
``BENCH_NAIVE_*`` variables (and ``INFERQ_MODELS_DIR`` / ``INFERQ_INTRA_OP_THREADS`` /
``INFERQ_PROVIDERS`` for the model, exactly as inferq's workers read them).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

TASK = "bench.naive.predict"
_adapters: dict[str, Any] = {}


def _adapter(model: str) -> Any:
    """The model's adapter, built once per worker process."""
    if model not in _adapters:
        from app.registry import Registry
        from app.runtime.adapters import load_adapter
        from app.settings import Settings

        s = Settings()
        entry = Registry(s.models_dir).get(model)
        _adapters[model] = load_adapter(
            entry, intra_op_threads=s.intra_op_threads, providers=s.providers or None
        )
    return _adapters[model]


def predict(model: str, item: dict[str, Any]) -> dict[str, Any]:
    """One item through the model: tokenise, run, return the output (to the result backend)."""
    adapter = _adapter(model)
    result: dict[str, Any] = adapter.run(adapter.prepare([item]))[0]
    # arrays (embeddings) as lists, as such a task would return them to a JSON result backend
    return {k: v.tolist() if hasattr(v, "tolist") else v for k, v in result.items()}


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _load_models(**_: Any) -> None:
    for model in filter(None, os.environ.get("BENCH_NAIVE_MODELS", "").split(",")):
        _adapter(model)


def create_app(broker: str, backend: str, queue: str) -> Celery:
    """The naive Celery app; client and worker build it with the same arguments."""
    celery = Celery("bench-naive", broker=broker, backend=backend)
    celery.conf.update(
        task_default_queue=queue,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    celery.task(name=TASK)(predict)
    return celery


app = create_app(
    os.environ.get("BENCH_NAIVE_BROKER", "memory://"),
    os.environ.get("BENCH_NAIVE_BACKEND", "cache+memory://"),
    os.environ.get("BENCH_NAIVE_QUEUE", "bench-naive"),
)


def drive(celery: Celery, model: str, inputs: list[dict[str, Any]], *, warmup: int) -> float:
    """Send ``inputs`` with ``delay()``, collect them with ``.get()``; items/s of the timed part."""
    task = celery.tasks[TASK]
    for r in [task.delay(model, x) for x in inputs[:warmup]]:
        r.get(timeout=120)
    t0 = time.perf_counter()
    pending = [task.delay(model, x) for x in inputs]
    for r in pending:
        r.get(timeout=300)
    return len(inputs) / (time.perf_counter() - t0)
