"""Sampling profiles of the API and worker processes with py-spy, summarised for the report.

py-spy samples only the thread holding the GIL (``--gil``): that is where Python spends CPU;
native work that releases the GIL (ONNX Runtime's kernels, waiting on a socket) is not in it,
and threads blocked on a lock are not counted as busy.
``py-spy record --format raw`` writes collapsed stacks (``frame;frame;... count``); the summary
attributes each sample to the package of its innermost frame ("self" time) and counts every
function on the stack once ("inclusive" time), which is what "where does the time go" asks.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


def py_spy() -> str | None:
    """The py-spy executable of this environment, or on ``PATH``; None if not installed."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class PySpy:
    """``with PySpy(pid, out):`` samples ``pid`` (non-blocking) until the block ends."""

    def __init__(self, pid: int, out: Path, *, rate: int = 250) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = out.with_suffix(".log")

    def __enter__(self) -> PySpy:
        exe = py_spy()
        if exe is None:
            return self
        argv = [
            exe,
            "record",
            "--pid",
            str(self.pid),
            "--rate",
            str(self.rate),
            "--format",
            "raw",
            "--output",
            str(self.out),
            "--nonblocking",
            "--gil",
        ]
        with self.log.open("wb") as fh:
            self.proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.out.is_file():  # py-spy's chatter is only worth keeping when it failed
            self.log.unlink(missing_ok=True)


OWN = ("app", "api", "workers", "bench")


def _package(path: str) -> str:
    """``sqlalchemy/orm/x.py`` -> ``sqlalchemy``; ``app/predictions/executor.py`` -> ``app.predictions.executor``.

    py-spy names files relative to their ``sys.path`` entry; a bare ``threading.py`` is stdlib.
    """
    parts = path.removesuffix(".py").split("/")
    if parts[0] in OWN:
        return ".".join(parts)
    if len(parts) == 1:
        return f"stdlib {parts[0]}"
    return parts[0]


def summarize(raw_file: Path, *, top: int = 15) -> dict[str, Any]:
    """Where the samples go, in % of all samples.

    ``self_by_package``: the package of the innermost frame; ``self_by_function``: the innermost
    function; ``inclusive_own``: inferq's own functions (``app``/``api``/``workers``) counted
    once per sample they are on the stack of.
    """
    if not raw_file.is_file():
        return {"error": f"no profile at {raw_file}"}
    by_package: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw_file.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        frames = [m for f in stack.split(";") if (m := FRAME.match(f.strip()))]
        if not frames:
            continue
        count = int(count_s)
        total += count
        leaf = frames[-1]
        by_package[_package(leaf["file"])] += count
        by_function[f"{_package(leaf['file'])}:{leaf['func']}"] += count
        own = {f"{_package(m['file'])}:{m['func']}" for m in frames if m["file"].startswith(OWN)}
        for name in own:
            inclusive[name] += count

    def pct(c: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100.0 * v / total, 1)) for k, v in c.most_common(top)] if total else []

    return {
        "samples": total,
        "self_by_package": pct(by_package),
        "self_by_function": pct(by_function),
        "inclusive_own": pct(inclusive),
    }
