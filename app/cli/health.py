"""``inferq healthcheck [api|worker|beat]``: the container health check of each process.

One command for every role, so the image's ``HEALTHCHECK`` fits whatever the container runs:
without a role it reads the command line of the container's main process (``/proc/1``) and
checks what that is. Exit status 0 is healthy, 1 is not (what Docker expects).

- ``api``: ``GET /readyz`` on the port the API listens on (database and broker answer);
- ``worker``: ``celery inspect ping`` of that worker's node name (its consumer answers over the
  broker, which a hung or disconnected worker does not);
- ``beat``: beat's schedule file (its ``-s``) was written recently (beat writes it as it sends tasks, at
  least every few minutes; a beat that stopped ticking leaves it stale).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

BEAT_MAX_AGE_S = 300.0
"""Celery beat syncs its schedule file at least every 3 minutes while it sends tasks."""


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _option(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg in names and i + 1 < len(argv):
            return argv[i + 1]
        for name in names:
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def role_of(argv: list[str]) -> str | None:
    """``api``, ``worker`` or ``beat`` from a process's command line (None: something else)."""
    words = [Path(a).name for a in argv]
    if "celery" in words or "inferq" in words:
        for role in ("worker", "beat", "api"):
            if role in words:
                return role
    if "uvicorn" in words:
        return "api"
    return None


def check_api(argv: list[str], timeout: float = 5.0) -> str | None:
    """None when ``/readyz`` answers 200, else what went wrong."""
    import httpx

    port = _option(argv, "--port") or "8000"
    try:
        resp = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=timeout)
    except httpx.HTTPError as exc:
        return f"/readyz: {exc!r}"
    return None if resp.status_code == 200 else f"/readyz answered {resp.status_code}"


def worker_node(argv: list[str]) -> str:
    """The worker's Celery node name (its ``-n``, with ``%h`` as Celery expands it)."""
    name = _option(argv, "-n", "--hostname") or "celery@%h"
    host = socket.gethostname()
    return name.replace("%h", host).replace("%n", host.split(".")[0])


def check_worker(argv: list[str], timeout: float = 5.0) -> str | None:
    """None when the worker's node answers a ping over the broker."""
    node = worker_node(argv)
    celery = Path(sys.executable).parent / "celery"
    cmd = [str(celery) if celery.exists() else "celery", "-A", "workers.celery_app:celery_app"]
    cmd += ["inspect", "ping", "-d", node, "--timeout", str(timeout)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30)
    if done.returncode == 0 and "pong" in done.stdout:
        return None
    return f"{node} did not answer a ping: {(done.stdout + done.stderr).strip()[-300:]}"


def check_beat(argv: list[str], *, cwd: Path, max_age: float = BEAT_MAX_AGE_S) -> str | None:
    """None when beat's schedule file (its ``-s``; any of its dbm files) changed within
    ``max_age`` seconds."""
    schedule = Path(_option(argv, "-s", "--schedule") or "celerybeat-schedule")
    if not schedule.is_absolute():
        schedule = cwd / schedule
    files = list(schedule.parent.glob(schedule.name + "*"))
    if not files:
        return f"no beat schedule file {schedule}"
    age = time.time() - max(f.stat().st_mtime for f in files)
    return None if age <= max_age else f"{schedule} not written for {age:.0f} s"


def healthcheck(
    role: Annotated[
        str | None, typer.Argument(help="api, worker or beat (default: what PID 1 runs)")
    ] = None,
    pid: Annotated[int, typer.Option(help="The process to check.")] = 1,
) -> None:
    """Exit 0 when this container's process is healthy (Docker's HEALTHCHECK)."""
    argv = _argv(pid)
    role = role or role_of(argv)
    if role == "api":
        problem = check_api(argv)
    elif role == "worker":
        problem = check_worker(argv)
    elif role == "beat":
        problem = check_beat(argv, cwd=Path(f"/proc/{pid}/cwd"))
    elif role is None:
        problem = None  # a one-off command (release, the CLI): nothing long-running to check
    else:
        raise typer.BadParameter(f"unknown role {role!r}")
    if problem:
        typer.echo(f"unhealthy ({role}): {problem}", err=True)
        raise typer.Exit(1)
    typer.echo(f"healthy ({role or 'no long-running process'})")
