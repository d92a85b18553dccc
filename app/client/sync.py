"""``Client``: inferq's HTTP API from Python, blocking (``AsyncClient`` is the same, awaited)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import orjson

from app.client import _core
from app.client._core import Progress, Retries
from app.client.models import Job, JobResult, Prediction, Schedule, ScheduleRun


class Client:
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
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retries = retries or Retries()
        self.http = httpx.Client(
            base_url=_core.base_url(base_url),
            headers=_core.auth_headers(api_key),
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    # --- plumbing -------------------------------------------------------------------------

    def _send(
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
                response = self.http.send(
                    self.http.build_request(method, path, **kw), stream=stream
                )
            except httpx.ConnectError:
                if attempt >= policy.max_retries:
                    raise
                time.sleep(policy.backoff_s * 2**attempt)
                attempt += 1
                continue
            delay = policy.delay(response, attempt)
            if delay is None:
                return response
            response.close()
            time.sleep(delay)
            attempt += 1

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        response = self._send(method, path, **kw)
        if not response.is_success:
            raise _core.error_of(response)
        return response.json()

    # --- models and predictions -----------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """The served models (name, version, kind, schemas, batching)."""
        return list(self._json("GET", "/v1/models")["models"])

    def submit(self, model: str, input: dict[str, Any], **options: Any) -> Prediction:
        """Queue one input; ``options``: callback_url, priority, deadline_s, metadata, ttl_s,
        model_version, idempotency_key. Returns the queued prediction."""
        key = options.pop("idempotency_key", None)
        body = _core.prediction_body(model, input=input, **options)
        headers = {"Idempotency-Key": key} if key else {}
        return Prediction.from_dict(
            self._json("POST", "/v1/predictions", json=body, headers=headers)
        )

    def submit_many(
        self, model: str, inputs: list[dict[str, Any]], **options: Any
    ) -> list[Prediction]:
        """Queue several inputs in one request (the same ``options`` as ``submit``)."""
        key = options.pop("idempotency_key", None)
        body = _core.prediction_body(model, inputs=inputs, **options)
        headers = {"Idempotency-Key": key} if key else {}
        answer = self._json("POST", "/v1/predictions", json=body, headers=headers)
        return [Prediction.from_dict({**p, "model": model}) for p in answer["predictions"]]

    def predict(
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
        p = Prediction.from_dict(self._json("POST", "/v1/predictions", json=body, headers=headers))
        return p if p.is_final else self.wait(p.id, timeout=end - time.monotonic())

    def get(self, prediction_id: str, *, wait: float = 0) -> Prediction:
        """A prediction; ``wait`` (at most 30 s) holds the answer until it is final."""
        params = {"wait": wait} if wait else None
        return Prediction.from_dict(
            self._json("GET", f"/v1/predictions/{prediction_id}", params=params)
        )

    def wait(self, prediction_id: str, *, timeout: float = 60.0) -> Prediction:
        """Long-poll a prediction until it is final or ``timeout`` seconds have passed."""
        end = time.monotonic() + timeout
        while True:
            p = self.get(prediction_id, wait=_core.remaining(end, time.monotonic()))
            if p.is_final or time.monotonic() >= end:
                return p

    def cancel(self, prediction_id: str) -> Prediction:
        """Cancel a prediction that has not started (``ApiError`` 409 once it has)."""
        return Prediction.from_dict(self._json("DELETE", f"/v1/predictions/{prediction_id}"))

    # --- bulk jobs ------------------------------------------------------------------------

    def create_job(
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
                answer = self._json(
                    "POST", "/v1/jobs", data=fields, files=files, retries=_core.NO_RETRIES
                )
            else:
                answer = self._json(
                    "POST", "/v1/jobs", data=fields, files=files, rewind=body.rewind
                )
        finally:
            if opened is not None:
                opened.close()
        return Job.from_dict(answer)

    def get_job(self, job_id: str, *, wait: float = 0) -> Job:
        """A job; ``wait`` (at most 30 s) holds the answer until it has ended."""
        params = {"wait": wait} if wait else None
        return Job.from_dict(self._json("GET", f"/v1/jobs/{job_id}", params=params))

    def wait_job(
        self, job_id: str, *, timeout: float | None = None, poll: float = 5.0, on_update: Any = None
    ) -> Job:
        """Follow a job until it ends (or ``timeout``); ``on_update(job)`` at each answer,
        at least every ``poll`` seconds (fresh counts)."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = min(poll, _core.remaining(end, time.monotonic()))
            job = self.get_job(job_id, wait=wait)
            if on_update is not None:
                on_update(job)
            if job.is_final or (end is not None and time.monotonic() >= end):
                return job

    def list_jobs(self, *, limit: int = 20, schedule_id: str | None = None) -> list[Job]:
        """The newest jobs first (of one schedule, if given)."""
        params: dict[str, Any] = {"limit": limit}
        if schedule_id:
            params["schedule_id"] = schedule_id
        return [Job.from_dict(j) for j in self._json("GET", "/v1/jobs", params=params)["jobs"]]

    def cancel_job(self, job_id: str) -> Job:
        """Cancel what of a job has not started (``ApiError`` 409 once it has ended)."""
        return Job.from_dict(self._json("POST", f"/v1/jobs/{job_id}/cancel"))

    def results_bytes(self, job_id: str, *, format: str = "jsonl") -> Iterator[bytes]:
        """An ended job's results as they stream in (``jsonl`` or ``csv``), in input order."""
        response = self._send(
            "GET", f"/v1/jobs/{job_id}/results", params={"format": format}, stream=True
        )
        try:
            if not response.is_success:
                response.read()
                raise _core.error_of(response)
            yield from response.iter_bytes()
        finally:
            response.close()

    def results(self, job_id: str) -> Iterator[JobResult]:
        """An ended job's results, one typed line per input, in input order, streamed."""
        carry = b""
        for block in self.results_bytes(job_id):
            lines = (carry + block).split(b"\n")
            carry = lines.pop()
            for line in lines:
                if line:
                    yield JobResult.from_dict(orjson.loads(line))
        if carry.strip():
            yield JobResult.from_dict(orjson.loads(carry))

    # --- schedules ------------------------------------------------------------------------

    def create_schedule(self, body: dict[str, Any]) -> Schedule:
        """Create a schedule from ``{"name", "model", "cron", "source", ...}``."""
        return Schedule.from_dict(self._json("POST", "/v1/schedules", json=body))

    def list_schedules(self) -> list[Schedule]:
        return [Schedule.from_dict(s) for s in self._json("GET", "/v1/schedules")["schedules"]]

    def get_schedule(self, schedule_id: str) -> Schedule:
        return Schedule.from_dict(self._json("GET", f"/v1/schedules/{schedule_id}"))

    def update_schedule(self, schedule_id: str, changes: dict[str, Any]) -> Schedule:
        return Schedule.from_dict(self._json("PATCH", f"/v1/schedules/{schedule_id}", json=changes))

    def delete_schedule(self, schedule_id: str) -> None:
        self._json("DELETE", f"/v1/schedules/{schedule_id}")

    def run_schedule(self, schedule_id: str) -> ScheduleRun:
        """Run a schedule now, enabled or not; the run (its job comes when it has made it)."""
        return ScheduleRun.from_dict(self._json("POST", f"/v1/schedules/{schedule_id}/run"))

    def schedule_runs(self, schedule_id: str, *, limit: int = 20) -> list[ScheduleRun]:
        answer = self._json("GET", f"/v1/schedules/{schedule_id}/runs", params={"limit": limit})
        return [ScheduleRun.from_dict(r) for r in answer["runs"]]
