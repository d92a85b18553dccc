"""``app.client`` against running stacks (API and worker processes on real Postgres and Redis):
predictions and jobs, sync and async, and ``Retry-After`` honoured against the API's own 429
(a tenant allowed one request a second)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.client import ApiError, AsyncClient, Client, Job, Retries
from tests.conftest import Stack, StackFactory

pytestmark = pytest.mark.slow

KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}
FEATURES = [0.5] * 12
TICKET = {"text": "I was charged twice for my subscription this month"}


@pytest.fixture(scope="module")
def stack(module_stacks: StackFactory, redis_url: str) -> Stack:
    return module_stacks(redis_url, api_keys=orjson.dumps(KEYS).decode())


@pytest.fixture(scope="module")
def idle(module_stacks: StackFactory, redis_url: str) -> Stack:
    """No worker: what is submitted stays queued."""
    return module_stacks(redis_url, workers=0)


@pytest.fixture(scope="module")
def slow_tenant(module_stacks: StackFactory, redis_url: str) -> Stack:
    return module_stacks(redis_url, tenant_limits='{"default": {"rate": 1, "burst": 1}}')


def test_predictions_sync(stack: Stack, idle: Stack) -> None:
    with Client(stack.base_url, "key-a") as c:
        assert {m["name"] for m in c.models()} >= {"minilm-embed", "ticket-triage", "churn-risk"}
        p = c.predict("ticket-triage", TICKET, metadata={"ticket": 7})
        assert p.is_final and p.status == "succeeded" and p.metadata == {"ticket": 7}
        assert p.output is not None and "category" in p.output and p.completed_at is not None
        many = c.submit_many("churn-risk", [{"features": FEATURES}] * 3, idempotency_key="k-3")
        assert [x.status for x in many] == ["queued"] * 3
        again = c.submit_many("churn-risk", [{"features": FEATURES}] * 3, idempotency_key="k-3")
        assert [x.id for x in again] == [x.id for x in many]  # the key replays
        done = [c.wait(x.id, timeout=30) for x in many]
        assert all(0 <= d.output["probability"] <= 1 for d in done if d.output)  # type: ignore[index]
        assert c.get(many[0].id).status == "succeeded"
        with Client(stack.base_url, "key-b") as b, pytest.raises(ApiError) as other:
            b.get(p.id)
        assert other.value.status == 404
    with Client(idle.base_url) as c:
        queued = c.submit("churn-risk", {"features": FEATURES})
        assert c.cancel(queued.id).status == "cancelled"
        with pytest.raises(ApiError) as late:
            c.cancel(queued.id)
        assert late.value.status == 409 and late.value.code == "not_cancellable"


def test_jobs_from_a_path_and_from_an_iterator_sync(stack: Stack, tmp_path: Path) -> None:
    src = tmp_path / "rows.jsonl"
    src.write_bytes(
        b"".join(
            orjson.dumps({"custom_id": f"r{i}", "features": FEATURES}) + b"\n" for i in range(300)
        )
    )
    sent: list[tuple[int, int | None]] = []
    updates: list[Job] = []
    with Client(stack.base_url, "key-a") as c:
        job = c.create_job("churn-risk", src, progress=lambda n, total: sent.append((n, total)))
        assert sent[-1] == (src.stat().st_size, src.stat().st_size)
        job = c.wait_job(job.id, timeout=60, poll=1, on_update=updates.append)
        assert job.status == "succeeded" and job.request_counts.succeeded == 300
        assert updates[-1] == job
        got = list(c.results(job.id))
        assert [r.custom_id for r in got] == [f"r{i}" for i in range(300)]  # input order
        assert all(r.output is not None and r.error is None for r in got)
        csv = b"".join(c.results_bytes(job.id, format="csv")).decode().splitlines()
        assert len(csv) == 301 and csv[0].startswith("index,custom_id")

        rows = ({"custom_id": str(i), "input": {"features": FEATURES}} for i in range(50))
        streamed: list[int] = []
        job = c.create_job("churn-risk", rows, progress=lambda n, _: streamed.append(n))
        assert job.request_counts.total == 50 and streamed
        job = c.wait_job(job.id, timeout=60)
        assert [r.custom_id for r in c.results(job.id)] == [str(i) for i in range(50)]
        assert c.list_jobs(limit=1)[0].id == job.id


def test_the_same_async(stack: Stack) -> None:
    async def run() -> dict[str, Any]:
        async with AsyncClient(stack.base_url, "key-a") as c:
            p, q = await asyncio.gather(
                c.predict("ticket-triage", TICKET), c.predict("minilm-embed", TICKET)
            )
            rows = [{"features": FEATURES}] * 20
            job = await c.create_job("churn-risk", iter(rows))
            seen: list[str] = []

            async def update(j: Job) -> None:
                seen.append(j.status)

            job = await c.wait_job(job.id, timeout=60, poll=1, on_update=update)
            results = [r async for r in c.results(job.id)]
            return {"p": p, "q": q, "job": job, "results": results, "seen": seen}

    got = asyncio.run(run())
    assert got["p"].status == got["q"].status == "succeeded"
    assert len(got["q"].output["embedding"]) == 384
    assert got["job"].status == "succeeded" and got["seen"][-1] == "succeeded"
    assert [r.index for r in got["results"]] == list(range(20))


def test_retry_after_is_honoured_against_the_apis_429(slow_tenant: Stack) -> None:
    row = {"features": FEATURES}
    with Client(slow_tenant.base_url, retries=Retries(max_retries=0)) as c:
        c.submit("churn-risk", row)
        with pytest.raises(ApiError) as refused:
            c.submit("churn-risk", row)
    assert refused.value.status == 429 and refused.value.retry_after is not None
    assert 0 < refused.value.retry_after <= 2
    with Client(slow_tenant.base_url, retries=Retries(max_retries=3)) as c:
        start = time.monotonic()
        first = c.submit("churn-risk", row)
        second = c.submit("churn-risk", row)  # refused, waited for, then accepted
        waited = time.monotonic() - start
        assert first.id != second.id and second.status == "queued"
        assert waited >= 0.5
        assert c.wait(second.id, timeout=30).status == "succeeded"
