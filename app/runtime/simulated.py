"""Benchmark only: a simulated accelerator in place of a model's ONNX Runtime run.

``INFERQ_BENCH_SIMULATED_DEVICE="t0_ms,k_ms[,lockfile]"``, read by the worker only (``bench``'s
``accel-sim`` scenario sets it; nothing else should): every ``session.run`` of every model the
process loads becomes a wait of ``t(b) = t0 + k*b`` for a batch of ``b`` that uses no CPU
(``time.sleep`` releases the GIL), and returns outputs of the shape and dtype the real graph
would (``embedding``: ``[b, 384]`` float32, rows of unit length). Everything around it stays
real: tokenisation (``TextAdapter.prepare``), padding (``TextAdapter.feeds``), the adapter's
post-processing, serialisation, the database, the broker, HTTP.

A GPU host has one device that its worker processes share: with ``lockfile`` the device's
timeline (when it is next free) lives in that file, moved on under ``fcntl.flock``, so batches
of every process queue on it one after another as they would on one GPU (``SimulatedDevice``).
Each batch appends a line ``<start> <end> <batch> <queued> <late>`` (``time.monotonic``
seconds, the system-wide ``CLOCK_MONOTONIC`` on Linux) to ``<lockfile>.<pid>.stats``, from which
the benchmark computes how busy the device was. Without ``lockfile`` the device is this
process's alone and nothing is written.

The results are not the model's: never set this outside a benchmark. A worker that has it logs
so at WARNING when it loads a model.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

ENV = "INFERQ_BENCH_SIMULATED_DEVICE"
"""``"t0_ms,k_ms[,lockfile]"``: benchmark only (see the module's docstring)."""

PROVIDER = "SimulatedDevice"
"""What a simulated session reports as its provider (``get_providers``)."""

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}
_BANK_ROWS = 512
"""Rows of pre-drawn output values per output, handed out in turn (drawing them per batch would
spend CPU the real device does not)."""


@dataclass(frozen=True)
class DeviceSpec:
    """``t(b) = t0_s + k_s * b`` seconds per batch of ``b``; ``lockfile`` names the device."""

    t0_s: float
    k_s: float
    lockfile: Path | None = None

    def seconds(self, batch: int) -> float:
        return self.t0_s + self.k_s * batch

    @property
    def stats_path(self) -> Path | None:
        """This process's per-batch record (``<lockfile>.<pid>.stats``), if there is a device."""
        return None if self.lockfile is None else Path(f"{self.lockfile}.{os.getpid()}.stats")


def parse_spec(value: str) -> DeviceSpec:
    """``"t0_ms,k_ms[,lockfile]"`` -> ``DeviceSpec``; ``ValueError`` on anything else."""
    parts = [p.strip() for p in value.split(",", 2)]
    if len(parts) < 2:
        raise ValueError(f"{ENV} takes 't0_ms,k_ms[,lockfile]', got {value!r}")
    t0_ms, k_ms = float(parts[0]), float(parts[1])
    if t0_ms < 0 or k_ms < 0:
        raise ValueError(f"{ENV}: t0_ms and k_ms must be >= 0, got {value!r}")
    lock = Path(parts[2]) if len(parts) == 3 and parts[2] else None
    return DeviceSpec(t0_ms / 1000.0, k_ms / 1000.0, lock)


def spec_from_env(environ: Mapping[str, str] | None = None) -> DeviceSpec | None:
    """The simulated device ``INFERQ_BENCH_SIMULATED_DEVICE`` asks for; ``None`` when unset."""
    value = (os.environ if environ is None else environ).get(ENV, "").strip()
    return parse_spec(value) if value else None


