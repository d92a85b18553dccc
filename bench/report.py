"""The benchmark's report: the machine, the settings, every figure, and the ratios.

``write_report`` writes ``<stamp>.json`` (everything) and ``<stamp>.md`` (the tables) under the
results folder and returns the Markdown, which the command also prints.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import accel_sim, peers
from bench.phases import SETTLE_QUIET

PACKAGES = (
    "onnxruntime",
    "onnxruntime-gpu",
    "celery",
    "kombu",
    "redis",
    "fastapi",
    "uvicorn",
    "sqlalchemy",
    "psycopg",
    "tokenizers",
    "numpy",
    "httpx",
    "orjson",
    "torch",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _gpus() -> list[str]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def describe_machine() -> dict[str, Any]:
    """Cores, memory, CPU model, GPUs (nvidia-smi), OS and Python."""
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": _memory_gib(),
        "gpus": _gpus(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "hostname": platform.node(),
    }


def library_versions() -> dict[str, Any]:
    """Versions of the libraries that matter (absent ones left out) and ONNX Runtime providers."""
    out: dict[str, Any] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        import onnxruntime as ort

        out["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        pass
    return out


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _split(s: dict[str, Any]) -> str:
    """The stored timestamps' view of a median request (see ``scenarios.Sample``)."""
    b = s.get("breakdown_p50_ms")
    return "" if not b else ", ".join(f"{k} {_f(v)} ms" for k, v in b.items())


def _ratio(a: float | None, b: float | None) -> float | None:
    return float(f"{a / b:.3g}") if a and b else None


def _r(value: float | None) -> str:
    """A ratio: two decimals, or two significant digits when it is tiny (tabular vs raw)."""
    if value is None:
        return "-"
    return f"{value:.2f}" if value >= 0.01 else f"{value:.1e}"


def ratios(m: dict[str, Any]) -> dict[str, Any]:
    """``online/raw``, ``bulk/raw``, ``online/naive`` and the added latency, where measured.

    ``raw`` is the ceiling: the best of the multi-process and the one-process sweeps.
    """
    raw = max((m.get(k) or {}).get("best") or 0.0 for k in ("raw", "raw_1proc")) or None
    online = (m.get("online") or {}).get("items_per_s")
    bulk = (m.get("bulk") or {}).get("items_per_s")
    naive = (m.get("naive") or {}).get("items_per_s")
    light = m.get("online_light") or {}
    return {
        "online/raw": _ratio(online, raw),
        "bulk/raw": _ratio(bulk, raw),
        "online/naive": _ratio(online, naive),
        "added_p50_ms": light.get("added_p50_ms"),
        "added_p99_ms": light.get("added_p99_ms"),
    }


def _model_table(name: str, m: dict[str, Any]) -> list[str]:
    raw, raw1 = m.get("raw") or {}, m.get("raw_1proc") or {}
    lines = [
        f"### {name} ({m.get('kind')}, version {m.get('version')}, batching "
        f"max_batch_size={m.get('batching', {}).get('max_batch_size')} "
        f"max_delay_ms={m.get('batching', {}).get('max_delay_ms')})",
        "",
        "| scenario | items/s | p50 / p95 / p99 ms | mean batch | notes |",
        "| --- | ---: | --- | ---: | --- |",
    ]
    if raw:
        lines.append(
            f"| raw ({raw['procs']} proc) | {_f(raw['best'])} | | {raw['best_batch']} | "
            f"provider {raw['provider']}; single item (1 proc) "
            f"{_f(m.get('single_item_ms'), 3)} ms; by batch: {raw['items_per_s']} |"
        )
    again = m.get("raw_end")
    if again:
        lines.append(
            f"| raw again, after the other scenarios | {_f(again['items_per_s'])} | | "
            f"{again['batch']} | {again['drift']:+.1%} against the first sweep at this batch "
            "size: how far the machine's speed moved during the run (ratios use the first) |"
        )
    if raw1 and raw1.get("procs") != raw.get("procs"):
        lines.append(
            f"| raw (1 proc, reference) | {_f(raw1['best'])} | | {raw1['best_batch']} | "
            f"by batch: {raw1['items_per_s']} |"
        )
    for key, label in (("naive", "naive"), ("online", "online")):
        s = m.get(key)
        if s:
            lat = (
                f"{_f(s['p50_ms'])} / {_f(s['p95_ms'])} / {_f(s['p99_ms'])}"
                if "p50_ms" in s
                else ""
            )
            lines.append(
                f"| {label} | {_f(s['items_per_s'])} | {lat} | {_f(s.get('mean_batch'), 2)} | "
                f"n={s.get('n')} {_split(s)} |"
            )
    light = m.get("online_light")
    if light:
        lines.append(
            f"| online-light | {_f(light['rate_per_s'])} offered | {_f(light['p50_ms'])} / "
            f"{_f(light['p95_ms'])} / {_f(light['p99_ms'])} | {_f(light.get('mean_batch'), 2)} | "
            f"added p50 {_f(light['added_p50_ms'])} ms, p99 {_f(light['added_p99_ms'])} ms; "
            f"p50 split {_split(light)} |"
        )
    bulk = m.get("bulk")
    if bulk and "skipped" in bulk:
        lines.append(f"| bulk | skipped | | | {bulk['skipped']} |")
    elif bulk:
        rss = ", ".join(f"{k} {v} MiB" for k, v in bulk["peak_rss_mib"].items())
        lines.append(f"| bulk | {_f(bulk['items_per_s'])} | | | n={bulk['n']}; peak RSS {rss} |")
    return [*lines, ""]


