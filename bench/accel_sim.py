"""``accel-sim``: inferq in front of a **simulated device** (an accelerator by simulation).

The question: on a GPU host, how much CPU does inferq spend per request, so how many cores does
it need per GPU to keep it busy, and what stops it? This machine has no GPU, so the workers run
``minilm-embed`` on a simulated one (``app.runtime.simulated``, switched on by
``INFERQ_BENCH_SIMULATED_DEVICE`` in the workers' environment only): each batch of ``b`` waits
``t(b) = t0 + k*b`` without using CPU, on one device timeline (kept in one file, moved on under
``flock``) that all worker processes share, as they would share one GPU. HTTP, Postgres, the broker, the claim, tokenisation, padding,
the adapter's post-processing and serialisation all stay real.

``t0`` and ``k`` come from published measurements (``CITATION``; ``--sim-t0-ms``/``--sim-k-ms``
override them):

* sbert.net's pretrained-models table gives ``all-MiniLM-L6-v2`` an encoding speed of **14,200
  sentences/s on a V100 GPU**. ``SentenceTransformer.encode`` runs batches of 32 by default, so
  ``t(32) = 32 / 14200 s = 2.254 ms``, the per-batch time at inferq's ``max_batch_size`` (32).
* One figure cannot split ``t(32)`` into a fixed part and a per-item one. The split is taken
  from a batch-size sweep of the same model on an accelerator (chroma-core/chroma#5353,
  "SentenceTransformer-mps": per-item time 6.23 at batch 1, 1.14 at 8, 0.85 at 16, 0.75 at 32,
  0.71 at 64, 0.66 at 128). A least-squares fit of ``t(b) = t0 + k*b`` to it puts 16-18 % of
  ``t(32)`` in ``t0``; only that ratio is used (the thread does not give the figures' unit).
* So ``t0 = 0.17 * 2.254 = 0.38 ms`` (launches, transfers) and ``k = (2.254 - 0.38) / 32 =
  0.0585 ms`` per item: batch-1 capacity ``1 / t(1) = 2,280/s``, ideal at 32 ``14,200/s``.

The load is a closed loop of ``--sim-clients`` (256) clients, each POSTing one input and waiting
for its result: 256 outstanding requests are 8 full batches, far above the device's batch-1
capacity, so the device could always have a queue if the CPU side kept up. An open loop at a rate
above 2,280/s would, on a host whose CPU cannot take that (this one), only grow a backlog until
requests time out; the closed loop measures the most the system takes, which is the question.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.runtime.simulated import ENV
from bench import scenarios
from bench.corpus import inputs_for
from bench.phases import _groups, metered, say, settle
from bench.stack import Stack, StackConfig, fresh_database, migrate

MODEL = "minilm-embed"
LABEL = "simulated device"
SCENARIO = f"accel-sim ({LABEL})"
"""The name of the scenario's row in the CPU table (every report line says ``simulated``)."""

PUBLISHED_ITEMS_PER_S = 14200.0
PUBLISHED_BATCH = 32
FIXED_SHARE = 0.17
T32_MS = 1000.0 * PUBLISHED_BATCH / PUBLISHED_ITEMS_PER_S
T0_MS = round(FIXED_SHARE * T32_MS, 2)
K_MS = round((T32_MS - T0_MS) / PUBLISHED_BATCH, 4)
CITATION = (
    "t(32) = 32/14200 s = 2.254 ms from https://www.sbert.net/docs/sentence_transformer/"
    "pretrained_models.html (all-MiniLM-L6-v2, Speed 14200 sentences/s on a V100 GPU; encode's "
    "default batch size 32); the fixed share t0/t(32) = 0.17 from the batch sweep of "
    "all-MiniLM-L6-v2 in https://github.com/chroma-core/chroma/issues/5353 "
    "(SentenceTransformer-mps, batch 1-128)"
)
GROUPS = ("api", "workers", "postgres", "redis")
"""inferq's own process groups (the load generator, ``client``, is reported apart)."""


def device_seconds(t0_ms: float, k_ms: float, batch: float) -> float:
    return (t0_ms + k_ms * batch) / 1000.0


Batch = tuple[float, float, int, float, float]
"""One device run: ``(start, end, batch, queued, late)`` (``app.runtime.simulated``)."""


