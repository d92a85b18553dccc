"""The README's run command on the embedded default: SQLite and a broker that needs no server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.procs import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_inferq_up_runs_everything_on_sqlite_and_a_local_broker(
    tmp_path: Path, models_dir: Path
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
    # as on a fresh clone: the defaults (SQLite file, filesystem broker) under a var/ folder
    # that does not exist yet
    var = tmp_path / "clone" / "var"
    env.update(INFERQ_VAR_DIR=str(var), INFERQ_MODELS_DIR=str(models_dir), PYTHONUNBUFFERED="1")
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "inferq"), "up", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        end = time.monotonic() + 90
        while b"listening on" not in (tmp_path / "up.log").read_bytes():
            assert proc.poll() is None and time.monotonic() < end, (tmp_path / "up.log").read_text()
            time.sleep(0.2)
        assert f"http://127.0.0.1:{port}".encode() in (tmp_path / "up.log").read_bytes()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=40) as c:
            ids = [
                c.post(
                    "/v1/predictions", json={"model": "churn-risk", "input": {"features": [i] * 12}}
                ).json()["id"]
                for i in range(5)
            ]
            for pid in ids:
                body = c.get(f"/v1/predictions/{pid}", params={"wait": 30}).json()
                assert body["status"] == "succeeded", body
            assert c.get("/readyz").json()["checks"] == {"database": "ok", "broker": "ok"}
    finally:
        os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        log.close()
    assert (var / "inferq.db").exists() and (var / "broker").is_dir()
