"""``AsyncClient``: inferq's HTTP API from Python on asyncio, method for method ``Client``'s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import orjson

from app.client import _core
from app.client._core import Progress, Retries
from app.client.models import Job, JobResult, Prediction, Schedule, ScheduleRun


class AsyncClient:
    """inferq's API: predictions, bulk jobs, schedules; retries 429/503 as ``retries`` says.

    ``base_url`` and ``api_key`` default to ``INFERQ_API_URL`` and ``INFERQ_API_KEY``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: Retries | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retries = retries or Retries()
        self.http = httpx.AsyncClient(
            base_url=_core.base_url(base_url),
            headers=_core.auth_headers(api_key),
            timeout=timeout,
            transport=transport,
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, *_: type[BaseException] | BaseException | TracebackType | None
    ) -> None:
        await self.close()

    # --- plumbing -------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        stream: bool = False,
        retries: Retries | None = None,
        rewind: Any = None,
        **kw: Any,
    ) -> httpx.Response:
        """Send, retrying 429/503 (and a refused connection) as ``retries`` allows, calling
        ``rewind()`` before each try; the answer, whatever its status."""
        policy = retries or self.retries
        attempt = 0
        while True:
            if rewind is not None:
                rewind()
            try:
                response = await self.http.send(
                    self.http.build_request(method, path, **kw), stream=stream
                )
            except httpx.ConnectError:
                if attempt >= policy.max_retries:
                    raise
                await asyncio.sleep(policy.backoff_s * 2**attempt)
                attempt += 1
                continue
            delay = policy.delay(response, attempt)
            if delay is None:
                return response
            await response.aclose()
            await asyncio.sleep(delay)
            attempt += 1

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        response = await self._send(method, path, **kw)
        if not response.is_success:
            raise _core.error_of(response)
        return response.json()

    # --- models and predictions -----------------------------------------------------------

    async def models(self) -> list[dict[str, Any]]:
        """The served models (name, version, kind, schemas, batching)."""
        return list((await self._json("GET", "/v1/models"))["models"])

    async def submit(self, model: str, input: dict[str, Any], **options: Any) -> Prediction:
        """Queue one input; ``options``: callback_url, priority, deadline_s, metadata, ttl_s,
        model_version, idempotency_key. Returns the queued prediction."""
        key = options.pop("idempotency_key", None)
        body = _core.prediction_body(model, input=input, **options)
        headers = {"Idempotency-Key": key} if key else {}
        return Prediction.from_dict(
            await self._json("POST", "/v1/predictions", json=body, headers=headers)
        )

    async def submit_many(
        self, model: str, inputs: list[dict[str, Any]], **options: Any
    ) -> list[Prediction]:
        """Queue several inputs in one request (the same ``options`` as ``submit``)."""
        key = options.pop("idempotency_key", None)
        body = _core.prediction_body(model, inputs=inputs, **options)
        headers = {"Idempotency-Key": key} if key else {}
        answer = await self._json("POST", "/v1/predictions", json=body, headers=headers)
        return [Prediction.from_dict({**p, "model": model}) for p in answer["predictions"]]

    async def predict(
        self, model: str, input: dict[str, Any], *, timeout: float = 60.0, **options: Any
    ) -> Prediction:
        """Submit one input and wait until it is final (``Prefer: wait``, then long-polls);
        returns it as it is after ``timeout`` seconds if it is still not final."""
        end = time.monotonic() + timeout
        key = options.pop("idempotency_key", None)
        body = _core.prediction_body(model, input=input, **options)
        headers = {"Prefer": f"wait={_core.remaining(end, time.monotonic()):g}"}
        if key:
            headers["Idempotency-Key"] = key
        p = Prediction.from_dict(
            await self._json("POST", "/v1/predictions", json=body, headers=headers)
        )
        return p if p.is_final else await self.wait(p.id, timeout=end - time.monotonic())

    async def get(self, prediction_id: str, *, wait: float = 0) -> Prediction:
        """A prediction; ``wait`` (at most 30 s) holds the answer until it is final."""
        params = {"wait": wait} if wait else None
        return Prediction.from_dict(
            await self._json("GET", f"/v1/predictions/{prediction_id}", params=params)
        )

    async def wait(self, prediction_id: str, *, timeout: float = 60.0) -> Prediction:
        """Long-poll a prediction until it is final or ``timeout`` seconds have passed."""
        end = time.monotonic() + timeout
        while True:
            p = await self.get(prediction_id, wait=_core.remaining(end, time.monotonic()))
            if p.is_final or time.monotonic() >= end:
                return p

    async def cancel(self, prediction_id: str) -> Prediction:
        """Cancel a prediction that has not started (``ApiError`` 409 once it has)."""
        return Prediction.from_dict(await self._json("DELETE", f"/v1/predictions/{prediction_id}"))

    # --- bulk jobs ------------------------------------------------------------------------

    async def create_job(
        self,
        model: str,
        source: str | Path | Iterable[Any],
        *,
        format: str | None = None,
        progress: Progress | None = None,
        **options: Any,
    ) -> Job:
        """Upload a JSONL/CSV file (a path) or rows (an iterator of dicts, JSON lines or bytes,
        sent as JSONL while it is read) as a bulk job; ``progress(sent, total)`` follows the
        upload. ``options``: model_version, callback_url, ttl_s. A path's upload is retried
        on 429/503 from its start; an iterator's cannot be and is not."""
        fields = _core.job_form(model=model, format=format, **options)
        name, body, opened = _core.upload_source(source, progress)
        files = {"file": (name, body)}
        try:
            if opened is None:
                answer = await self._json(
                    "POST", "/v1/jobs", data=fields, files=files, retries=_core.NO_RETRIES
                )
            else:
                answer = await self._json(
                    "POST", "/v1/jobs", data=fields, files=files, rewind=body.rewind
                )
        finally:
            if opened is not None:
                opened.close()
        return Job.from_dict(answer)

    async def get_job(self, job_id: str, *, wait: float = 0) -> Job:
        """A job; ``wait`` (at most 30 s) holds the answer until it has ended."""
        params = {"wait": wait} if wait else None
        return Job.from_dict(await self._json("GET", f"/v1/jobs/{job_id}", params=params))

    async def wait_job(
        self, job_id: str, *, timeout: float | None = None, poll: float = 5.0, on_update: Any = None
    ) -> Job:
        """Follow a job until it ends (or ``timeout``); ``on_update(job)`` (awaited if it is a coroutine) at each answer,
        at least every ``poll`` seconds (fresh counts)."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = min(poll, _core.remaining(end, time.monotonic()))
            job = await self.get_job(job_id, wait=wait)
            if on_update is not None:
                await _maybe_await(on_update(job))
            if job.is_final or (end is not None and time.monotonic() >= end):
                return job

    async def list_jobs(self, *, limit: int = 20, schedule_id: str | None = None) -> list[Job]:
        """The newest jobs first (of one schedule, if given)."""
        params: dict[str, Any] = {"limit": limit}
        if schedule_id:
            params["schedule_id"] = schedule_id
        return [
            Job.from_dict(j) for j in (await self._json("GET", "/v1/jobs", params=params))["jobs"]
        ]

    async def cancel_job(self, job_id: str) -> Job:
        """Cancel what of a job has not started (``ApiError`` 409 once it has ended)."""
        return Job.from_dict(await self._json("POST", f"/v1/jobs/{job_id}/cancel"))

    async def results_bytes(self, job_id: str, *, format: str = "jsonl") -> AsyncIterator[bytes]:
        """An ended job's results as they stream in (``jsonl`` or ``csv``), in input order."""
        response = await self._send(
            "GET", f"/v1/jobs/{job_id}/results", params={"format": format}, stream=True
        )
        try:
            if not response.is_success:
                await response.aread()
                raise _core.error_of(response)
            async for block in response.aiter_bytes():
                yield block
        finally:
            await response.aclose()

    async def results(self, job_id: str) -> AsyncIterator[JobResult]:
        """An ended job's results, one typed line per input, in input order, streamed."""
        carry = b""
        async for block in self.results_bytes(job_id):
            lines = (carry + block).split(b"\n")
            carry = lines.pop()
            for line in lines:
                if line:
                    yield JobResult.from_dict(orjson.loads(line))
        if carry.strip():
            yield JobResult.from_dict(orjson.loads(carry))

    # --- schedules ------------------------------------------------------------------------

    async def create_schedule(self, body: dict[str, Any]) -> Schedule:
        """Create a schedule from ``{"name", "model", "cron", "source", ...}``."""
        return Schedule.from_dict(await self._json("POST", "/v1/schedules", json=body))

    async def list_schedules(self) -> list[Schedule]:
        return [
            Schedule.from_dict(s) for s in (await self._json("GET", "/v1/schedules"))["schedules"]
        ]

    async def get_schedule(self, schedule_id: str) -> Schedule:
        return Schedule.from_dict(await self._json("GET", f"/v1/schedules/{schedule_id}"))

    async def update_schedule(self, schedule_id: str, changes: dict[str, Any]) -> Schedule:
        return Schedule.from_dict(
            await self._json("PATCH", f"/v1/schedules/{schedule_id}", json=changes)
        )

    async def delete_schedule(self, schedule_id: str) -> None:
        await self._json("DELETE", f"/v1/schedules/{schedule_id}")

    async def run_schedule(self, schedule_id: str) -> ScheduleRun:
        """Run a schedule now, enabled or not; the run (its job comes when it has made it)."""
        return ScheduleRun.from_dict(await self._json("POST", f"/v1/schedules/{schedule_id}/run"))

    async def schedule_runs(self, schedule_id: str, *, limit: int = 20) -> list[ScheduleRun]:
        answer = await self._json(
            "GET", f"/v1/schedules/{schedule_id}/runs", params={"limit": limit}
        )
        return [ScheduleRun.from_dict(r) for r in answer["runs"]]


async def _maybe_await(value: Any) -> None:
    if asyncio.iscoroutine(value):
        await value
