"""``inferq jobs …``: submit a file as a bulk job, follow it, fetch its results — over HTTP.

The commands talk to a running API (``--api-url``, ``INFERQ_API_URL``) through ``app.client``,
never to the database, so they work from any machine that can reach it.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

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

from app.client import ApiError, Client, Job

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
err = Console(stderr=True)


@contextmanager
def _client(api_url: str, api_key: str | None, timeout: float = 60) -> Iterator[Client]:
    """A client whose errors end the command: the API's error printed, exit status 1."""
    try:
        with Client(api_url, api_key or "", timeout=timeout) as c:
            yield c
    except ApiError as exc:
        err.print(f"[red]error[/red] ({exc.status}) {exc.code}: {exc.message}")
        raise typer.Exit(1) from None
    except httpx.HTTPError as exc:
        err.print(f"[red]error[/red] cannot reach {api_url}: {exc}")
        raise typer.Exit(1) from None


def _upload(c: Client, path: Path, model: str, options: dict[str, Any]) -> Job:
    columns = (TextColumn("upload"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("upload", total=path.stat().st_size)

        def sent(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        return c.create_job(model, path, progress=sent, **options)


def _follow(c: Client, job: Job, poll: float) -> Job:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ok {task.fields[ok]}  failed {task.fields[failed]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(job.status, total=job.request_counts.total, ok=0, failed=0)

        def show(j: Job) -> None:
            n = j.request_counts
            progress.update(
                task,
                description=j.status,
                total=n.total,
                completed=n.succeeded + n.failed,
                ok=n.succeeded,
                failed=n.failed,
            )

        # each answer is held by the API until the job ends or ``poll`` seconds pass
        return c.wait_job(job.id, poll=poll, on_update=show)


def _summary(job: Job) -> str:
    c = job.request_counts
    text = f"job {job.id} {job.status}: {c.total} lines"
    if job.status != "queued":
        text += f", {c.succeeded} succeeded, {c.failed} failed"
        if c.cancelled:
            text += f", {c.cancelled} cancelled"
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
    options = {"model_version": model_version, "callback_url": callback_url, "format": fmt}
    with _client(api_url, api_key, timeout=600) as c:
        job = _upload(c, file, model, {k: v for k, v in options.items() if v})
        typer.echo(_summary(job))
        if not wait:
            return
        job = _follow(c, job, poll)
    typer.echo(_summary(job))
    if job.status != "succeeded":
        raise typer.Exit(1)


@jobs_cli.command("get")
def get(job_id: str, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Print a job (status, request counts, provenance) as JSON."""
    with _client(api_url, api_key) as c:
        job = c.get_job(job_id)
    typer.echo(orjson.dumps(job.raw, option=orjson.OPT_INDENT_2).decode())


@jobs_cli.command("list")
def list_(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """One line per recent job."""
    with _client(api_url, api_key) as c:
        jobs = c.list_jobs(limit=limit)
    for job in jobs:
        typer.echo(f"{job.raw['created_at']}  {job.model:<16} {_summary(job)}")


@jobs_cli.command("cancel")
def cancel(job_id: str, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Cancel the inputs of a job that have not started."""
    with _client(api_url, api_key) as c:
        job = c.cancel_job(job_id)
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
    to_file = output is not None and str(output) != "-"
    with _client(api_url, api_key, timeout=600) as c:
        blocks = c.results_bytes(job_id, format=fmt)
        first = next(blocks, b"")  # an error answer raises here, before the file is made
        lines = _write(output if to_file else None, itertools.chain([first], blocks))
    if to_file:
        rows = lines - 1 if fmt == "csv" else lines
        err.print(f"{rows} results written to {output}")


def _write(path: Path | None, blocks: Iterable[bytes]) -> int:
    """Write the blocks to ``path`` (stdout when None); returns the lines written."""
    sink = sys.stdout.buffer if path is None else path.open("wb")
    try:
        lines = 0
        for block in blocks:
            sink.write(block)
            lines += block.count(b"\n")
    finally:
        if sink is not sys.stdout.buffer:
            sink.close()
    return lines
