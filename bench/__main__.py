"""``python -m bench [--quick] [--model ...] [--scenarios ...]``: run the benchmark, print the table.

Phases, in this order, so that no two systems compete for the cores: ``raw`` (ONNX Runtime
alone, no services), ``naive`` (its own Celery worker), then inferq's stack (API + workers + beat)
for ``online``, ``online-light`` and ``bulk``. Every phase uses the same model files, provider and
thread settings.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import naive, raw, scenarios
from bench.corpus import inputs_for
from bench.procstat import CpuMeter, children, pids_named
from bench.profile import PySpy, py_spy, summarize
from bench.report import describe_machine, library_versions, write_report
from bench.stack import (
    DEFAULT_BROKER,
    Stack,
    StackConfig,
    fresh_database,
    migrate,
    purge_queues,
    resolve_database,
    start_naive_worker,
)

MODELS = ("minilm-embed", "churn-risk")
SCENARIOS = ("raw", "naive", "online", "online-light", "bulk")
PROVIDERS = {
    "auto": [],
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}
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
    (True, "text"): Sizes(384, 300, 400, 6, 600, 0.3),
    (True, "tabular"): Sizes(16384, 1500, 1500, 6, 3000, 0.3),
    (False, "text"): Sizes(2000, 1500, 3000, 20, 6000, 1.0),
    (False, "tabular"): Sizes(16384, 6000, 8000, 20, 30000, 1.0),
}


def sizes_for(kind: str, quick: bool, scale: float) -> Sizes:
    s = SIZES[(quick, "tabular" if kind == "tabular" else "text")]
    return replace(
        s, naive=int(s.naive * scale), online=int(s.online * scale), bulk=int(s.bulk * scale)
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small item counts (under two minutes)")
    p.add_argument("--model", default="all", choices=[*MODELS, "all"])
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--provider", default="auto", choices=sorted(PROVIDERS))
    p.add_argument("--workers", type=int, default=2, help="worker processes (inferq and naive)")
    p.add_argument("--runner-threads", type=int, default=1, help="INFERQ_RUNNER_THREADS")
    p.add_argument("--intra-op-threads", type=int, default=1, help="INFERQ_INTRA_OP_THREADS")
    p.add_argument("--concurrency", type=int, default=32, help="inferq worker -c (thread pool)")
    p.add_argument("--raw-procs", type=int, help="raw processes (default: --workers; 1 on cuda)")
    p.add_argument("--clients", type=int, default=64, help="concurrent clients in online")
    p.add_argument(
        "--light-rate", type=float, help="online-light arrivals/s (default 10%% of online)"
    )
    p.add_argument("--scale", type=float, default=1.0, help="multiply naive/online/bulk counts")
    p.add_argument("--log-level", default="INFO", help="of API and workers (INFO as the CLI)")
    p.add_argument("--no-beat", action="store_true", help="do not start celery beat")
    p.add_argument("--profile", action="store_true", help="py-spy the API and a worker (online)")
    p.add_argument("--database-url", help="default: INFERQ_DATABASE_URL, else a fresh inferq_bench")
    p.add_argument("--broker-url", help=f"default: INFERQ_BROKER_URL, else {DEFAULT_BROKER}")
    p.add_argument("--models-dir", type=Path, help="default: INFERQ_MODELS_DIR, else var/models")
    args = p.parse_args(argv)
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios {sorted(unknown)}; choose from {list(SCENARIOS)}")
    return args


def ensure_models(models_dir: Path, names: list[str]) -> None:
    from app.registry import Registry

    missing = [n for n in names if n not in Registry(models_dir).names()]
    if not missing:
        return
    say(f"building the demo models into {models_dir} (missing: {missing}) …")
    try:
        from app.modelbuild import build_all
    except ImportError as exc:
        sys.exit(f"models {missing} missing and app.modelbuild.build_all unavailable ({exc})")
    build_all(models_dir, quantize=False, progress=lambda m: say(f"  {m}"))


def metered(
    m: dict[str, Any], name: str, items: int, groups: dict[str, Callable[[], list[int]]]
) -> AbstractContextManager[None]:
    """Record CPU seconds per process group into ``m["cpu"][name]`` around a block."""
    from contextlib import contextmanager

    @contextmanager
    def block() -> Any:
        meter = CpuMeter(groups)
        meter.start()
        yield
        m.setdefault("cpu", {})[name] = {**meter.stop(), "items": items}

    return block()


def phase_raw(cfg: StackConfig, args: argparse.Namespace, res: dict[str, Any]) -> None:
    procs = args.raw_procs or (1 if args.provider == "cuda" else cfg.workers)
    for name, m in res.items():
        sz = sizes_for(m["kind"], args.quick, args.scale)
        spec = raw.RawSpec(
            cfg.models_dir,
            name,
            sz.raw_items,
            cfg.intra_op_threads,
            tuple(cfg.providers),
            sz.raw_min_seconds,
        )
        batches = raw.batch_sizes_for(m["kind"], args.provider)
        say(f"raw {name}: {procs} proc x {cfg.intra_op_threads} thread, batches {batches} …")
        r = raw.run_raw(spec, procs=procs, batch_sizes=batches)
        m["raw"] = r.to_json()
        say(f"  raw {name}: best {r.best:,.0f}/s at batch {r.best_batch} on {r.provider}")
        one = r if procs == 1 else raw.run_raw(spec, procs=1, batch_sizes=batches)
        m["raw_1proc"] = one.to_json()
        m["single_item_ms"] = round(1000.0 / one.items_per_s[1], 4)
        say(f"  raw {name} 1 proc: best {one.best:,.0f}/s; single item {m['single_item_ms']} ms")


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
            items = inputs_for(m["kind"], sz.naive, n_features=m["n_features"])
            say(f"naive {name}: {len(items)} items, one task each …")
            with metered(m, "naive", len(items), groups):
                ips = naive.drive(app, name, items, warmup=4 * cfg.workers)
            m["naive"] = {"items_per_s": round(ips, 1), "n": len(items)}
            say(f"  naive {name}: {ips:,.0f}/s")
    finally:
        app.close()
        worker.stop()
        purge_queues(cfg.broker_url, [queue])


def _profilers(stack: Stack, out: Path, stamp: str, model: str) -> list[PySpy]:
    return [
        PySpy(pid, out / f"{stamp}-profile-{model}-{proc}.txt")
        for proc, pid in (("worker0", stack.workers[0].pid), ("api", stack.api.pid))  # type: ignore[union-attr]
    ]


def run_inferq(stack: Stack, args: argparse.Namespace, name: str, m: dict[str, Any]) -> None:
    sz = sizes_for(m["kind"], args.quick, args.scale)
    scen = set(args.scenarios.split(","))
    groups = {
        "api": lambda: [stack.api.pid] if stack.api else [],
        "workers": lambda: [w.pid for w in stack.workers],
        "client": lambda: [os.getpid()],
        "postgres": lambda: pids_named("postgres"),
        "redis": lambda: pids_named("redis-server"),
    }
    base, feats = stack.base_url, m["n_features"]
    if "online" in scen:
        items = inputs_for(m["kind"], sz.online, n_features=feats)
        say(f"online {name}: {len(items)} items, {args.clients} clients …")
        with metered(m, "online", len(items), groups):
            m["online"] = scenarios.online(
                base, name, items, clients=args.clients, warmup=2 * args.clients
            )
        o = m["online"]
        say(
            f"  online {name}: {o['items_per_s']:,.0f}/s, p50 {o['p50_ms']} ms, "
            f"p99 {o['p99_ms']} ms, mean batch {o['mean_batch']}"
        )
        if args.profile:
            spies = _profilers(stack, args.out, args.stamp, name)
            say(f"  profiling {name} online with py-spy ({py_spy() or 'not installed'}) …")
            with ExitStack() as es:
                for spy in spies:
                    es.enter_context(spy)
                scenarios.online(
                    base, name, items[: max(500, len(items) // 2)], clients=args.clients, warmup=0
                )
            m["profile"] = {s.out.name.rsplit("-", 1)[-1][:-4]: summarize(s.out) for s in spies}
    if "online-light" in scen:
        rate = args.light_rate or 0.1 * (m.get("online") or m.get("naive") or {}).get(
            "items_per_s", 50.0
        )
        n = max(30, int(rate * sz.light_seconds))
        items = inputs_for(m["kind"], n, n_features=feats, seed=11)
        say(f"online-light {name}: {n} items at {rate:.1f}/s (Poisson) …")
        with metered(m, "online-light", n, groups):
            m["online_light"] = scenarios.online_light(
                base, name, items, rate=rate, single_item_ms=m.get("single_item_ms", 0.0)
            )
        lt = m["online_light"]
        say(
            f"  online-light {name}: p50 {lt['p50_ms']} ms, p99 {lt['p99_ms']} ms "
            f"(added {lt['added_p50_ms']} / {lt['added_p99_ms']} ms)"
        )
    if "bulk" in scen:
        items = inputs_for(m["kind"], sz.bulk, n_features=feats, seed=13)
        say(f"bulk {name}: one job of {len(items)} items …")
        with metered(m, "bulk", len(items), groups):
            m["bulk"] = scenarios.bulk(
                base, name, items, pids=stack.pids(), timeout=120 if args.quick else 600
            )
        b = m["bulk"]
        say(f"  bulk {name}: " + (b["skipped"] if "skipped" in b else f"{b['items_per_s']:,.0f}/s"))


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
        for name, m in res.items():
            run_inferq(stack, args, name, m)
        meta["providers_used_by_workers"] = stack.providers_used()
        say(f"workers' ONNX sessions run on {meta['providers_used_by_workers']}")


def model_info(models_dir: Path, name: str) -> dict[str, Any]:
    from app.registry import Registry

    mf = Registry(models_dir).get(name).manifest
    return {
        "kind": mf.kind,
        "version": mf.version,
        "sha256": mf.sha256,
        "batching": mf.batching.model_dump(),
        "n_features": mf.n_features or 12,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    args.stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "")
    names = list(MODELS) if args.model == "all" else [args.model]
    models_dir = args.models_dir or Path(os.environ.get("INFERQ_MODELS_DIR", "var/models"))
    ensure_models(models_dir, names)
    db_url, own_db = resolve_database(args.database_url)
    cfg = StackConfig(
        database_url=db_url,
        broker_url=args.broker_url or os.environ.get("INFERQ_BROKER_URL") or DEFAULT_BROKER,
        models_dir=models_dir,
        models=names,
        workers=args.workers,
        runner_threads=args.runner_threads,
        intra_op_threads=args.intra_op_threads,
        concurrency=args.concurrency,
        providers=PROVIDERS[args.provider],
        beat=not args.no_beat,
        log_level=args.log_level,
    )
    res = {n: model_info(models_dir, n) for n in names}
    settings = {k: v for k, v in vars(cfg).items() if k not in ("log_dir", "prefix")}
    settings.update(
        models_dir=str(models_dir),
        clients=args.clients,
        provider=args.provider,
        database_url=db_url.split("@")[-1],
        scale=args.scale,
    )
    meta: dict[str, Any] = {
        "stamp": args.stamp,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "command": shlex.join(["python", "-m", "bench", *(argv or sys.argv[1:])]),
        "machine": describe_machine(),
        "versions": library_versions(),
        "settings": settings,
    }
    scen = set(args.scenarios.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    if scen & {"raw", "online-light"}:
        phase_raw(cfg, args, res)
    if "naive" in scen:
        phase_naive(cfg, args, res)
    if scen & {"online", "online-light", "bulk"}:
        phase_inferq(cfg, args, res, own_db, meta)
    meta["seconds"] = round(time.monotonic() - T0, 1)
    json_path, md_path, text = write_report({"meta": meta, "models": res}, args.out)
    print("\n" + text, flush=True)
    say(f"wrote {md_path} and {json_path}")


if __name__ == "__main__":
    main()
