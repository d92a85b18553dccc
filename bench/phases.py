"""The benchmark's phases, run in this order so that no two systems compete for the cores.

``raw`` (ONNX Runtime alone, no services), ``naive`` (its own Celery worker), then inferq's stack
(API + workers + beat) for ``online``, ``online-light`` and ``bulk``. Every phase uses the same
model files, provider and thread settings; each records its figures into the model's result dict.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from bench import naive, raw, scenarios
from bench.corpus import inputs_for
from bench.procstat import CpuMeter, children, machine_busy_seconds, pids_named
from bench.profile import PySpy, py_spy, summarize
from bench.stack import (
    Stack,
    StackConfig,
    fresh_database,
    migrate,
    purge_queues,
    start_naive_worker,
)

T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


@dataclass(frozen=True)
class Sizes:
    """Item counts per scenario (``raw_items``: inputs of the raw sweep)."""

    raw_items: int
    naive: int
    online: int
    light_seconds: float
    bulk: int
    raw_min_seconds: float


SIZES = {
    (True, "text"): Sizes(256, 256, 384, 6, 1024, 0.3),
    (True, "tabular"): Sizes(16384, 1500, 1500, 6, 20000, 0.3),
    (False, "text"): Sizes(1000, 1500, 3000, 20, 5000, 1.0),
    # bulk: the 1,000,000-line job of issue 4 (RSS of API and workers is measured during it)
    (False, "tabular"): Sizes(16384, 6000, 8000, 20, 1_000_000, 1.0),
}


def sizes_for(kind: str, quick: bool, scale: float) -> Sizes:
    s = SIZES[(quick, "tabular" if kind == "tabular" else "text")]
    return replace(
        s, naive=int(s.naive * scale), online=int(s.online * scale), bulk=int(s.bulk * scale)
    )


def metered(
    m: dict[str, Any], name: str, items: int, groups: dict[str, Callable[[], list[int]]]
) -> AbstractContextManager[None]:
    """Record CPU seconds per process group into ``m["cpu"][name]`` around a block."""

    @contextmanager
    def block() -> Any:
        meter = CpuMeter(groups)
        meter.start()
        yield
        m.setdefault("cpu", {})[name] = {**meter.stop(), "items": items}

    return block()


def _raw_spec(cfg: StackConfig, args: argparse.Namespace, name: str, kind: str) -> raw.RawSpec:
    sz = sizes_for(kind, args.quick, args.scale)
    return raw.RawSpec(
        cfg.models_dir,
        name,
        sz.raw_items,
        cfg.intra_op_threads,
        tuple(cfg.providers),
        sz.raw_min_seconds,
    )


def phase_raw(cfg: StackConfig, args: argparse.Namespace, res: dict[str, Any]) -> None:
    procs = args.raw_procs or (1 if args.provider == "cuda" else cfg.workers)
    for name, m in res.items():
        spec = _raw_spec(cfg, args, name, m["kind"])
        batches = raw.batch_sizes_for(m["kind"], args.provider)
        say(f"raw {name}: {procs} proc x {cfg.intra_op_threads} thread, batches {batches} …")
        r = raw.run_raw(spec, procs=procs, batch_sizes=batches)
        m["raw"] = r.to_json()
        if args.provider == "cuda" and "CUDA" not in r.provider:
            say(f"  WARNING: CUDA was asked for but ONNX Runtime ran on {r.provider}")
        say(f"  raw {name}: best {r.best:,.0f}/s at batch {r.best_batch} on {r.provider}")
        # The 1-process reference where it is needed: batch 1 (single-item time) and the best.
        one_batches = sorted({1, r.best_batch})
        one = r if procs == 1 else raw.run_raw(spec, procs=1, batch_sizes=one_batches)
        m["raw_1proc"] = one.to_json()
        m["single_item_ms"] = round(1000.0 / one.items_per_s[1], 4)
        say(f"  raw {name} 1 proc: best {one.best:,.0f}/s; single item {m['single_item_ms']} ms")


def phase_raw_again(cfg: StackConfig, args: argparse.Namespace, res: dict[str, Any]) -> None:
    """``raw`` once more at its best batch size after the other scenarios: how far this machine's
    speed moved during the run (the ratios still use the first sweep, taken side by side)."""
    settle(cfg.database_url)  # the stack is down; let Postgres finish what it left behind
    for name, m in res.items():
        first = m.get("raw")
        if not first:
            continue
        batch = int(first["best_batch"])
        spec = _raw_spec(cfg, args, name, m["kind"])
        r = raw.run_raw(spec, procs=int(first["procs"]), batch_sizes=[batch])
        start = float(first["items_per_s"][str(batch)])
        m["raw_end"] = {
            "batch": batch,
            "items_per_s": round(r.best, 1),
            "start_items_per_s": start,
            "drift": round(r.best / start - 1, 3),
        }
        say(f"raw {name} again: {r.best:,.0f}/s at batch {batch} ({m['raw_end']['drift']:+.1%})")


def phase_naive(cfg: StackConfig, args: argparse.Namespace, res: dict[str, Any]) -> None:
    queue = f"{cfg.prefix}.naive"
    say(f"naive: starting a prefork Celery worker, -c {cfg.workers} …")
    worker = start_naive_worker(cfg, queue)
    app = naive.create_app(cfg.broker_url, cfg.broker_url, queue)
    groups = {
        "naive": lambda: [worker.pid, *children(worker.pid)],
        "client": lambda: [os.getpid()],
        "redis": lambda: pids_named("redis-server"),
    }
    try:
        for name, m in res.items():
            sz = sizes_for(m["kind"], args.quick, args.scale)
            items = inputs_for(m["kind"], sz.naive, n_features=m["n_features"], salt=1)
            say(f"naive {name}: {len(items)} items, one task each …")
            with metered(m, "naive", len(items), groups):
                ips = naive.drive(app, name, items, warmup=4 * cfg.workers)
            m["naive"] = {"items_per_s": round(ips, 1), "n": len(items)}
            say(f"  naive {name}: {ips:,.0f}/s")
    finally:
        app.close()
        worker.stop()
        purge_queues(cfg.broker_url, [queue])


def _groups(stack: Stack) -> dict[str, Callable[[], list[int]]]:
    return {
        "api": lambda: [stack.api.pid, *children(stack.api.pid)] if stack.api else [],
        "workers": lambda: [w.pid for w in stack.workers],
        "client": lambda: [os.getpid()],
        "postgres": lambda: pids_named("postgres"),
        "redis": lambda: pids_named("redis-server"),
    }


def _online(stack: Stack, args: argparse.Namespace, name: str, m: dict[str, Any]) -> None:
    sz = sizes_for(m["kind"], args.quick, args.scale)
    items = inputs_for(m["kind"], sz.online, n_features=m["n_features"], salt=2)
    say(f"online {name}: {len(items)} items, {args.clients} clients …")
    run = partial(
        scenarios.online,
        stack.base_url,
        name,
        clients=args.clients,
        http=args.http_client,
        prefer_wait=args.wait_style == "prefer",
    )
    with metered(m, "online", len(items), _groups(stack)):
        o = m["online"] = run(items, warmup=2 * args.clients)
    say(
        f"  online {name}: {o['items_per_s']:,.0f}/s, p50 {o['p50_ms']} ms, "
        f"p99 {o['p99_ms']} ms, mean batch {o['mean_batch']}"
    )
    if not args.profile:
        return
    # A second pass under py-spy, so that the figures above are not taken while profiling.
    assert stack.api is not None
    folder = args.out / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    spies = {
        proc: PySpy(pid, folder / f"{args.stamp}-{name}-{proc}.txt")
        for proc, pid in (("worker0", stack.workers[0].pid), ("api", stack.api_servers()[0]))
    }
    say(f"  profiling {name} online with py-spy ({py_spy() or 'not installed'}) …")
    with ExitStack() as es:
        for spy in spies.values():
            es.enter_context(spy)
        run(items[: max(1000, len(items) // 2)], warmup=0)
    m["profile"] = {proc: summarize(spy.out) for proc, spy in spies.items()}


def _online_light(stack: Stack, args: argparse.Namespace, name: str, m: dict[str, Any]) -> None:
    sz = sizes_for(m["kind"], args.quick, args.scale)
    capacity = (m.get("online") or m.get("naive") or {}).get("items_per_s", 50.0)
    rate = args.light_rate or 0.1 * capacity
    n = max(30, int(rate * sz.light_seconds))
    items = inputs_for(m["kind"], n, n_features=m["n_features"], salt=3)
    say(f"online-light {name}: {n} items at {rate:.1f}/s (Poisson) …")
    with metered(m, "online-light", n, _groups(stack)):
        lt = m["online_light"] = scenarios.online_light(
            stack.base_url,
            name,
            items,
            rate=rate,
            single_item_ms=m.get("single_item_ms", 0.0),
            http=args.http_client,
            prefer_wait=args.wait_style == "prefer",
        )
    say(
        f"  online-light {name}: p50 {lt['p50_ms']} ms, p99 {lt['p99_ms']} ms "
        f"(added {lt['added_p50_ms']} / {lt['added_p99_ms']} ms)"
    )


def _bulk(stack: Stack, args: argparse.Namespace, name: str, m: dict[str, Any]) -> None:
    sz = sizes_for(m["kind"], args.quick, args.scale)
    items = inputs_for(m["kind"], sz.bulk, n_features=m["n_features"], salt=4)
    say(f"bulk {name}: one job of {len(items)} items …")
    with metered(m, "bulk", len(items), _groups(stack)):
        b = m["bulk"] = scenarios.bulk(
            stack.base_url, name, items, pids=stack.pids(), timeout=120 if args.quick else 600
        )
    say(f"  bulk {name}: " + (b["skipped"] if "skipped" in b else f"{b['items_per_s']:,.0f}/s"))


INFERQ_SCENARIOS = {"online": _online, "online-light": _online_light, "bulk": _bulk}


SETTLE_QUIET = 0.25
"""``settle`` waits for a second with the machine under this share of all cores busy."""


def settle(
    database_url: str, *, quiet: float = SETTLE_QUIET, timeout: float = 20.0
) -> dict[str, float | bool]:
    """Before each inferq scenario: have Postgres do now the work the last one deferred
    (``CHECKPOINT`` writes its dirty pages, ``VACUUM (ANALYZE)`` clears its dead rows), then wait
    until the machine is quiet (a second under ``quiet`` of all cores busy), so that neither is
    billed to the next scenario (the light-load latencies above all). What it took is recorded."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError

    from app.settings import Settings

    t0 = time.monotonic()
    flushed = False
    url = Settings(database_url=database_url).database_url
    if url.startswith("postgresql"):
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text("CHECKPOINT"))
                conn.execute(text("VACUUM (ANALYZE)"))
            flushed = True
        except DBAPIError as exc:  # not allowed (CHECKPOINT needs pg_checkpoint): say so
            err = exc.orig or exc
            say(f"  settle: {type(err).__name__}: {str(err).strip()[:120]}")
        finally:
            engine.dispose()
    busy = 1.0
    while time.monotonic() - t0 < timeout:
        b0, c0 = machine_busy_seconds()
        time.sleep(1.0)
        b1, c1 = machine_busy_seconds()
        busy = (b1 - b0) / max(c1 - c0, 1e-9)
        if busy < quiet:
            break
    return {
        "seconds": round(time.monotonic() - t0, 2),
        "db_flushed": flushed,
        "busy": round(busy, 2),
    }


