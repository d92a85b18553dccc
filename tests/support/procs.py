"""Start real API servers and Celery workers as child processes; stop them by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process with its log file; ``stop`` ends exactly this PID."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, name: str) -> None:
        self.name = name
        self.log = log
        self._fh = log.open("ab")
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if needle in self.output():
                return
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.output()[-4000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"{self.name}: no {needle!r} in {timeout}s:\n{self.output()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL, no goodbye: what a crashed host looks like."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout: float = 15) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(10)
        self._fh.close()


def start_worker(
    env: dict[str, str],
    log: Path,
    *,
    queues: list[str],
    concurrency: int = 16,
    name: str = "worker",
) -> Proc:
    argv = [
        str(BIN / "celery"),
        "-A",
        "workers.celery_app:celery_app",
        "worker",
        "--pool",
        "threads",
        "-c",
        str(concurrency),
        "-Q",
        ",".join(queues),
        "--without-mingle",
        "--without-gossip",
        "-n",
        f"{name}-{os.getpid()}-{free_port()}@%h",
        "--loglevel",
        "INFO",
    ]
    p = Proc(argv, env, log, name)
    p.wait_for_log(" ready.", timeout=90)
    return p


def start_beat(env: dict[str, str], log: Path, schedule_file: Path) -> Proc:
    argv = [
        str(BIN / "celery"),
        "-A",
        "workers.celery_app:celery_app",
        "beat",
        "-s",
        str(schedule_file),
        "--loglevel",
        "INFO",
    ]
    return Proc(argv, env, log, "beat")


def start_api(env: dict[str, str], log: Path) -> tuple[Proc, str]:
    port = free_port()
    argv = [
        str(BIN / "uvicorn"),
        "api.main:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
    ]
    p = Proc(argv, env, log, "api")
    base = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return p, base
        except httpx.HTTPError:
            pass
        if not p.alive():
            raise RuntimeError(f"api exited:\n{p.output()[-4000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"api did not answer:\n{p.output()[-4000:]}")
