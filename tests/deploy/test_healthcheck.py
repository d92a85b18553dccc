"""``inferq healthcheck``: against a real API, worker and beat, and what it reads of PID 1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.cli.health import check_beat, role_of, worker_node
from app.settings import build_settings
from tests.conftest import StackFactory
from workers.celery_app import create_celery

INFERQ = str(Path(sys.executable).parent / "inferq")


def test_role_of_the_main_process() -> None:
    assert (
        role_of(["/venv/bin/celery", "-A", "workers.celery_app:celery_app", "worker"]) == "worker"
    )
    assert role_of(["/venv/bin/celery", "-A", "workers.celery_app:celery_app", "beat"]) == "beat"
    assert role_of(["/venv/bin/uvicorn", "api.main:create_app", "--factory"]) == "api"
    assert role_of(["/venv/bin/inferq", "release"]) is None
    assert worker_node(["celery", "worker", "-n", "inferq-1@%h"]).startswith("inferq-1@")
    assert "%h" not in worker_node(["celery", "worker", "--hostname=w@%h"])


def test_beat_file_age(tmp_path: Path) -> None:
    argv = ["celery", "beat", "-s", "sched"]
    assert check_beat(argv, cwd=tmp_path) is not None  # no file yet
    (tmp_path / "sched.db").write_bytes(b"")
    assert check_beat(argv, cwd=tmp_path) is None
    old = time.time() - 3600
    os.utime(tmp_path / "sched.db", (old, old))
    assert "not written" in str(check_beat(argv, cwd=tmp_path))


def test_task_events_setting() -> None:
    assert not create_celery(build_settings()).conf.worker_send_task_events
    on = create_celery(build_settings(task_events=True)).conf
    assert on.worker_send_task_events and on.task_send_sent_event


def healthcheck(role: str, pid: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [INFERQ, "healthcheck", role, "--pid", str(pid)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_healthchecks_of_a_running_stack(make_stack: StackFactory, redis_url: str) -> None:
    stack = make_stack(redis_url, beat=True)
    api, worker, beat = stack.api, stack.procs[0], stack.procs[1]
    assert api is not None and worker.name == "worker0" and beat.name == "beat"
    port = stack.base_url.rsplit(":", 1)[1]
    # the API is checked on the port its command line names
    assert f"--port {port}" in " ".join(Path(f"/proc/{api.pid}/cmdline").read_text().split("\0"))
    for role, proc in (("api", api), ("worker", worker)):
        done = healthcheck(role, proc.pid, stack.env)
        assert done.returncode == 0, (role, done.stdout, done.stderr)
    deadline = time.monotonic() + 30
    while (done := healthcheck("beat", beat.pid, stack.env)).returncode != 0:
        assert time.monotonic() < deadline, done.stderr
        time.sleep(1)
    worker.stop()
    done = healthcheck("worker", worker.pid, stack.env)
    assert done.returncode == 1 and "did not answer" in done.stderr