def idle_cpu(stack: Stack, seconds: float = 3.0) -> dict[str, float]:
    """What the started stack burns doing nothing (beat, pollers, timers), per second."""
    meter = CpuMeter(
        {
            "api": lambda: [stack.api.pid, *children(stack.api.pid)] if stack.api else [],
            "workers": lambda: [w.pid for w in stack.workers],
        }
    )
    time.sleep(1.0)  # let start-up work (model loading) finish
    meter.start()
    time.sleep(seconds)
    out = meter.stop()
    return {k: round(1000 * out[k] / seconds, 1) for k in ("api", "workers")}


def phase_inferq(
    cfg: StackConfig,
    args: argparse.Namespace,
    res: dict[str, Any],
    own_db: bool,
    meta: dict[str, Any],
) -> None:
    if own_db:
        say(f"fresh database {cfg.database_url} …")
        fresh_database(cfg.database_url)
    migrate(cfg.database_url)
    say(
        f"starting inferq: API + {cfg.workers} workers (-c {cfg.concurrency}, runner threads "
        f"{cfg.runner_threads}, intra-op {cfg.intra_op_threads}); logs in {cfg.log_dir} …"
    )
    with Stack(cfg) as stack:
        meta["idle_cpu_ms_per_s"] = idle_cpu(stack)
        for name, m in res.items():
            for scenario, run in INFERQ_SCENARIOS.items():
                if scenario in args.scenarios.split(","):
                    m.setdefault("settle", {})[scenario] = settle(cfg.database_url)
                    run(stack, args, name, m)
        meta["providers_used_by_workers"] = stack.providers_used()
        say(f"workers' ONNX sessions run on {meta['providers_used_by_workers']}")
