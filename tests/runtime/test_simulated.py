"""The benchmark's simulated device (``app.runtime.simulated``): it waits without CPU, gives
outputs of the real graph's shape, and two processes queue on one device. No test asserts a
speed: the only clock checks are lower bounds (a wait is at least as long as asked)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.runtime import simulated
from app.runtime.simulated import (
    ENV,
    DeviceSpec,
    SimulatedDevice,
    SimulatedSession,
    parse_spec,
    spec_from_env,
)
from bench.accel_sim import busy_within, read_device_stats

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class _Meta:
    name: str
    shape: list[Any]
    type: str


class _FakeSession:
    """What an ``InferenceSession`` of ``minilm-embed`` says about itself; never run."""

    def get_inputs(self) -> list[_Meta]:
        return [
            _Meta("input_ids", ["batch", "seq"], "tensor(int64)"),
            _Meta("attention_mask", ["batch", "seq"], "tensor(int64)"),
        ]

    def get_outputs(self) -> list[_Meta]:
        return [
            _Meta("embedding", ["batch", 384], "tensor(float)"),
            _Meta("hidden", ["batch", "seq", 8], "tensor(float)"),
        ]

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]

    def run(self, *_: Any) -> Any:
        raise AssertionError("the simulated session must not run the real one")


def test_the_spec_parses_and_is_unset_by_default(tmp_path: Path) -> None:
    assert parse_spec("2,0.5") == DeviceSpec(0.002, 0.0005, None)
    spec = parse_spec(f" 0.38 , 0.0585 , {tmp_path / 'dev.lock'}")
    assert spec.lockfile == tmp_path / "dev.lock"
    assert spec.seconds(32) == pytest.approx(0.00038 + 32 * 0.0000585)
    for bad in ("", "3", "a,b", "-1,2"):
        with pytest.raises(ValueError):
            parse_spec(bad)
    assert spec_from_env({}) is None
    assert spec_from_env({ENV: "1,2"}) == DeviceSpec(0.001, 0.002)


def test_unset_the_session_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    real: Any = _FakeSession()
    assert simulated.wrap_if_enabled(real, "minilm-embed") is real


def test_a_run_waits_t_of_b_without_cpu_and_gives_the_graphs_shapes(tmp_path: Path) -> None:
    spec = DeviceSpec(0.15, 0.01, tmp_path / "dev.lock")  # t(5) = 200 ms
    session = SimulatedSession(_FakeSession(), SimulatedDevice(spec))
    ids = np.ones((5, 7), dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": ids}
    cpu0, wall0 = time.process_time(), time.monotonic()
    emb, hidden = session.run(["embedding", "hidden"], feeds)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    assert wall >= spec.seconds(5) * 0.99  # a lower bound only: sleep never ends early
    assert cpu < 0.5 * spec.seconds(5)  # the wait itself spends (next to) no CPU
    assert emb.shape == (5, 384) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)  # as the real graph's
    assert hidden.shape == (5, 7, 8)  # a symbolic dimension takes the input's width
    assert session.get_providers() == [simulated.PROVIDER]
    (again,) = session.run(["embedding"], feeds)
    assert not np.array_equal(again, emb)  # fresh values, not one row repeated
    stats = read_device_stats(spec.lockfile)  # type: ignore[arg-type]
    (rows,) = stats.values()
    assert [b for _, _, b, _, _ in rows] == [5, 5]
    assert all(end - start == pytest.approx(spec.seconds(5)) for start, end, *_ in rows)
    assert rows[1][0] >= rows[0][1]  # the second run began after the first ended


def test_the_text_adapter_runs_on_it(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.registry import Registry
    from app.runtime.adapters import load_adapter

    monkeypatch.setenv(ENV, "1,0.1")
    adapter = load_adapter(Registry(models_dir).get("minilm-embed"))
    out = adapter.run(adapter.prepare([{"text": "my invoice is wrong"}, {"text": "hi"}]))
    assert [o["embedding"].shape for o in out] == [(384,), (384,)]
    assert out[0]["embedding"].dtype == np.float32


CHILD = textwrap.dedent(
    """
    import sys, time
    from app.runtime.simulated import DeviceSpec, SimulatedDevice
    dev = SimulatedDevice(DeviceSpec(0.3, 0.0, __import__("pathlib").Path(sys.argv[1])))
    start_at = float(sys.argv[2])
    time.sleep(max(0.0, start_at - time.time()))
    dev.run(1)
    """
)


def test_one_lockfile_is_one_device_two_processes_queue_on_it(tmp_path: Path) -> None:
    lock = tmp_path / "dev.lock"
    start_at = time.time() + 1.5  # both asking at once, after their imports
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(lock), str(start_at)], env=env)
        for _ in range(2)
    ]
    assert [p.wait(60) for p in procs] == [0, 0]
    assert time.time() - start_at >= 2 * 0.3 * 0.99  # the wall: at least the sum of the waits
    stats = read_device_stats(lock)
    assert len(stats) == 2  # one record per process
    spans = sorted((s, e) for rows in stats.values() for s, e, *_ in rows)
    assert len(spans) == 2
    (s1, e1), (s2, e2) = spans
    assert s2 >= e1 - 1e-4  # the second waited for the first: never both at once
    assert e2 - s1 >= 2 * 0.3 * 0.99  # together at least the sum of the two waits
    assert busy_within(stats, s1, e2)["overlapping_batches"] == 0


def test_threads_of_one_process_queue_on_its_device() -> None:
    dev = SimulatedDevice(DeviceSpec(0.2, 0.0))  # no lockfile: this process's own device
    t0 = time.monotonic()
    threads = [threading.Thread(target=dev.run, args=(1,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - t0 >= 2 * 0.2 * 0.99
    assert dev.batches == 2 and dev.busy_s == pytest.approx(0.4)
