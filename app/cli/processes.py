"""``inferq migrate|release|worker|beat|api|up``: the processes that make up inferq.

``app`` knows nothing of HTTP or Celery, so the commands that start the API, a worker or beat
run them as programs (uvicorn, celery) rather than importing them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from app.cli.health import healthcheck
from app.cli.models import ensure_models
from app.settings import VAR_DIR, get_settings


def _bin(name: str) -> str:
    """A console script of this environment (next to the running python)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def migrate() -> None:
    """Bring the database schema up to date (Alembic)."""
    from app.db.engine import migrate as run_migrations

    run_migrations(get_settings().database_url)
    typer.echo("database is up to date")


def release() -> None:
    """What a release runs once: migrations, then the demo models if there are none."""
    migrate()
    ensure_models()


def worker_argv(concurrency: int | None = None, queues: list[str] | None = None) -> list[str]:
    from app.registry import Registry

    s = get_settings()
    if not queues:
        queues = [f"{s.queue_prefix}.{n}" for n in Registry(s.models_dir).names()]
        queues += [f"{s.queue_prefix}.maintenance", f"{s.queue_prefix}.default"]
    return [
        _bin("celery"),
        "-A",
        "workers.celery_app:celery_app",
        "worker",
        "--pool",
        "threads",
        "-c",
        str(concurrency or s.worker_concurrency),
        "-Q",
        ",".join(queues),
        "--without-mingle",
        "--without-gossip",
        "-n",
        f"inferq-{os.getpid()}@%h",
        "--loglevel",
        s.log_level,
    ]


def worker(
    concurrency: Annotated[int | None, typer.Option("-c", help="Messages in flight.")] = None,
    queue: Annotated[
        list[str] | None, typer.Option("-Q", help="Queues (default: every model).")
    ] = None,
) -> None:
    """Run a Celery worker on every model's queue."""
    argv = worker_argv(concurrency, queue)
    os.execv(argv[0], argv)


def beat_argv() -> list[str]:
    s = get_settings()
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    return [
        _bin("celery"),
        "-A",
        "workers.celery_app:celery_app",
        "beat",
        "-s",
        str(VAR_DIR / "celerybeat-schedule"),
        "--loglevel",
        s.log_level,
    ]


def beat() -> None:
    """Run Celery beat (the sweeper and the schedules)."""
    argv = beat_argv()
    os.execv(argv[0], argv)


HTTP_SERVERS = ("uvicorn", "granian")


def api_argv(host: str, port: int, workers: int = 1, *, server: str = "uvicorn") -> list[str]:
    """The command that serves ``api.main:create_app``: uvicorn (httptools) or granian (its
    HTTP/1 in Rust; ``workers`` processes share the port either way)."""
    if server == "granian":
        return [
            _bin("granian"),
            "--interface",
            "asgi",
            "--factory",
            "--host",
            host,
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--loop",
            "uvloop",
            "--no-ws",
            "--http",
            "1",
            "--workers-kill-timeout",
            "5",
            "api.main:create_app",
        ]
    if server != "uvicorn":
        raise ValueError(f"unknown HTTP server {server!r}; choose from {list(HTTP_SERVERS)}")
    return [
        _bin("uvicorn"),
        "api.main:create_app",
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--timeout-graceful-shutdown",
        "5",
    ]


def api(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="PORT")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Serve the HTTP API."""
    argv = api_argv(host, port, workers)
    os.execv(argv[0], argv)


def up(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="PORT")] = 8000,
) -> None:
    """Migrate, build the demo models if missing, and run API, worker and beat together."""
    release()
    s = get_settings()
    procs = {
        "worker": subprocess.Popen(worker_argv()),
        "beat": subprocess.Popen(beat_argv()),
        "api": subprocess.Popen(api_argv(host, port)),
    }
    _wait_until_serving(f"http://{host}:{port}/healthz", procs["api"])
    db = s.database_url.split("@")[-1] if "@" in s.database_url else s.database_url
    typer.echo(
        f"inferq API listening on http://{host}:{port}  (database: {db}, broker: "
        f"{s.broker_url.split('@')[-1]}); Ctrl-C stops everything"
    )
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            for name, p in procs.items():
                if p.poll() is not None:
                    typer.echo(f"{name} exited with {p.returncode}; stopping", err=True)
                    stopping = True
            time.sleep(0.5)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.time() + 15
        for p in procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()


def _wait_until_serving(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)


def register(cli: typer.Typer) -> None:
    """Add the process commands (and their health check) to the ``inferq`` command."""
    for command in (migrate, release, worker, beat, api, up, healthcheck):
        cli.command()(command)