def read_device_stats(lockfile: Path) -> dict[int, list[Batch]]:
    """Every ``<lockfile>.<pid>.stats``: per process, its batches."""
    out: dict[int, list[Batch]] = {}
    for path in sorted(lockfile.parent.glob(f"{lockfile.name}.*.stats")):
        pid = int(path.name[len(lockfile.name) + 1 :].split(".")[0])
        rows = out.setdefault(pid, [])
        for line in path.read_text().splitlines():
            f = line.split()
            if len(f) == 5:
                rows.append((float(f[0]), float(f[1]), int(f[2]), float(f[3]), float(f[4])))
    return out


def busy_within(stats: dict[int, list[Batch]], w0: float, w1: float) -> dict[str, Any]:
    """The device in ``[w0, w1]``: its busy seconds (each run clipped to the window), the runs
    that started in it, their mean size, how long they were queued behind one another, how
    late the waiting thread woke, and how many runs overlapped (none may: one device)."""
    spans = sorted(x for rows in stats.values() for x in rows)
    inside = [x for x in spans if w0 <= x[0] < w1]
    busy = sum(max(0.0, min(x[1], w1) - max(x[0], w0)) for x in spans)
    overlaps = sum(1 for a, b in itertools.pairwise(spans) if b[0] < a[1] - 1e-6)

    def mean_ms(col: int) -> float | None:
        return round(1000 * statistics.fmean(x[col] for x in inside), 3) if inside else None

    return {
        "busy_s": round(busy, 4),
        "batches": len(inside),
        "items": sum(x[2] for x in inside),
        "mean_device_batch": round(statistics.fmean(x[2] for x in inside), 2) if inside else None,
        "mean_queued_ms": mean_ms(3),
        "mean_wake_late_ms": mean_ms(4),
        "batches_per_process": {
            str(pid): sum(1 for x in rows if w0 <= x[0] < w1) for pid, rows in stats.items()
        },
        "overlapping_batches": overlaps,
    }


def figures(
    *,
    online: dict[str, Any],
    cpu: dict[str, Any],
    device: dict[str, Any],
    wall_s: float,
    t0_ms: float,
    k_ms: float,
    max_batch: int,
    cpu_cap: float | None,
) -> dict[str, Any]:
    """What the section reports, from the run's measurements (pure: tested on its own)."""
    n = cpu.get("items") or online.get("n") or 1
    ms = {g: round(1000.0 * cpu[g] / n, 3) for g in (*GROUPS, "client") if g in cpu}
    inferq_ms = sum(ms.get(g, 0.0) for g in GROUPS)
    thr = float(online["items_per_s"])
    ideal = max_batch / device_seconds(t0_ms, k_ms, max_batch)
    batch1 = 1.0 / device_seconds(t0_ms, k_ms, 1)
    mean_b = online.get("mean_batch")
    at_mean = mean_b / device_seconds(t0_ms, k_ms, mean_b) if mean_b else None
    largest = max(GROUPS, key=lambda g: ms.get(g, 0.0))
    bar = 0.9 * min(ideal, cpu_cap) if cpu_cap else None
    return {
        "label": LABEL,
        "items_per_s": round(thr, 1),
        "device_ideal_items_per_s": round(ideal, 1),
        "throughput_over_ideal": round(thr / ideal, 4),
        "device_batch1_items_per_s": round(batch1, 1),
        "device_at_mean_batch_items_per_s": round(at_mean, 1) if at_mean else None,
        "device_busy_fraction": round(device["busy_s"] / wall_s, 4) if wall_s > 0 else None,
        "mean_batch": mean_b,
        "cpu_ms_per_request": ms,
        "inferq_cpu_ms_per_request": round(inferq_ms, 3),
        # cores = CPU ms per request x requests/s / 1000, at the least rate that keeps the
        # device busy (batch-1 runs back to back), and at the rate of its ideal (full batches)
        "cores_per_device": round(inferq_ms * batch1 / 1000.0, 2),
        "cores_per_device_at_ideal": round(inferq_ms * ideal / 1000.0, 2),
        "largest_group": largest,
        "largest_group_share": round(ms.get(largest, 0.0) / inferq_ms, 3) if inferq_ms else None,
        "cpu_cap_items_per_s": cpu_cap,
        "target_items_per_s": round(bar, 1) if bar else None,
        "target_met": (thr >= bar) if bar else None,
    }


