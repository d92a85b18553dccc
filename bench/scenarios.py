"""The scenarios that go through inferq's HTTP API: ``online``, ``online-light``, ``bulk``.

``online``: K concurrent clients (asyncio, a minimal HTTP/1.1 client or httpx) each POST one input to ``/v1/predictions``
and long-poll ``GET /v1/predictions/{id}?wait=30`` until it is final, then take the next input.
``online-light``: the same request, but arriving as a Poisson process at a fixed rate (open
loop), so latency is measured without a queue in front of the model. ``bulk``: one
``POST /v1/jobs`` (multipart JSONL), long-polled until every result is stored.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import httpx
import orjson

from bench.http import JsonClient, make_client
from bench.procstat import RssSampler, memory_kib

FINAL = {"succeeded", "failed", "cancelled", "expired"}
JOB_FINAL = {"succeeded", "failed", "cancelled"}


class BenchError(RuntimeError):
    """The system under test answered something a benchmark cannot go on with."""


@dataclass(slots=True)
class Sample:
    started: float
    done: float
    status: str
    batch_size: int | None
    queued_ms: float | None = None
    """``created_at`` -> ``started_at``: API flush, publish, broker, batch forming, claim."""
    running_ms: float | None = None
    """``started_at`` -> ``completed_at``: the batch's run and the start of its write."""

    @property
    def latency_ms(self) -> float:
        return (self.done - self.started) * 1000.0


def _stamps(doc: dict[str, Any]) -> tuple[float | None, float | None]:
    """(queued, running) milliseconds from a final prediction's timestamps."""
    try:
        created, started, completed = (
            datetime.fromisoformat(doc[k]) for k in ("created_at", "started_at", "completed_at")
        )
    except (KeyError, TypeError, ValueError):
        return None, None
    return (started - created).total_seconds() * 1e3, (completed - started).total_seconds() * 1e3


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0-1) by linear interpolation; 0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


PREFER_WAIT = {"Prefer": "wait=30"}


async def _predict(
    client: JsonClient, model: str, item: dict[str, Any], *, prefer_wait: bool = True
) -> Sample:
    """POST one input and wait for its result: in the POST itself (``Prefer: wait``, answered
    200 once final), else (202) by long-polling ``GET ?wait=30`` until final."""
    t0 = time.perf_counter()
    status, doc = await client.request(
        "POST",
        "/v1/predictions",
        {"model": model, "input": item},
        headers=PREFER_WAIT if prefer_wait else None,
    )
    if status == 200 and doc["status"] in FINAL:
        done = time.perf_counter()
        return Sample(t0, done, doc["status"], doc.get("batch_size"), *_stamps(doc))
    if status != 202:
        raise BenchError(f"POST /v1/predictions answered {status}: {str(doc)[:300]}")
    path = f"/v1/predictions/{doc['id']}?wait=30"
    while True:
        status, doc = await client.request("GET", path)
        if status != 200:
            raise BenchError(f"GET {path} answered {status}: {str(doc)[:300]}")
        if doc["status"] in FINAL:
            done = time.perf_counter()
            return Sample(t0, done, doc["status"], doc.get("batch_size"), *_stamps(doc))


Request = Callable[[JsonClient, dict[str, Any]], Coroutine[Any, Any, Sample]]
"""One input sent and its result awaited: inferq's ``_predict`` by default; ``bench/peers.py``
passes its own, so peers are driven by these very loops."""


def inferq_request(model: str, *, prefer_wait: bool = True) -> Request:
    """inferq's request: ``POST /v1/predictions`` (see ``_predict``)."""

    async def request(client: JsonClient, item: dict[str, Any]) -> Sample:
        return await _predict(client, model, item, prefer_wait=prefer_wait)

    return request


def _latency_figures(samples: list[Sample]) -> dict[str, Any]:
    lat = [s.latency_ms for s in samples]
    batches = [s.batch_size for s in samples if s.batch_size]
    statuses: dict[str, int] = {}
    for s in samples:
        statuses[s.status] = statuses.get(s.status, 0) + 1
    timed = [s for s in samples if s.queued_ms is not None and s.running_ms is not None]
    rest = [s.latency_ms - (s.queued_ms or 0) - (s.running_ms or 0) for s in timed]
    return {
        "n": len(samples),
        "breakdown_p50_ms": {
            "queued": round(percentile([s.queued_ms or 0 for s in timed], 0.5), 2),
            "running": round(percentile([s.running_ms or 0 for s in timed], 0.5), 2),
            "http_commit_notify": round(percentile(rest, 0.5), 2),
        },
        "p50_ms": round(percentile(lat, 0.50), 2),
        "p95_ms": round(percentile(lat, 0.95), 2),
        "p99_ms": round(percentile(lat, 0.99), 2),
        "mean_batch": round(statistics.fmean(batches), 2) if batches else None,
        "statuses": statuses,
    }


async def _closed_loop(
    base_url: str,
    request: Request,
    inputs: list[dict[str, Any]],
    clients: int,
    http: str,
) -> tuple[list[Sample], float]:
    todo = iter(inputs)
    samples: list[Sample] = []
    client = make_client(http, base_url, clients + 4)

    async def worker() -> None:
        for item in todo:
            samples.append(await request(client, item))

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(clients)))
    finally:
        await client.aclose()
    return samples, t0


