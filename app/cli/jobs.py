"""``inferq jobs …``: submit a file as a bulk job, follow it, fetch its results — over HTTP.

The commands talk to a running API (``--api-url``, ``INFERQ_API_URL``), never to the database,
so they work from any machine that can reach it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Annotated, Any, BinaryIO, cast

import httpx
import orjson
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

jobs_cli = typer.Typer(
    help="Bulk jobs: submit a JSONL/CSV file, follow it, get its results.", no_args_is_help=True
)

ApiUrl = Annotated[
    str, typer.Option("--api-url", envvar="INFERQ_API_URL", help="Base URL of the inferq API.")
]
ApiKey = Annotated[
    str | None, typer.Option("--api-key", envvar="INFERQ_API_KEY", help="Bearer API key.")
]
DEFAULT_URL = "http://127.0.0.1:8000"
FINAL = {"succeeded", "failed", "cancelled"}
err = Console(stderr=True)


def _client(api_url: str, api_key: str | None, timeout: float = 60) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=api_url.rstrip("/"), headers=headers, timeout=timeout)


def _check(r: httpx.Response) -> Any:
    """The JSON body of a 2xx answer; otherwise print the API's error and exit 1."""
    if r.is_success:
        return r.json()
    try:
        e = r.json()["error"]
        msg = f"{e['code']}: {e['message']}"
    except (ValueError, KeyError, TypeError):
        msg = r.text[:500]
    err.print(f"[red]error[/red] ({r.status_code}) {msg}")
    raise typer.Exit(1)


class _Counting:
    """A file that reports how many bytes were read from it (httpx streams it in blocks)."""

    def __init__(self, f: BinaryIO, progress: Progress, task: Any) -> None:
        self.f = f
        self.progress = progress
        self.task = task

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.progress.advance(self.task, len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def _upload(c: httpx.Client, path: Path, data: dict[str, str]) -> dict[str, Any]:
    size = path.stat().st_size
    columns = (TextColumn("upload"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with path.open("rb") as f, Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("upload", total=size)
        counting = cast(IO[bytes], _Counting(f, progress, task))
        files = {"file": (path.name, counting, None)}
        body: dict[str, Any] = _check(c.post("/v1/jobs", data=data, files=files))
    return body


def _follow(c: httpx.Client, job: dict[str, Any], poll: float) -> dict[str, Any]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ok {task.fields[ok]}  failed {task.fields[failed]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        counts = job["request_counts"]
        task = progress.add_task(job["status"], total=counts["total"], ok=0, failed=0)
        while job["status"] not in FINAL:
            # held by the API until the job ends or ``poll`` seconds pass (fresh counts)
            job = _check(c.get(f"/v1/jobs/{job['id']}", params={"wait": poll}))
            counts = job["request_counts"]
            progress.update(
                task,
                description=job["status"],
                total=counts["total"],
                completed=counts["succeeded"] + counts["failed"],
                ok=counts["succeeded"],
                failed=counts["failed"],
            )
    return job


def _summary(job: dict[str, Any]) -> str:
    c = job["request_counts"]
    text = f"job {job['id']} {job['status']}: {c['total']} lines"
    if job["status"] != "queued":
        text += f", {c['succeeded']} succeeded, {c['failed']} failed"
        if c.get("cancelled"):
            text += f", {c['cancelled']} cancelled"
    return text


@jobs_cli.command("submit")
def submit(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL or CSV file.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model name.")],
    model_version: Annotated[str | None, typer.Option(help="Pin a model version.")] = None,
    callback_url: Annotated[str | None, typer.Option(help="Webhook when the job ends.")] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="jsonl or csv (default: by extension).")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it ends.")] = False,
    poll: Annotated[
        float, typer.Option(min=0.1, max=30, help="Seconds between progress updates with --wait.")
    ] = 0.5,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Upload FILE as a bulk job; with --wait, show its progress until it ends."""
    data = {"model": model}
    extra = {"model_version": model_version, "callback_url": callback_url, "format": fmt}
    data.update({k: v for k, v in extra.items() if v})
    with _client(api_url, api_key, timeout=600) as c:
        job = _upload(c, file, data)
        typer.echo(_summary(job))
        if not wait:
            return
        job = _follow(c, job, poll)
    typer.echo(_summary(job))
    if job["status"] != "succeeded":
        raise typer.Exit(1)


@jobs_cli.command("get")
def get(job_id: str, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Print a job (status, request counts, provenance) as JSON."""
    with _client(api_url, api_key) as c:
        job = _check(c.get(f"/v1/jobs/{job_id}"))
    typer.echo(orjson.dumps(job, option=orjson.OPT_INDENT_2).decode())


@jobs_cli.command("list")
def list_(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """One line per recent job."""
    with _client(api_url, api_key) as c:
        jobs = _check(c.get("/v1/jobs", params={"limit": limit}))["jobs"]
    for job in jobs:
        typer.echo(f"{job['created_at']}  {job['model']:<16} {_summary(job)}")


@jobs_cli.command("cancel")
def cancel(job_id: str, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Cancel the inputs of a job that have not started."""
    with _client(api_url, api_key) as c:
        job = _check(c.post(f"/v1/jobs/{job_id}/cancel"))
    typer.echo(_summary(job))


@jobs_cli.command("results")
def results(
    job_id: str,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Download a finished job's results, one line per input, in input order."""
    with (
        _client(api_url, api_key, timeout=600) as c,
        c.stream("GET", f"/v1/jobs/{job_id}/results", params={"format": fmt}) as r,
    ):
        if not r.is_success:
            r.read()
            _check(r)
        sink = sys.stdout.buffer if output is None or str(output) == "-" else output.open("wb")
        try:
            lines = 0
            for block in r.iter_bytes():
                sink.write(block)
                lines += block.count(b"\n")
        finally:
            if sink is not sys.stdout.buffer:
                sink.close()
    if output is not None and str(output) != "-":
        rows = lines - 1 if fmt == "csv" else lines
        err.print(f"{rows} results written to {output}")