def device_models_dir(src: Path, dst: Path, model: str = MODEL) -> Path:
    """``model`` as a GPU host would serve it: its files linked from ``src`` and its manifest's
    ``max_batch_tokens`` off. That cap (512 tokens) is set for a CPU, where a batch's cost
    grows with its padded tokens; it keeps batches of support-ticket texts at 4-6 items, and a
    device's at-``max_batch_size`` ideal out of reach. ``max_batch_size`` and the length
    buckets stay."""
    import json
    import os

    versions = sorted(p for p in (src / model).iterdir() if p.is_dir())
    for version in versions:
        out = dst / model / version.name
        out.mkdir(parents=True, exist_ok=True)
        for f in version.iterdir():
            target = out / f.name
            if f.name == "manifest.json" or target.exists():
                continue
            os.symlink(f.resolve(), target)
        manifest = json.loads((version / "manifest.json").read_text())
        manifest.setdefault("batching", {})["max_batch_tokens"] = 0
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dst


def _sizes(quick: bool, scale: float) -> tuple[int, int]:
    """(measured requests, warm-up requests)."""
    return (512, 128) if quick else (int(8000 * scale), 512)


def phase_accel_sim(
    cfg: StackConfig,
    args: argparse.Namespace,
    res: dict[str, Any],
    own_db: bool,
    meta: dict[str, Any],
) -> None:
    """Start inferq for ``minilm-embed`` with its workers on the simulated device, drive it
    with ``--sim-clients`` closed-loop clients, record ``m["accel_sim"]``."""
    m = res.get(MODEL)
    if m is None:
        say(f"accel-sim ({LABEL}): skipped, it runs {MODEL} and this run has {sorted(res)}")
        return
    t0_ms, k_ms = float(args.sim_t0_ms), float(args.sim_k_ms)
    log_dir = cfg.log_dir / "accel-sim"  # its own: the logs of inferq's stack say " ready." too
    lockfile = log_dir / "simulated-device.lock"
    log_dir.mkdir(parents=True, exist_ok=True)
    sim_cfg = replace(
        cfg,
        models=[MODEL],
        models_dir=device_models_dir(cfg.models_dir, log_dir / "models"),
        log_dir=log_dir,
        worker_env={ENV: f"{t0_ms},{k_ms},{lockfile}"},
    )
    if own_db:
        fresh_database(cfg.database_url)
    migrate(cfg.database_url)
    n, warmup = _sizes(args.quick, args.scale)
    items = inputs_for(m["kind"], n + warmup, salt=5)
    max_batch = int(m["batching"]["max_batch_size"])
    say(
        f"accel-sim ({LABEL}): t(b) = {t0_ms} + {k_ms}*b ms, one device shared by "
        f"{cfg.workers} workers; {n} requests, {args.sim_clients} clients …"
    )
    with Stack(sim_cfg) as stack:
        for w in stack.workers:  # never measure the real model under this label
            w.wait_for_log("SIMULATED DEVICE", timeout=60)
        m.setdefault("settle", {})[SCENARIO] = settle(cfg.database_url)
        run_args = {
            "clients": args.sim_clients,
            "http": args.http_client,
            "prefer_wait": args.wait_style == "prefer",
        }
        scenarios.online(stack.base_url, MODEL, items[:warmup], warmup=0, **run_args)
        w0 = time.monotonic()
        with metered(m, SCENARIO, n, _groups(stack)):
            online = scenarios.online(stack.base_url, MODEL, items[warmup:], warmup=0, **run_args)
        w1 = time.monotonic()
    device = busy_within(read_device_stats(lockfile), w0, w1)
    cap = (res.get("churn-risk") or {}).get("online", {}).get("items_per_s")
    out = figures(
        online=online,
        cpu=m["cpu"][SCENARIO],
        device=device,
        wall_s=w1 - w0,
        t0_ms=t0_ms,
        k_ms=k_ms,
        max_batch=max_batch,
        cpu_cap=cap,
    )
    m["accel_sim"] = {
        **out,
        "device": {
            "t0_ms": t0_ms,
            "k_ms": k_ms,
            "defaults": t0_ms == T0_MS and k_ms == K_MS,
            "source": CITATION,
            "shared_by_worker_processes": cfg.workers,
            **device,
        },
        "batching": {**m["batching"], "max_batch_tokens": 0},
        "clients": args.sim_clients,
        "wall_s": round(w1 - w0, 3),
        "online": online,
    }
    for line in summary_lines(m["accel_sim"]):
        say(f"  {line}")