def online(
    base_url: str,
    model: str,
    inputs: list[dict[str, Any]],
    *,
    clients: int,
    warmup: int,
    http: str = "mini",
    prefer_wait: bool = True,
    during: Callable[[], AbstractContextManager[Any]] = nullcontext,
    request: Request | None = None,
) -> dict[str, Any]:
    """``online``: items/s from the first POST to the last stored result, latencies, batch.
    ``request``: what each client sends (default: inferq's, ``inferq_request``)."""
    send = request or inferq_request(model, prefer_wait=prefer_wait)
    loop = partial(_closed_loop, base_url, send, clients=clients, http=http)
    if warmup:
        asyncio.run(loop(inputs[:warmup]))
    with during():
        samples, t0 = asyncio.run(loop(inputs))
    elapsed = max(s.done for s in samples) - t0
    return {
        "items_per_s": round(len(samples) / elapsed, 1),
        "clients": clients,
        "seconds": round(elapsed, 2),
        **_latency_figures(samples),
    }


async def _open_loop(
    base_url: str,
    request: Request,
    inputs: list[dict[str, Any]],
    rate: float,
    seed: int,
    http: str,
) -> list[Sample]:
    rng = random.Random(seed)
    client = make_client(http, base_url, 256)
    try:
        tasks = []
        due = time.perf_counter()
        for item in inputs:
            due += rng.expovariate(rate)
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(request(client, item)))
        return list(await asyncio.gather(*tasks))
    finally:
        await client.aclose()


def online_light(
    base_url: str,
    model: str,
    inputs: list[dict[str, Any]],
    *,
    rate: float,
    single_item_ms: float,
    http: str = "mini",
    prefer_wait: bool = True,
    seed: int = 7,
    request: Request | None = None,
) -> dict[str, Any]:
    """``online-light``: Poisson arrivals at ``rate``/s; latency minus the model's own time.
    ``request``: as in ``online``."""
    send = request or inferq_request(model, prefer_wait=prefer_wait)
    samples = asyncio.run(_open_loop(base_url, send, inputs, rate, seed, http))
    figures = _latency_figures(samples)
    span = max(s.started for s in samples) - min(s.started for s in samples)
    return {
        "rate_per_s": round(rate, 2),
        "achieved_rate_per_s": round((len(samples) - 1) / span, 2) if span > 0 else None,
        "single_item_ms": round(single_item_ms, 3),
        "added_p50_ms": round(figures["p50_ms"] - single_item_ms, 2),
        "added_p99_ms": round(figures["p99_ms"] - single_item_ms, 2),
        **figures,
    }


def _jsonl(inputs: list[dict[str, Any]], *, nested: bool) -> bytes:
    lines = (
        {"custom_id": f"item-{i}", "input": item} if nested else {"custom_id": f"item-{i}", **item}
        for i, item in enumerate(inputs)
    )
    return b"\n".join(orjson.dumps(x) for x in lines) + b"\n"


def _submit_job(
    client: httpx.Client, model: str, inputs: list[dict[str, Any]], nested_body: bytes
) -> dict[str, Any]:
    """POST the job (``{"custom_id", "input"}`` lines, else flat ones); ``{"skipped": why}``
    when the server has no jobs API."""
    last = ""
    for nested in (True, False):
        body = nested_body if nested else _jsonl(inputs, nested=False)
        files = {"file": ("inputs.jsonl", body, "application/x-ndjson")}
        r = client.post("/v1/jobs", data={"model": model}, files=files)
        if r.status_code in (404, 405):
            return {"skipped": f"POST /v1/jobs answered {r.status_code}: no jobs API yet"}
        if r.status_code == 202:
            return {**r.json(), "line_format": "nested" if nested else "flat"}
        last = f"POST /v1/jobs answered {r.status_code}: {r.text[:300]}"
        if r.status_code != 422:
            break
    raise BenchError(last)


def bulk(
    base_url: str,
    model: str,
    inputs: list[dict[str, Any]],
    *,
    pids: dict[str, int],
    timeout: float,
) -> dict[str, Any]:
    """``bulk``: one job of ``inputs`` until every result is stored; items/s and peak RSS."""
    # the file exists before the clock starts: making it is the caller's work, not inferq's
    body = _jsonl(inputs, nested=True)
    with httpx.Client(base_url=base_url, timeout=120) as client, RssSampler(pids) as rss:
        t0 = time.perf_counter()
        job = _submit_job(client, model, inputs, body)
        if "skipped" in job:
            return job
        accepted = time.perf_counter() - t0
        doc: dict[str, Any] = job
        while time.perf_counter() - t0 < timeout:
            # long-poll: the API answers when the job ends (woken by its NOTIFY); polling every
            # 50 ms cost the API and this client ~4 % of the machine during a job
            wait = min(30.0, max(timeout - (time.perf_counter() - t0), 0.1))
            r = client.get(f"/v1/jobs/{job['id']}", params={"wait": wait})
            doc = r.raise_for_status().json()
            if doc.get("status") in JOB_FINAL:
                break
        else:
            raise BenchError(f"job {job['id']} not done after {timeout}s: {doc}")
        elapsed = time.perf_counter() - t0
    return {
        "items_per_s": round(len(inputs) / elapsed, 1),
        "n": len(inputs),
        "seconds": round(elapsed, 2),
        "upload_accepted_s": round(accepted, 2),
        "status": doc.get("status"),
        "request_counts": doc.get("request_counts"),
        "line_format": job.get("line_format"),
        "peak_rss_mib": {k: round(v / 1024, 1) for k, v in rss.peak_kib.items()},
        "hwm_rss_mib": {k: round(memory_kib(p, "VmHWM") / 1024, 1) for k, p in pids.items()},
    }
