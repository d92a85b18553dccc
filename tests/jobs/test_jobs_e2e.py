"""Bulk jobs end to end: real API, broker, worker processes and Postgres."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db.jobs import Job, JobChunk
from app.delivery.webhook import SIGNATURE_HEADER, verify
from tests.conftest import Stack
from tests.support.receiver import Receiver

pytestmark = pytest.mark.slow

FEATURES = [0.1 * i for i in range(12)]
TEXTS = [
    "My card was charged twice for the same order and I need a refund",
    "The app crashes whenever I open the settings page on Android",
    "I cannot log in: the password reset email never arrives",
    "Where is my package? Tracking has not changed for a week",
]


def wait_final(c: httpx.Client, job_id: str, timeout: float = 90) -> dict[str, Any]:
    """Long-poll the job (``?wait=``) until it has ended or ``timeout`` has passed."""
    end = time.monotonic() + timeout
    while True:
        wait = min(30.0, max(end - time.monotonic(), 0.1))
        r = c.get(f"/v1/jobs/{job_id}", params={"wait": wait}, timeout=wait + 30)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if body["status"] not in ("queued", "running") or time.monotonic() > end:
            return body


def results(c: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    r = c.get(f"/v1/jobs/{job_id}/results")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/jsonl")
    return [orjson.loads(x) for x in r.content.splitlines()]


def test_a_10000_line_jsonl_job_with_bad_lines(
    make_stack: Callable[..., Stack], redis_url: str, receiver: Receiver
) -> None:
    stack = make_stack(redis_url)
    bad = {17: b'{"custom_id": "c17", "input": {"features": [1]}}', 5000: b"{oops", 9999: b"42"}
    lines = [
        bad.get(i) or orjson.dumps({"custom_id": f"c{i}", "input": {"features": FEATURES}})
        for i in range(10_000)
    ]
    upload = b"\n".join(lines) + b"\n"
    with stack.client() as c:
        r = c.post(
            "/v1/jobs",
            data={"model": "churn-risk", "callback_url": f"{receiver.url}/jobs"},
            files={"file": ("scores.jsonl", upload, "application/octet-stream")},
        )
        assert r.status_code == 202, r.text
        accepted = r.json()
        # a quick worker may have started it before the answer was rendered
        assert accepted["status"] in ("queued", "running") and accepted["model"] == "churn-risk"
        assert r.headers["location"] == f"/v1/jobs/{accepted['id']}"
        body = wait_final(c, accepted["id"])
        assert body["status"] == "succeeded", body
        assert body["request_counts"] == {
            "total": 10_000,
            "succeeded": 9_997,
            "failed": 3,
            "cancelled": 0,
        }
        assert body["model_version"] == "1" and body["completed_at"]
        source = body["provenance"]["source"]
        assert source["filename"] == "scores.jsonl" and source["lines"] == 10_000
        import hashlib

        assert source["sha256"] == hashlib.sha256(upload).hexdigest()

        out = results(c, accepted["id"])
        assert [o["custom_id"] for o in out] == [
            None if i in (5000, 9999) else f"c{i}" for i in range(10_000)
        ]
        assert out[17]["error"]["code"] == "invalid_input"
        assert out[5000]["error"]["message"].startswith("the line is not valid JSON")
        assert out[9999]["error"]["message"] == "the line must be a JSON object"
        assert all(0 <= o["output"]["probability"] <= 1 for o in out[:17])

        csv_lines = c.get(f"/v1/jobs/{accepted['id']}/results", params={"format": "csv"}).text
        rows = csv_lines.splitlines()
        assert rows[0] == "index,custom_id,probability,error_code,error_message"
        assert len(rows) == 10_001 and rows[18].startswith("17,c17,,invalid_input,")

    (hook,) = receiver.wait_for(lambda reqs: len(reqs) >= 1)
    assert hook.path == "/jobs"
    assert verify(
        stack.settings().webhook_secret, hook.headers[SIGNATURE_HEADER.lower()], hook.body
    )
    assert hook.json()["id"] == accepted["id"] and hook.json()["status"] == "succeeded"
    assert hook.json()["request_counts"]["failed"] == 3


def test_csv_upload_inline_inputs_and_cli(
    make_stack: Callable[..., Stack],
    amqp_url: str,
    tmp_path: Any,
    pg_sessions: sessionmaker[Session],
) -> None:
    stack = make_stack(amqp_url)
    csv_body = "custom_id,text\n" + "".join(
        f'{i},"{TEXTS[i % 4]}, ticket {i}"\n' for i in range(40)
    )
    with stack.client() as c:
        r = c.post(
            "/v1/jobs",
            data={"model": "ticket-triage"},
            files={"file": ("tickets.csv", csv_body.encode(), "text/csv")},
        )
        assert r.status_code == 202, r.text
        body = wait_final(c, r.json()["id"])
        assert body["request_counts"]["succeeded"] == 40
        out = results(c, body["id"])
        assert [o["custom_id"] for o in out] == [str(i) for i in range(40)]
        assert out[0]["output"]["category"]

        inline = {
            "model": "minilm-embed",
            "inputs": [{"custom_id": "x", "input": {"text": "hello"}}, {"text": "world"}, {}],
        }
        r = c.post("/v1/jobs", json=inline)
        assert r.status_code == 202, r.text
        body = wait_final(c, r.json()["id"])
        assert body["request_counts"] == {"total": 3, "succeeded": 2, "failed": 1, "cancelled": 0}
        assert body["provenance"]["source"]["type"] == "inline"
        out = results(c, body["id"])
        assert len(out[1]["output"]["embedding"]) == 384
        assert out[2]["error"] == {"code": "invalid_input", "message": "input.text is required"}

    # a client that goes away half-way through its upload leaves nothing behind
    line = b'{"features": [1,2,3,4,5,6,7,8,9,10,11,12]}\n'
    with _half_upload(stack.base_url, line * 100_000):
        end = time.monotonic() + 10
        while not _unsealed(pg_sessions) and time.monotonic() < end:
            time.sleep(0.05)
        assert _unsealed(pg_sessions), "the API should store chunks while the upload goes on"
    end = time.monotonic() + 10
    while _unsealed(pg_sessions) and time.monotonic() < end:
        time.sleep(0.1)
    assert _unsealed(pg_sessions) == []

    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps({"features": FEATURES}) + b"\n" for _ in range(500)))
    run_cli = _cli(stack)
    done = run_cli("jobs", "submit", str(src), "--model", "churn-risk", "--wait")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "succeeded" in done.stdout and "500" in done.stdout
    job_id = done.stdout.split("job ")[1].split()[0]
    got = run_cli("jobs", "get", job_id)
    assert orjson.loads(got.stdout)["request_counts"]["succeeded"] == 500
    out_file = tmp_path / "out.csv"
    saved = run_cli("jobs", "results", job_id, "-o", str(out_file), "--format", "csv")
    assert saved.returncode == 0, saved.stderr
    assert len(out_file.read_text().splitlines()) == 501


def _cli(stack: Stack) -> Callable[..., Any]:
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", *args, "--api-url", stack.base_url],
            capture_output=True,
            text=True,
            timeout=60,
            env={**stack.env, "COLUMNS": "200"},
        )

    return run


def test_errors_cancel_and_tenancy(make_stack: Callable[..., Stack], redis_url: str) -> None:
    """No worker runs here, so a job stays queued and can be cancelled."""
    stack = make_stack(
        redis_url,
        workers=0,
        api_keys='{"k1": "t1", "k2": "t2"}',
        max_body_bytes=20_000,
        max_job_upload_bytes=50_000,
    )
    one = orjson.dumps({"features": FEATURES}) + b"\n"
    with stack.client(headers={"Authorization": "Bearer k1"}) as c:

        def post(**kw: Any) -> httpx.Response:
            return c.post("/v1/jobs", **kw)

        def error(r: httpx.Response, status: int) -> dict[str, Any]:
            assert r.status_code == status, r.text
            err: dict[str, Any] = r.json()["error"]
            return err

        file = {"file": ("a.jsonl", one, "application/jsonl")}
        e = error(post(data={"model": "nope"}, files=file), 422)
        assert e["code"] == "unknown_model" and "nope" in e["message"]
        e = error(post(data={"model": "churn-risk"}, files={"file": ("a.jsonl", b"", None)}), 422)
        assert e == {"code": "empty_input", "message": "a.jsonl has no input lines"}
        e = error(
            post(data={"model": "churn-risk"}, files={"file": ("a.txt", one, "text/plain")}), 422
        )
        assert e["code"] == "unsupported_format" and "'a.txt'" in e["message"]
        assert "text/plain" in e["message"]
        e = error(post(data={"model": "churn-risk"}, files={"file": ("a.csv", one, None)}), 422)
        assert "the CSV header lacks column(s)" in e["message"]
        e = error(
            post(data={"model": "churn-risk"}, files={"file": ("a.jsonl", b"a,b\n1,2", None)}), 422
        )
        assert e["code"] == "unsupported_format" and "is not JSONL" in e["message"]
        e = error(post(data={"model": "churn-risk", "other": "x"}, files=file), 422)
        assert e["message"].startswith("unknown form field 'other'")
        e = error(post(data={"model": "churn-risk"}, files={"upload": ("a.jsonl", one, None)}), 422)
        assert "send it as 'file'" in e["message"]
        no_file = _form([("model", None, b"churn-risk")])
        e = error(post(content=no_file, headers={"content-type": FORM}), 422)
        assert e["message"].startswith("the form has no 'file' part")
        e = error(post(files={"file": ("a.jsonl", one, None)}), 422)
        assert e["message"] == "the form has no 'model' field"
        e = error(
            post(data={"model": "churn-risk"}, files={"file": ("a.jsonl", one * 1000, None)}), 413
        )
        assert e["code"] == "payload_too_large"
        e = error(post(json={"model": "churn-risk", "inputs": [{"features": FEATURES}] * 300}), 413)
        assert e["code"] == "payload_too_large"
        e = error(post(json={"model": "churn-risk", "inputs": []}), 422)
        assert e["message"].startswith("inputs:")
        e = error(post(content=b"hi", headers={"content-type": "text/plain"}), 422)
        assert e["code"] == "unsupported_format"

        # the model field may come after the file (spooled, then read)
        r = c.post(
            "/v1/jobs",
            content=_form([("file", "late.jsonl", one * 3), ("model", None, b"churn-risk")]),
            headers={"content-type": FORM},
        )
        assert r.status_code == 202, r.text
        assert r.json()["request_counts"]["total"] == 3

        job = post(data={"model": "churn-risk"}, files=file).json()
        e = error(c.get(f"/v1/jobs/{job['id']}/results"), 409)
        assert e["code"] == "job_not_finished"
        # ?wait= on a job that does not end: held for the wait, then its live state
        t0 = time.monotonic()
        held = c.get(f"/v1/jobs/{job['id']}", params={"wait": 0.6})
        assert held.status_code == 200 and held.json()["status"] == "queued"
        assert time.monotonic() - t0 >= 0.55
        for bad in (31, -1, "soon"):
            e = error(c.get(f"/v1/jobs/{job['id']}", params={"wait": bad}), 422)
            assert e["code"] == "invalid_input" and "wait" in e["message"]
        with stack.client(headers={"Authorization": "Bearer k2"}) as other:
            assert error(other.get(f"/v1/jobs/{job['id']}"), 404)["code"] == "not_found"
            r = other.get(f"/v1/jobs/{job['id']}", params={"wait": 5})
            assert error(r, 404)["code"] == "not_found"
            assert error(other.post(f"/v1/jobs/{job['id']}/cancel"), 404)["code"] == "not_found"
            assert error(other.get(f"/v1/jobs/{job['id']}/results"), 404)["code"] == "not_found"
            assert other.get("/v1/jobs").json() == {"jobs": []}
        assert error(c.get("/v1/jobs/job_nope"), 404)["code"] == "not_found"
        # a long-poll in flight when the job ends answers with its final state, not at its wait
        with ThreadPoolExecutor(1) as pool:
            polled = pool.submit(
                lambda: c.get(f"/v1/jobs/{job['id']}", params={"wait": 25}, timeout=60)
            )
            time.sleep(0.5)
            assert not polled.done()
            r = c.post(f"/v1/jobs/{job['id']}/cancel")
            assert r.status_code == 200 and r.json()["status"] == "cancelled"
            ended = polled.result(timeout=15)
        assert ended.status_code == 200 and ended.json()["status"] == "cancelled"
        assert r.json()["request_counts"]["cancelled"] == 1
        assert error(c.post(f"/v1/jobs/{job['id']}/cancel"), 409)["code"] == "not_cancellable"
        out = results(c, job["id"])
        assert out == [
            {
                "index": 0,
                "custom_id": None,
                "error": {
                    "code": "cancelled",
                    "message": "the job was cancelled before this input ran",
                },
            }
        ]
        assert error(c.get(f"/v1/jobs/{job['id']}/results", params={"format": "xml"}), 422)
        listed = c.get("/v1/jobs").json()["jobs"]
        assert listed[0]["id"] == job["id"]
        assert all(j["request_counts"]["total"] > 0 for j in listed), "a half upload is listed"


def _unsealed(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as s:
        return list(s.scalars(select(JobChunk.job_id).join(Job).where(Job.sealed.is_(False))).all())


@contextlib.contextmanager
def _half_upload(base_url: str, payload: bytes) -> Iterator[None]:
    """Send the start of a multipart upload and hang up at the end of the block."""
    url = urlsplit(base_url)
    head = _form([("model", None, b"churn-risk")])[: -len(f"--{BOUNDARY}--\r\n")]
    part = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
    )
    body = head + part.encode() + payload
    request = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Content-Type: {FORM}\r\nContent-Length: {len(body) + 10_000}\r\n\r\n"
    ).encode()
    with socket.create_connection((url.hostname or "", url.port or 80)) as sock:
        sock.sendall(request + body)
        yield


BOUNDARY = "inferq-test-boundary"
FORM = f"multipart/form-data; boundary={BOUNDARY}"


def _form(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def test_sigkilled_worker_mid_job_loses_and_duplicates_nothing(
    make_stack: Callable[..., Stack], amqp_url: str, pg_sessions: sessionmaker[Session]
) -> None:
    stack = make_stack(
        amqp_url, beat=True, lease_seconds=3, requeue_after_seconds=4, job_chunk_lines=64
    )
    n = 1500
    lines = b"".join(
        orjson.dumps({"custom_id": f"t{i}", "text": f"{TEXTS[i % 4]} (case {i})"}) + b"\n"
        for i in range(n)
    )
    with stack.client() as c:
        r = c.post(
            "/v1/jobs", data={"model": "minilm-embed"}, files={"file": ("t.jsonl", lines, None)}
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        end = time.monotonic() + 60
        while c.get(f"/v1/jobs/{job_id}").json()["request_counts"]["succeeded"] < 64:
            assert time.monotonic() < end
            time.sleep(0.05)
        stack.procs[0].kill()
        killed_at = c.get(f"/v1/jobs/{job_id}").json()
        assert killed_at["request_counts"]["succeeded"] < n, "finished before the kill"
        stack.start_worker("replacement")
        body = wait_final(c, job_id, timeout=150)
        assert body["status"] == "succeeded", body
        assert body["request_counts"] == {"total": n, "succeeded": n, "failed": 0, "cancelled": 0}
        out = results(c, job_id)
    assert [o["custom_id"] for o in out] == [f"t{i}" for i in range(n)]
    with pg_sessions() as s:
        chunks = s.execute(select(JobChunk.status, JobChunk.attempts, JobChunk.succeeded)).all()
    assert {st for st, _, _ in chunks} == {"done"} and sum(x for _, _, x in chunks) == n
    assert max(a for _, a, _ in chunks) >= 2, "no chunk was taken over from the killed worker"
