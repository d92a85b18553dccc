"""Schedules end to end: real API, beat, worker processes, Redis and Postgres.

Beat ticks every second here (``INFERQ_SCHEDULE_TICK_SECONDS=1``); the schedules are created
through the API while beat is already running, so nothing is restarted to pick them up.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import create_engine, text

from app import __version__
from tests.conftest import Stack

pytestmark = pytest.mark.slow

TEXTS = [
    "My card was charged twice for the same order and I need a refund",
    "The app crashes whenever I open the settings page on Android",
    "I cannot log in: the password reset email never arrives",
    "Where is my package? Tracking has not changed for a week",
]


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def runs(c: httpx.Client, sid: str) -> list[dict[str, Any]]:
    r = c.get(f"/v1/schedules/{sid}/runs?limit=50")
    assert r.status_code == 200, r.text
    return list(r.json()["runs"])[::-1]  # oldest first


def final_job(c: httpx.Client, job_id: str, timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = c.get(f"/v1/jobs/{job_id}").json()
        return None if body["status"] in ("queued", "running") else body

    return dict(wait_for(f"job {job_id} to end", done, timeout))


def drop(path: Path, data: bytes) -> Path:
    """Put a file in place the way a producer should: write aside, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def stack_for(make_stack: Callable[..., Stack], redis_url: str, data: Path) -> Stack:
    data.mkdir(parents=True, exist_ok=True)
    return make_stack(
        redis_url,
        beat=True,
        schedule_tick_seconds=1,
        source_roots=str(data),
        watch_settle_seconds=0.5,
    )