def summary_lines(a: dict[str, Any]) -> list[str]:
    """The console lines of the scenario (each one says ``simulated device``)."""
    ms = a["cpu_ms_per_request"]
    cpu = ", ".join(f"{g} {v:.2f}" for g, v in ms.items())
    cap = a["cpu_cap_items_per_s"]
    check = (
        f"target >= 0.9 x min(ideal, CPU cap {cap:,.0f}/s) = {a['target_items_per_s']:,.0f}/s: "
        f"{'met' if a['target_met'] else 'NOT met'}"
        if cap
        else "target: CPU cap (churn-risk online) not measured in this run"
    )
    busy = a["device_busy_fraction"]
    return [
        f"accel-sim ({LABEL}): {a['items_per_s']:,.0f}/s = {a['throughput_over_ideal']:.1%} of "
        f"the device's ideal {a['device_ideal_items_per_s']:,.0f}/s at max batch; device busy "
        f"{busy:.1%}; mean batch {a['mean_batch']}",
        f"accel-sim ({LABEL}): CPU ms per request: {cpu}",
        f"accel-sim ({LABEL}): {a['cores_per_device']} cores per device to keep it busy "
        f"(batch-1 rate {a['device_batch1_items_per_s']:,.0f}/s), "
        f"{a['cores_per_device_at_ideal']} at its ideal; largest share: {a['largest_group']} "
        f"({a['largest_group_share']:.0%})",
        f"accel-sim ({LABEL}): {check}",
    ]


def markdown(models: dict[str, Any]) -> list[str]:
    """The report's section (nothing when the scenario did not run)."""
    lines: list[str] = []
    for name, m in models.items():
        a = m.get("accel_sim")
        if not a:
            continue
        d, o = a["device"], a["online"]
        ms = a["cpu_ms_per_request"]
        cap = a["cpu_cap_items_per_s"]
        target = (
            f"{_num(a['target_items_per_s'])}/s = 0.9 x min(device ideal, CPU cap "
            f"{_num(cap)}/s, churn-risk online): **{'met' if a['target_met'] else 'not met'}**"
            if cap
            else "CPU cap (churn-risk `online`) not measured in this run"
        )
        lines += [
            f"### {name} on a simulated device (accel-sim: no GPU, a modelled one)",
            "",
            f"Simulated device: t(b) = {d['t0_ms']} + {d['k_ms']}·b ms per batch, no CPU, one "
            f"device shared by {d['shared_by_worker_processes']} worker processes (flock). "
            f"Source{'' if d['defaults'] else ' of the defaults (overridden here)'}: "
            f"{d['source']}. Batching as a GPU host sets it: max_batch_size "
            f"{a.get('batching', {}).get('max_batch_size', '?')}, max_batch_tokens off (the CPU "
            "manifest's 512-token cap would keep batches at 4-6 texts).",
            "",
            "| simulated device | value |",
            "| --- | ---: |",
            f"| throughput (simulated device), {a['clients']} closed-loop clients | "
            f"{_num(a['items_per_s'])}/s |",
            f"| device ideal at max_batch_size (simulated device) | "
            f"{_num(a['device_ideal_items_per_s'])}/s |",
            f"| throughput / ideal (simulated device) | {a['throughput_over_ideal']:.1%} |",
            f"| device ideal at the observed mean batch (simulated device) | "
            f"{_num(a['device_at_mean_batch_items_per_s'])}/s |",
            f"| device busy fraction (simulated device): sum of t(b) / wall | "
            f"{a['device_busy_fraction']:.1%} (a run queued {d['mean_queued_ms']} ms behind "
            f"others on average; its thread woke {d['mean_wake_late_ms']} ms late) |",
            f"| mean batch, from the results (simulated device) | {a['mean_batch']} "
            f"(per device run: {d['mean_device_batch']}) |",
            f"| latency p50 / p99 (simulated device) | {o['p50_ms']} / {o['p99_ms']} ms |",
            *(
                f"| CPU ms per request, {g} (simulated device) | {ms[g]:.2f} |"
                for g in (*GROUPS, "client")
                if g in ms
            ),
            f"| cores per device to keep it busy (simulated device) | {a['cores_per_device']} "
            f"(inferq {a['inferq_cpu_ms_per_request']:.2f} CPU ms/request x batch-1 rate "
            f"{_num(a['device_batch1_items_per_s'])}/s) |",
            f"| cores per device at its ideal (simulated device) | "
            f"{a['cores_per_device_at_ideal']} |",
            f"| largest CPU share (simulated device) | {a['largest_group']} "
            f"({a['largest_group_share']:.0%} of inferq's CPU per request) |",
            f"| target (simulated device) | {target} |",
            "",
        ]
    return lines


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"
