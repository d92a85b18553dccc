"""``accel-sim``'s figures and its report section, from made-up measurements (no run, no
timing: nothing here asserts a speed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import accel_sim
from bench.accel_sim import busy_within, figures
from bench.report import write_report


def test_the_reported_figures_follow_from_the_measurements() -> None:
    out = figures(
        online={"items_per_s": 300.0, "n": 1000, "mean_batch": 4.0},
        cpu={
            "api": 2.0,
            "workers": 4.0,
            "postgres": 1.5,
            "redis": 0.5,
            "client": 1.0,
            "items": 1000,
        },
        device={"busy_s": 0.5},
        wall_s=2.0,
        t0_ms=0.4,
        k_ms=0.05,
        max_batch=32,
        cpu_cap=None,
    )
    assert out["label"] == "simulated device"
    assert out["cpu_ms_per_request"]["workers"] == 4.0
    assert out["inferq_cpu_ms_per_request"] == 8.0  # the client is not inferq's
    assert out["device_ideal_items_per_s"] == pytest.approx(32 / 0.002, rel=1e-3)
    assert out["cores_per_device"] == pytest.approx(8.0 / 0.45, rel=1e-2)  # x 1/t(1)
    assert out["device_busy_fraction"] == 0.25
    assert out["largest_group"] == "workers"
    assert out["target_met"] is None  # no CPU cap measured
    capped = figures(
        online={"items_per_s": 300.0, "n": 1000, "mean_batch": 4.0},
        cpu={"workers": 4.0, "items": 1000},
        device={"busy_s": 0.5},
        wall_s=2.0,
        t0_ms=0.4,
        k_ms=0.05,
        max_batch=32,
        cpu_cap=320.0,
    )
    assert capped["target_items_per_s"] == 288.0 and capped["target_met"] is True


def test_busy_is_clipped_to_the_window_and_overlaps_are_counted() -> None:
    stats = {1: [(0.0, 1.0, 4, 0.0, 0.0), (2.0, 3.0, 8, 0.5, 0.1)], 2: [(2.5, 3.5, 2, 0.1, 0.3)]}
    out = busy_within(stats, 0.5, 3.0)
    assert out["busy_s"] == pytest.approx(0.5 + 1.0 + 0.5)
    assert out["batches"] == 2 and out["items"] == 10  # those that started in the window
    assert out["mean_queued_ms"] == pytest.approx(300.0)
    assert out["mean_wake_late_ms"] == pytest.approx(200.0)
    assert out["overlapping_batches"] == 1
    assert out["batches_per_process"] == {"1": 1, "2": 1}


def _doc() -> dict[str, Any]:
    online = {"items_per_s": 300.0, "n": 512, "mean_batch": 3.5, "p50_ms": 80.0, "p99_ms": 200.0}
    cpu = {"api": 1.0, "workers": 2.0, "postgres": 0.5, "redis": 0.2, "client": 0.4, "items": 512}
    device = {
        "busy_s": 0.4,
        "mean_device_batch": 3.1,
        "batches": 160,
        "mean_queued_ms": 0.2,
        "mean_wake_late_ms": 0.1,
    }
    out = figures(
        online=online,
        cpu=cpu,
        device=device,
        wall_s=1.7,
        t0_ms=accel_sim.T0_MS,
        k_ms=accel_sim.K_MS,
        max_batch=32,
        cpu_cap=None,
    )
    m: dict[str, Any] = {
        "kind": "text-embedding",
        "batching": {"max_batch_size": 32},
        "cpu": {accel_sim.SCENARIO: {**cpu, "machine_busy": 3.0, "machine_capacity": 3.4}},
        "accel_sim": {
            **out,
            "device": {
                "t0_ms": accel_sim.T0_MS,
                "k_ms": accel_sim.K_MS,
                "defaults": True,
                "source": accel_sim.CITATION,
                "shared_by_worker_processes": 2,
                **device,
            },
            "clients": 256,
            "online": online,
        },
    }
    meta = {
        "stamp": "t",
        "started_at": "now",
        "command": "python -m bench --scenarios accel-sim",
        "machine": {
            "cpu_model": "Test CPU",
            "cores": 2,
            "cores_usable": 2,
            "memory_gib": 1,
            "gpus": [],
            "python": "3.11",
        },
        "versions": {},
        "settings": {},
    }
    return {"meta": meta, "models": {"minilm-embed": m}}


def test_the_report_section_says_simulated_device_on_every_line(tmp_path: Path) -> None:
    json_path, _, text = write_report(_doc(), tmp_path)
    section = accel_sim.markdown(_doc()["models"])
    assert section and section[0].startswith("### minilm-embed on a simulated device")
    rows = [line for line in section if line.startswith("| ") and "---" not in line]
    assert rows and all("simulated device" in line for line in rows)
    assert "sbert.net" in text and "14200" in text  # the citation is in the report
    assert "target (simulated device) | CPU cap (churn-risk `online`) not measured" in text
    assert "| minilm-embed | accel-sim (simulated device) |" in text  # its CPU row
    doc = json.loads(json_path.read_text())
    assert doc["models"]["minilm-embed"]["accel_sim"]["label"] == "simulated device"
    lines = accel_sim.summary_lines(doc["models"]["minilm-embed"]["accel_sim"])
    assert all("simulated device" in line for line in lines)


def test_the_defaults_reproduce_the_published_figure() -> None:
    t32 = accel_sim.device_seconds(accel_sim.T0_MS, accel_sim.K_MS, 32)
    assert 32 / t32 == pytest.approx(accel_sim.PUBLISHED_ITEMS_PER_S, rel=0.01)