class SimulatedDevice:
    """One accelerator: it runs one batch at a time, a batch of ``b`` for ``t(b)``.

    A batch reserves the next ``t(b)`` of the device's time, after what is already queued on it,
    then waits until that ends. The device's timeline (when it is next free, ``time.monotonic``)
    is kept in ``spec.lockfile`` and read and moved on under ``flock``, so every process naming
    that file queues on the same device, as on one GPU; a ``threading.Lock`` does the same for
    the threads of one process (one open file is one ``flock`` holder). The lock is held only
    to reserve, not during the wait: a host thread that wakes late (a loaded CPU) is late
    itself, as after a real GPU's sync, but does not hold the device meanwhile. Without a
    lockfile the timeline is this process's own."""

    STALE_S = 60.0
    """A timeline this far ahead of now was left by something else (another boot): ignored."""

    def __init__(self, spec: DeviceSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._stats_fd: int | None = None
        self._pid = os.getpid()
        self._free_at = 0.0
        self.batches = 0
        self.busy_s = 0.0

    def _open(self) -> None:
        """Open the lock and stats files (again after a fork: a child is another holder)."""
        if self.spec.lockfile is None:
            return
        if self._lock_fd is None or self._pid != os.getpid():
            self._pid = os.getpid()
            self.spec.lockfile.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.spec.lockfile, os.O_RDWR | os.O_CREAT, 0o644)
            stats = self.spec.stats_path
            assert stats is not None
            self._stats_fd = os.open(stats, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _reserve(self, seconds: float) -> tuple[float, float]:
        """``(start, end)`` of the next ``seconds`` of the device's time; held: ``self._lock``."""
        now = time.monotonic()
        if self._lock_fd is None:
            start = max(now, self._free_at)
            self._free_at = start + seconds
            return start, self._free_at
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            raw = os.pread(self._lock_fd, 32, 0).strip()
            free_at = float(raw) if raw else 0.0
            start = max(now, free_at if free_at - now < self.STALE_S else 0.0)
            end = start + seconds
            os.pwrite(self._lock_fd, f"{end:<31.6f}\n".encode(), 0)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        return start, end

    def run(self, batch: int) -> float:
        """Run one batch of ``batch``: wait (no CPU) until the device has done it; the device
        seconds it took, ``t(batch)``. Appends ``<start> <end> <batch> <queued> <late>`` (the
        device's start and end, how long it was queued behind others, how late this thread
        woke after the end) to the stats file."""
        seconds = self.spec.seconds(batch)
        with self._lock:
            self._open()
            asked = time.monotonic()
            start, end = self._reserve(seconds)
        delay = end - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        woke = time.monotonic()
        with self._lock:
            self.batches += 1
            self.busy_s += seconds
            if self._stats_fd is not None:
                line = f"{start:.6f} {end:.6f} {batch} {start - asked:.6f} {woke - end:.6f}\n"
                os.write(self._stats_fd, line.encode())
        return seconds


class _Output:
    """Pre-drawn values for one graph output, handed out ``batch`` rows at a time."""

    def __init__(self, name: str, dims: Sequence[Any], kind: str, seed: int) -> None:
        self.name = name
        self.dtype = np.dtype(_DTYPES.get(kind, np.float32))
        # the batch dimension first; other symbolic ones (a sequence) take the input's width
        self.dims = list(dims)
        self._seed = seed
        self._bank: dict[tuple[int, ...], np.ndarray] = {}
        self._next = 0

    def shape(self, batch: int, width: int) -> tuple[int, ...]:
        rest = [d if isinstance(d, int) and d > 0 else width for d in self.dims[1:]]
        return (batch, *rest)

    def draw(self, batch: int, width: int) -> np.ndarray:
        shape = self.shape(batch, width)
        row = shape[1:]
        bank = self._bank.get(row)
        if bank is None:
            bank = self._bank[row] = self._fill((_BANK_ROWS, *row))
        if batch > _BANK_ROWS:
            reps = -(-batch // _BANK_ROWS)
            return np.ascontiguousarray(np.concatenate([bank] * reps)[:batch])
        if self._next + batch > _BANK_ROWS:
            self._next = 0
        out = bank[self._next : self._next + batch].copy()  # fresh, as a session's output is
        self._next += batch
        return out

    def _fill(self, shape: tuple[int, ...]) -> np.ndarray:
        rng = np.random.default_rng(self._seed)
        if self.dtype.kind != "f":
            return rng.integers(0, 2, size=shape).astype(self.dtype)
        if self.name.endswith("_probs") or len(shape) < 2 or shape[-1] == 1:
            return rng.random(shape).astype(self.dtype)  # probabilities in [0, 1)
        values = rng.standard_normal(shape).astype(np.float32)
        values /= np.linalg.norm(values, axis=-1, keepdims=True)  # an L2-normalised embedding
        return values.astype(self.dtype)


class SimulatedSession:
    """An ``InferenceSession`` stand-in: the real session's inputs and outputs, a simulated
    device's time, outputs of the right shape and dtype (values drawn at random)."""

    def __init__(self, session: ort.InferenceSession, device: SimulatedDevice) -> None:
        self.real = session
        self.device = device
        self._outputs = {
            o.name: _Output(o.name, list(o.shape), str(o.type), seed=i)
            for i, o in enumerate(session.get_outputs())
        }

    def get_inputs(self) -> Any:
        return self.real.get_inputs()

    def get_outputs(self) -> Any:
        return self.real.get_outputs()

    def get_providers(self) -> list[str]:
        return [PROVIDER]

    def run(
        self, output_names: Sequence[str] | None, feeds: Mapping[str, Any], *_: Any
    ) -> list[np.ndarray]:
        first = np.asarray(next(iter(feeds.values())))
        batch = int(first.shape[0]) if first.ndim else 1
        width = int(first.shape[1]) if first.ndim > 1 else 1
        self.device.run(batch)
        names = list(output_names) if output_names else list(self._outputs)
        return [self._outputs[n].draw(batch, width) for n in names]


_DEVICES: dict[DeviceSpec, SimulatedDevice] = {}
_DEVICES_LOCK = threading.Lock()


def device_for(spec: DeviceSpec) -> SimulatedDevice:
    """The process's one device for ``spec``: every model it loads shares it."""
    with _DEVICES_LOCK:
        dev = _DEVICES.get(spec)
        if dev is None:
            dev = _DEVICES[spec] = SimulatedDevice(spec)
        return dev


def wrap_if_enabled(session: ort.InferenceSession, model: str) -> ort.InferenceSession:
    """``session``, or (``INFERQ_BENCH_SIMULATED_DEVICE`` set: benchmark only) a simulated
    device in its place, said loudly in the log."""
    spec = spec_from_env()
    if spec is None:
        return session
    log.warning(
        "SIMULATED DEVICE: %s runs on a simulated accelerator, not ONNX Runtime; its results "
        "are not the model's (benchmark only: %s is set)",
        model,
        ENV,
        extra={
            "model": model,
            "simulated_device": {
                "t0_ms": spec.t0_s * 1000.0,
                "k_ms": spec.k_s * 1000.0,
                "lockfile": str(spec.lockfile) if spec.lockfile else None,
            },
        },
    )
    return cast(ort.InferenceSession, SimulatedSession(session, device_for(spec)))