@pytest.mark.timeout(200)  # waits for a minute boundary
def test_cron_schedules_fire_by_themselves_disabled_ones_do_not(
    make_stack: Callable[..., Stack], redis_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    stack = stack_for(make_stack, redis_url, data)
    src = drop(
        data / "in" / "tickets.jsonl",
        jsonl([{"custom_id": f"t{i}", "text": TEXTS[i % 4]} for i in range(40)])
        + b'{"custom_id": "bad", "text": ""}\n',
    )
    spec = {
        "cron": "* * * * *",
        "timezone": "Europe/Berlin",
        "model": "ticket-triage",
        "source": {"type": "file", "path": "in/*.jsonl"},
        "sink": {"type": "file", "path": "out/{schedule_id}-{run_id}.jsonl"},
    }
    with stack.client() as c:
        a = c.post("/v1/schedules", json={"name": "every minute", **spec}).json()
        b = c.post("/v1/schedules", json={"name": "paused", **spec}).json()
        assert c.patch(f"/v1/schedules/{b['id']}", json={"enabled": False}).status_code == 200

        # run now: a job with full provenance, and the file sink once it ends
        manual = c.post(f"/v1/schedules/{a['id']}/run").json()
        run = wait_for(
            "the manual run to make its job",
            lambda: next((r for r in runs(c, a["id"]) if r["status"] == "submitted"), None),
            30,
        )
        assert run["id"] == manual["id"]
        job = final_job(c, run["job_id"])
        assert job["status"] == "succeeded"
        assert job["request_counts"]["total"] == 41
        assert job["request_counts"]["failed"] == 1
        assert job["schedule_id"] == a["id"]
        prov = job["provenance"]
        assert prov["schedule"]["id"] == a["id"]
        assert prov["schedule"]["run_id"] == run["id"]
        assert prov["schedule"]["trigger"] == "manual"
        assert prov["data"]["files"] == [
            {
                "path": str(src),
                "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
                "bytes": src.stat().st_size,
                "rows": 41,
            }
        ]
        models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert prov["model"]["name"] == "ticket-triage"
        assert (
            prov["model"]["version"] == models["ticket-triage"]["version"] == job["model_version"]
        )
        assert len(prov["model"]["sha256"]) == 64
        assert prov["inferq_version"] == __version__
        assert prov["schedule"]["cron"] == "* * * * *"
        assert prov["schedule"]["timezone"] == "Europe/Berlin"

        sink = wait_for(
            "the sink to be written",
            lambda: next(
                (
                    r["sink"]
                    for r in runs(c, a["id"])
                    if r.get("sink", {}).get("status") == "written"
                ),
                None,
            ),
            30,
        )
        out = data / "out" / f"{a['id']}-{run['id']}.jsonl"
        lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
        assert [x["custom_id"] for x in lines] == [f"t{i}" for i in range(40)] + ["bad"]
        assert lines[0]["output"]["category"] == "billing"
        assert lines[-1]["error"]["code"] == "invalid_input"
        assert sink["status"] == "written"

        # the cron: within the next minute it fires by itself; the disabled twin does not
        cron_run = wait_for(
            "the every-minute schedule to fire",
            lambda: next(
                (r for r in runs(c, a["id"]) if r["trigger"] == "cron" and r.get("job_id")),
                None,
            ),
            75,
        )
        assert cron_run["scheduled_for"].endswith(":00Z")
        assert final_job(c, cron_run["job_id"])["provenance"]["schedule"]["trigger"] == "cron"
        assert runs(c, b["id"]) == []
        paused = c.get(f"/v1/schedules/{b['id']}").json()
        assert paused["enabled"] is False
        assert paused["next_run_at"] is None
        after = c.get(f"/v1/schedules/{a['id']}").json()
        assert after["next_run_at"] > cron_run["scheduled_for"]


def test_a_watched_file_is_scored_once_across_restarts(
    make_stack: Callable[..., Stack], redis_url: str, tmp_path: Path, pg_url: str
) -> None:
    data = tmp_path / "data"
    stack = stack_for(make_stack, redis_url, data)
    with stack.client() as c:
        r = c.post(
            "/v1/schedules",
            json={
                "name": "inbox",
                "model": "churn-risk",
                "source": {"type": "file", "path": "inbox/*.csv", "watch": True},
            },
        )
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        header = "custom_id," + ",".join(f"f{i}" for i in range(12)) + "\n"
        rows = "".join(
            f"r{n}," + ",".join(str(0.1 * i) for i in range(12)) + "\n" for n in range(25)
        )
        first = drop(data / "inbox" / "2026-11-25.csv", (header + rows).encode())

        run = wait_for(
            "the new file's run",
            lambda: next((r for r in runs(c, sid) if r.get("job_id")), None),
            30,
        )
        assert (run["trigger"], run["file_path"]) == ("file", str(first))
        job = final_job(c, run["job_id"])
        assert (job["status"], job["request_counts"]["succeeded"]) == ("succeeded", 25)
        assert (
            job["provenance"]["data"]["files"][0]["sha256"]
            == hashlib.sha256(first.read_bytes()).hexdigest()
        )

        # restart the watcher's processes: beat and the worker
        for p in [p for p in stack.procs if p.name in ("beat", "worker0")]:
            p.stop()
            stack.procs.remove(p)
        stack.start_worker("worker1")
        beat = stack.start_beat()
        sent_before = beat.output().count("inferq.schedules_tick")
        os.utime(first)  # touched, same content: still not new
        wait_for(
            "the new beat's ticks",
            lambda: beat.output().count("inferq.schedules_tick") >= sent_before + 4,
            30,
        )
        time.sleep(1)  # the last tick is carried out
        assert len(runs(c, sid)) == 1

        second = drop(
            data / "inbox" / "2026-11-26.csv", (header + rows[: rows.index("\n") + 1]).encode()
        )
        wait_for(
            "the second file's run",
            lambda: len(runs(c, sid)) == 2 and runs(c, sid)[1].get("job_id"),
            30,
        )
        assert runs(c, sid)[1]["file_path"] == str(second)
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        jobs = conn.execute(text("SELECT count(*) FROM jobs WHERE schedule_id = :s"), {"s": sid})
        files = conn.execute(
            text("SELECT count(*) FROM watched_files WHERE schedule_id = :s"), {"s": sid}
        )
        assert (jobs.scalar_one(), files.scalar_one()) == (2, 2)
    engine.dispose()


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INFERQ_API_URL": stack.base_url}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "schedules", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_sql_source_with_watermark_and_table_sink_through_the_cli(
    make_stack: Callable[..., Stack], redis_url: str, tmp_path: Path, pg_url: str
) -> None:
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS e2e_tickets, e2e_scores"))
        conn.execute(text("CREATE TABLE e2e_tickets (id int, body text, created_at timestamptz)"))
        for i in range(6):
            conn.execute(
                text("INSERT INTO e2e_tickets VALUES (:i, :b, now() + make_interval(secs => :i))"),
                {"i": i, "b": TEXTS[i % 4]},
            )
    stack = stack_for(make_stack, redis_url, tmp_path / "data")
    query = (
        "SELECT id AS custom_id, body AS text, created_at FROM e2e_tickets "
        "WHERE created_at > :watermark ORDER BY created_at"
    )
    made = cli(
        stack,
        "create",
        "tickets",
        "--model",
        "ticket-triage",
        "--cron",
        "0 3 * * *",
        "--query",
        query,
        "--watermark-column",
        "created_at",
        "--sink",
        '{"type": "table", "table": "e2e_scores"}',
    )
    assert made.returncode == 0, made.stderr
    sid = orjson.loads(made.stdout)["id"]

    first = cli(stack, "run-now", "tickets", "--wait", "--timeout", "60")
    assert first.returncode == 0, first.stderr
    run = orjson.loads(first.stdout)
    assert (run["status"], run["provenance"]["data"]["rows"]) == ("submitted", 6)
    with stack.client() as c:
        assert final_job(c, run["job_id"])["status"] == "succeeded"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO e2e_tickets VALUES (6, 'refund my double charge', now() + interval '1 hour')"
            )
        )
    second = orjson.loads(cli(stack, "run-now", sid, "--wait").stdout)
    assert second["provenance"]["data"]["rows"] == 1
    assert (
        second["provenance"]["data"]["watermark_from"] == run["provenance"]["data"]["watermark_to"]
    )
    third = orjson.loads(cli(stack, "run-now", sid, "--wait").stdout)
    assert (third["status"], third["error"]) == ("skipped", "no new rows")

    def scored() -> list[Any]:
        with engine.connect() as conn:
            try:
                return list(
                    conn.execute(
                        text("SELECT custom_id, output FROM e2e_scores ORDER BY job_id, job_index")
                    ).all()
                )
            except Exception:
                return []

    rows = wait_for(
        "both runs' rows in the sink table", lambda: len(scored()) == 7 and scored(), 45
    )
    assert sorted(r[0] for r in rows) == [str(i) for i in range(7)]
    assert all("category" in r[1] for r in rows)

    listed = cli(stack, "list")
    assert "tickets" in listed.stdout and "0 3 * * *" in listed.stdout
    assert cli(stack, "disable", "tickets").stdout.startswith(f"{sid} disabled")
    bad = cli(stack, "create", "x", "--model", "nope", "--cron", "* * * * *", "--path", "a.jsonl")
    assert bad.returncode == 1
    assert "422 unknown_model: unknown model 'nope'" in bad.stderr
    assert cli(stack, "delete", "tickets").stdout.strip() == f"{sid} deleted"
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS e2e_tickets, e2e_scores"))
    engine.dispose()
