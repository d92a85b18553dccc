"""``python -m bench [--quick] [--model ...] [--scenarios ...]``: run the benchmark, print the table.

Every scenario of BENCH.md in one run (see ``bench/phases.py`` for the order), then the report:
Markdown and JSON under ``--out`` (``bench/results/``), the Markdown also printed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.settings import Settings
from bench.accel_sim import K_MS, T0_MS, phase_accel_sim
from bench.peers import PEERS, parse_names, phase_peers
from bench.phases import T0, phase_inferq, phase_naive, phase_raw, phase_raw_again, say
from bench.report import describe_machine, library_versions, write_report
from bench.stack import DEFAULT_BROKER, StackConfig, resolve_database

MODELS = ("minilm-embed", "churn-risk")
SCENARIOS = ("raw", "naive", "online", "online-light", "bulk")
OPTIONAL_SCENARIOS = ("accel-sim",)
"""Run only when named in ``--scenarios`` (bench/accel_sim.py: a simulated device)."""
PROVIDERS = {
    "auto": [],
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


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
    p.add_argument(
        "--api-procs", type=int, default=1, help="API processes (the server's --workers)"
    )
    p.add_argument(
        "--http-server", default="uvicorn", choices=["uvicorn", "granian"], help="the API's server"
    )
    p.add_argument("--raw-procs", type=int, help="raw processes (default: --workers; 1 on cuda)")
    p.add_argument("--clients", type=int, default=64, help="concurrent clients in online")
    p.add_argument(
        "--http-client", default="mini", choices=["mini", "httpx"], help="see bench/http.py"
    )
    p.add_argument(
        "--wait-style",
        default="prefer",
        choices=["prefer", "poll"],
        help="online clients wait in the POST (Prefer: wait=30) or POST then GET ?wait=30",
    )
    p.add_argument(
        "--light-rate", type=float, help="online-light arrivals/s (default 10%% of online)"
    )
    p.add_argument("--scale", type=float, default=1.0, help="multiply naive/online/bulk counts")
    p.add_argument(
        "--sim-t0-ms", type=float, default=T0_MS, help="accel-sim: fixed ms per device batch"
    )
    p.add_argument("--sim-k-ms", type=float, default=K_MS, help="accel-sim: ms per batch item")
    p.add_argument("--sim-clients", type=int, default=256, help="accel-sim: closed-loop clients")
    p.add_argument(
        "--peers",
        nargs="?",
        const="all",
        metavar="NAMES",
        help=f"then the peers ({','.join(PEERS)}, default all) on the same clients: bench/peers.py",
    )
    p.add_argument("--log-level", default="INFO", help="of API and workers (INFO as the CLI)")
    p.add_argument("--no-beat", action="store_true", help="do not start celery beat")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an inferq setting for the API and workers, e.g. job_chunk_lines=1024 (repeatable)",
    )
    p.add_argument("--profile", action="store_true", help="py-spy the API and a worker (online)")
    p.add_argument("--keep-logs", action="store_true", help="keep the processes' log folder")
    p.add_argument("--database-url", help="default: INFERQ_DATABASE_URL, else a fresh inferq_bench")
    p.add_argument("--broker-url", help=f"default: INFERQ_BROKER_URL, else {DEFAULT_BROKER}")
    p.add_argument("--models-dir", type=Path, help="default: INFERQ_MODELS_DIR, else var/models")
    args = p.parse_args(argv)
    args.overrides = {}
    for item in args.set:
        name, eq, value = item.partition("=")
        if not eq or name.lower() not in Settings.model_fields:
            p.error(f"--set takes NAME=VALUE with NAME an inferq setting, got {item!r}")
        args.overrides[name.lower()] = value
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS) - set(OPTIONAL_SCENARIOS)
    if unknown:
        choices = [*SCENARIOS, *OPTIONAL_SCENARIOS]
        p.error(f"unknown scenarios {sorted(unknown)}; choose from {choices}")
    try:
        args.peers = parse_names(args.peers)
    except ValueError as exc:
        p.error(str(exc))
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
        api_procs=args.api_procs,
        http_server=args.http_server,
        providers=PROVIDERS[args.provider],
        beat=not args.no_beat,
        log_level=args.log_level,
        overrides=args.overrides,
    )
    res = {n: model_info(models_dir, n) for n in names}
    settings = {k: v for k, v in vars(cfg).items() if k not in ("log_dir", "prefix")}
    settings.update(
        models_dir=str(models_dir),
        clients=args.clients,
        wait_style=args.wait_style,
        provider=args.provider,
        database_url=db_url.split("@")[-1],
        scale=args.scale,
        peers=args.peers,
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
    if "accel-sim" in scen:  # its own stack, after inferq's (churn-risk online: its CPU cap)
        phase_accel_sim(cfg, args, res, own_db, meta)
    if args.peers:  # each peer alone, after inferq's stack is down (bench/peers.py)
        phase_peers(cfg, args, res)
    if "raw" in scen and scen & {"online", "online-light", "bulk", "accel-sim"}:
        phase_raw_again(cfg, args, res)
    meta["seconds"] = round(time.monotonic() - T0, 1)
    json_path, md_path, text = write_report({"meta": meta, "models": res}, args.out)
    print("\n" + text, flush=True)
    say(f"wrote {md_path} and {json_path}")
    if not args.keep_logs:
        shutil.rmtree(cfg.log_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