def _cpu_table(results: dict[str, Any]) -> list[str]:
    groups = ["api", "workers", "naive", "client", "postgres", "redis"]
    lines = [
        "CPU milliseconds per item, by process group (machine busy: share of all cores' time "
        "during the scenario, other users' work included):",
        "",
        "| model | scenario | " + " | ".join(groups) + " | machine busy |",
        "| --- | --- | " + " | ".join("---:" for _ in groups) + " | ---: |",
    ]
    for name, m in results.items():
        for scen, cpu in (m.get("cpu") or {}).items():
            n = cpu.get("items") or 1
            cells = [_f(1000 * cpu[g] / n, 2) if g in cpu else "" for g in groups]
            busy = cpu["machine_busy"] / cpu["machine_capacity"] if cpu["machine_capacity"] else 0
            lines.append(f"| {name} | {scen} | " + " | ".join(cells) + f" | {busy:.0%} |")
    return [*lines, ""]


def _profiles(results: dict[str, Any], top: int = 8) -> list[str]:
    lines: list[str] = []
    for name, m in results.items():
        for proc, prof in (m.get("profile") or {}).items():
            if "error" in prof:
                lines.append(f"- {name} {proc}: {prof['error']}")
                continue

            def join(key: str, prof: dict[str, Any] = prof) -> str:
                return ", ".join(f"{k} {v}%" for k, v in prof[key][:top])

            lines += [
                f"- **{name}, {proc}** during `online` ({prof['samples']} samples holding the GIL)",
                f"  - self, by package: {join('self_by_package')}",
                f"  - self, by function: {join('self_by_function')}",
                f"  - inferq functions, inclusive: {join('inclusive_own')}",
            ]
    return ["Profiles (py-spy):", "", *lines, ""] if lines else []


def render_markdown(doc: dict[str, Any]) -> str:
    meta, machine = doc["meta"], doc["meta"]["machine"]
    gpus = "; ".join(machine["gpus"]) or "none"
    lines = [
        f"## inferq benchmark, {meta['started_at']}{' (quick)' if meta.get('quick') else ''}",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cores']} cores "
        f"({machine['cores_usable']} usable), {machine['memory_gib']} GiB, GPU: {gpus}; "
        f"Python {machine['python']}.",
        "Libraries: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if not isinstance(v, list))
        + f"; ONNX Runtime providers available: {meta['versions'].get('onnxruntime_providers')}.",
        f"Settings: {json.dumps(meta['settings'])}.",
        f"Command: `{meta['command']}`",
        "",
    ]
    for name, m in doc["models"].items():
        lines += _model_table(name, m)
    lines += [
        "| model | online/raw | bulk/raw | online/naive | added latency p50 / p99 ms |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for name, m in doc["models"].items():
        r = m["ratios"]
        lines.append(
            f"| {name} | {_r(r['online/raw'])} | {_r(r['bulk/raw'])} | "
            f"{_r(r['online/naive'])} | {_f(r['added_p50_ms'])} / {_f(r['added_p99_ms'])} |"
        )
    lines += [
        "",
        "raw = the better of the multi-process and the one-process sweeps; added latency = "
        "online-light latency minus the model's single-item time (raw, 1 process, batch 1).",
    ]
    settles = [v for m in doc["models"].values() for v in (m.get("settle") or {}).values()]
    if settles:
        lines.append(
            "Before each inferq scenario the bench settles: Postgres CHECKPOINT and VACUUM "
            "(ANALYZE) (done: "
            f"{sum(bool(v['db_flushed']) for v in settles)} of {len(settles)}), then a wait "
            f"until the machine is under {SETTLE_QUIET:.0%} busy for a second "
            f"(longest {max(v['seconds'] for v in settles)} s), so that no scenario pays for "
            "the database work the one before deferred."
        )
    idle = meta.get("idle_cpu_ms_per_s")
    if idle:
        lines.append(f"CPU the idle stack uses (ms per second): {idle}.")
    lines.append("")
    lines += accel_sim.markdown(doc["models"])  # the "simulated device" section, if it ran
    lines += peers.markdown(doc["models"])  # "inferq beside the peers", with --peers
    lines += _cpu_table(doc["models"])
    lines += _profiles(doc["models"])
    return "\n".join(lines)


def write_report(doc: dict[str, Any], out_dir: Path) -> tuple[Path, Path, str]:
    """Write ``<stamp>.json`` and ``<stamp>.md`` under ``out_dir``; return both and the text."""
    for m in doc["models"].values():
        m["ratios"] = ratios(m)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = doc["meta"].get("stamp") or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = render_markdown(doc)
    json_path, md_path = out_dir / f"{stamp}.json", out_dir / f"{stamp}.md"
    json_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    md_path.write_text(text + "\n")
    return json_path, md_path, text
