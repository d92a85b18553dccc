"""``raw``: ONNX Runtime alone, the ceiling of the hardware.

Inputs are tokenised beforehand, sorted by length and cut into batches padded to their own
longest input, so the timed loop is nothing but ``session.run``. On a CPU host the ceiling is
several processes with one intra-op thread each (the cores are not over-subscribed); every process
gets every ``procs``-th batch of the sorted list and they start together at a barrier.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from bench.corpus import inputs_for

TEXT_BATCHES = (1, 8, 16, 32, 64)
GPU_TEXT_BATCHES = (1, 8, 16, 32, 64, 128, 256)
TABULAR_BATCHES = (1, 16, 64, 256, 1024, 4096)


@dataclass(frozen=True)
class RawSpec:
    """What every raw process loads: the model, its inputs and the session settings."""

    models_dir: Path
    model: str
    n_items: int
    intra_op_threads: int = 1
    providers: tuple[str, ...] = ()
    min_seconds: float = 1.0
    """Each process repeats its share until this much time has passed (tiny models)."""


@dataclass
class RawResult:
    procs: int
    provider: str
    items_per_s: dict[int, float] = field(default_factory=dict)

    @property
    def best_batch(self) -> int:
        return max(self.items_per_s, key=lambda b: self.items_per_s[b])

    @property
    def best(self) -> float:
        return self.items_per_s[self.best_batch]

    def to_json(self) -> dict[str, Any]:
        return {
            "procs": self.procs,
            "provider": self.provider,
            "items_per_s": {str(b): round(v, 1) for b, v in self.items_per_s.items()},
            "best_batch": self.best_batch,
            "best": round(self.best, 1),
        }


Feeds = dict[str, Any]


def _load(
    spec: RawSpec,
) -> tuple[Callable[[Sequence[Any]], Feeds], Callable[[Feeds], None], str, list[Any]]:
    """(make a batch's feeds, run them, the provider, prepared inputs sorted by length)."""
    import numpy as np

    from app.registry import Registry
    from app.runtime.adapters import TabularAdapter, TextAdapter, load_adapter

    entry = Registry(spec.models_dir).get(spec.model)
    adapter = load_adapter(
        entry, intra_op_threads=spec.intra_op_threads, providers=list(spec.providers) or None
    )
    n_features = entry.manifest.n_features or 12
    prepared = adapter.prepare(inputs_for(entry.manifest.kind, spec.n_items, n_features=n_features))
    prepared.sort(key=adapter.length)
    feeds: Callable[[Sequence[Any]], Feeds]
    if isinstance(adapter, TextAdapter):
        session, names, feeds = adapter.session, adapter.output_names, adapter.feeds
    elif isinstance(adapter, TabularAdapter):
        tab = adapter
        session, names = tab.session, [tab.output_name]

        def feeds(batch: Sequence[Any]) -> Feeds:
            return {tab.input_name: np.stack(batch)}

    else:
        raise TypeError(f"no raw runner for {type(adapter).__name__}")

    def run(batch_feeds: Feeds) -> None:
        session.run(names, batch_feeds)

    return feeds, run, session.get_providers()[0], prepared


def _child(conn: Connection, rank: int, procs: int, spec: RawSpec, barrier: Barrier) -> None:
    feeds, run, provider, prepared = _load(spec)
    conn.send(provider)
    while True:
        batch = conn.recv()
        if batch is None:
            return
        chunks = [prepared[i : i + batch] for i in range(0, len(prepared), batch)]
        mine = [feeds(c) for c in chunks[rank::procs]]
        sizes = [len(c) for c in chunks[rank::procs]]
        for f in mine[:2]:  # warm-up: allocations for these shapes
            run(f)
        barrier.wait()
        t0 = time.perf_counter()
        done = 0
        while True:
            for f in mine:
                run(f)
            done += sum(sizes)
            if time.perf_counter() - t0 >= spec.min_seconds:
                break
        conn.send((t0, time.perf_counter(), done))


def run_raw(spec: RawSpec, *, procs: int, batch_sizes: Sequence[int]) -> RawResult:
    """Sweep ``batch_sizes`` on ``procs`` processes; items/s for each (all processes together)."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    pipes: list[Connection] = []
    children = []
    for rank in range(procs):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_child, args=(child, rank, procs, spec, barrier), name=f"raw-{rank}")
        p.start()
        pipes.append(parent)
        children.append(p)
    try:
        providers = {c.recv() for c in pipes}
        result = RawResult(procs=procs, provider=",".join(sorted(providers)))
        for batch in batch_sizes:
            for c in pipes:
                c.send(batch)
            spans = [c.recv() for c in pipes]
            start = min(s[0] for s in spans)
            end = max(s[1] for s in spans)
            result.items_per_s[batch] = sum(s[2] for s in spans) / (end - start)
        return result
    finally:
        for c in pipes:
            with contextlib.suppress(OSError):
                c.send(None)
        for p in children:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join(5)


def batch_sizes_for(kind: str, provider: str) -> tuple[int, ...]:
    if kind == "tabular":
        return TABULAR_BATCHES
    return GPU_TEXT_BATCHES if provider == "cuda" else TEXT_BATCHES
