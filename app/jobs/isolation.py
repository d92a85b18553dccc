"""Running a chunk whose earlier run was lost: line by line, to find the line that kills workers.

A chunk has one lease and one attempts counter, so when its worker dies nothing says which of
its lines did it. The next run of such a chunk therefore goes through its lines one at a time
and, before each, stores which line it is about to run (``Probe.at``, in the chunk's
``results`` column, which holds nothing else until the chunk is done). If that worker dies too,
the claim after it charges the loss to that line; lines before it are known to run, and run in
full batches from then on. A line whose worker was lost ``INFERQ_MAX_ATTEMPTS`` times (the
chunk's first, batched loss counts for every line) fails with ``worker_lost`` and the rest of
the chunk runs: the chunk ends as any other, its counts reaching the job once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from app import poison
from app.runtime.adapters import Adapter

Outcome = tuple[dict[str, Any] | None, dict[str, str] | None]
RunModel = Callable[[Adapter, Sequence[Any], int], list[Outcome]]
"""(adapter, inputs, batch) -> an outcome per input (``app.jobs.runner.run_model``)."""


@dataclass(frozen=True, slots=True)
class Probe:
    """What isolated runs of a chunk found so far."""

    clear: int = 0
    """Lines before this one ran without taking a worker down (poison lines aside)."""
    at: int | None = None
    """The line running alone right now (if the worker dies, it did it)."""
    lost: dict[int, int] = field(default_factory=dict)
    """Line -> how often its worker died while it ran alone."""

    @classmethod
    def load(cls, raw: bytes | None) -> Probe:
        if not raw:
            return cls()
        body = orjson.loads(raw)
        lost = {int(k): int(v) for k, v in body.get("lost", {}).items()}
        return cls(int(body.get("clear", 0)), body.get("at"), lost)

    def dump(self) -> bytes:
        lost = {str(k): v for k, v in self.lost.items()}
        return orjson.dumps({"clear": self.clear, "at": self.at, "lost": lost})

    def charged(self) -> Probe:
        """After a lost run: the line it was running takes the blame."""
        if self.at is None:
            return self
        lost = {**self.lost, self.at: self.lost.get(self.at, 0) + 1}
        return Probe(max(self.clear, self.at), None, lost)

    def losses(self, line: int) -> int:
        """Times the worker running ``line`` was lost: the first, batched run and alone."""
        return 1 + self.lost.get(line, 0)

    @property
    def explained(self) -> int:
        """Lost runs charged to a line."""
        return sum(self.lost.values())


def run_isolated(
    adapter: Adapter,
    lines: Sequence[int],
    inputs: Sequence[Any],
    *,
    probe: Probe,
    max_attempts: int,
    run: RunModel,
    batch: int,
    save: Callable[[Probe], None],
) -> list[Outcome]:
    """Outcomes of ``inputs`` (the chunk's ``lines``, in order): lines known to run in batches,
    poison lines failed, every other line alone with ``save`` before it (see the module)."""
    outcomes: list[Outcome] = [(None, None)] * len(inputs)
    poisoned = {k for k in lines if probe.losses(k) >= max_attempts}
    known = [p for p, k in enumerate(lines) if k < probe.clear and k not in poisoned]
    for p, out in zip(known, run(adapter, [inputs[p] for p in known], batch), strict=True):
        outcomes[p] = out
    for p, k in enumerate(lines):
        if k in poisoned:
            times = probe.losses(k)
            outcomes[p] = (
                None,
                {"code": poison.WORKER_LOST, "message": poison.lost_message(times)},
            )
        elif k >= probe.clear:
            save(replace(probe, at=k))  # committed before the line runs
            outcomes[p] = run(adapter, [inputs[p]], 1)[0]
    save(replace(probe, at=None))
    return outcomes
