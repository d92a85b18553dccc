"""Bring up inferq on loopback for a benchmark: database, API, worker processes, beat.

Everything started here is a child process known by its PID, and only those PIDs are stopped.
Queues get a unique prefix, so a benchmark can share a broker with other users.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PG_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_BENCH_DB = "inferq_bench"
DEFAULT_BROKER = "redis://127.0.0.1:6379/3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**inferq: str) -> dict[str, str]:
    """This environment without its ``INFERQ_*`` variables, plus ``inferq`` (upper-cased)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
    env.update({f"INFERQ_{k.upper()}": v for k, v in inferq.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Proc:
    """A child process with its log file; ``stop`` ends exactly this PID."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, name: str) -> None:
        self.name = name
        self.log = log
        self._fh = log.open("ab")
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout: float = 90) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if needle in self.output():
                return
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.output()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"{self.name}: no {needle!r} in {timeout}s:\n{self.output()[-3000:]}")

    def stop(self, timeout: float = 15) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(10)
        self._fh.close()


def celery_worker_argv(
    app: str, *, queues: list[str], node: str, pool: str, concurrency: int, log_level: str
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "--pool",
        pool,
        "-c",
        str(concurrency),
        "-Q",
        ",".join(queues),
        "--without-mingle",
        "--without-gossip",
        "-n",
        f"{node}@%h",
        "--loglevel",
        log_level,
    ]


def resolve_database(explicit: str | None) -> tuple[str, bool]:
    """(URL, whether it is the benchmark's own database that may be dropped and made afresh)."""
    url = explicit or os.environ.get("INFERQ_DATABASE_URL")
    if url:
        return url, False
    base, _, _ = DEFAULT_PG_SERVER.rpartition("/")
    return f"{base}/{DEFAULT_BENCH_DB}", True


def fresh_database(url: str) -> None:
    """Drop and create the database ``url`` names (connecting to its server's ``postgres``)."""
    from sqlalchemy import create_engine, text

    from app.settings import Settings

    full = Settings(database_url=url).database_url
    base, _, name = full.rpartition("/")
    admin = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


def migrate(url: str) -> None:
    from app.db.engine import migrate as run_migrations
    from app.settings import Settings

    run_migrations(Settings(database_url=url).database_url)


def purge_queues(broker_url: str, queues: list[str]) -> None:
    """Delete ``queues`` so the broker does not keep what a benchmark left."""
    from kombu.connection import Connection

    if not broker_url.startswith(("redis://", "amqp://", "rediss://")):
        return
    try:
        with Connection(broker_url, connect_timeout=3) as conn:  # type: ignore[no-untyped-call]
            channel = conn.default_channel
            for q in queues:
                try:
                    channel.queue_delete(q)
                except Exception:
                    channel = conn.channel()
    except Exception as exc:
        print(f"  (could not purge queues: {exc})", flush=True)


@dataclass
class StackConfig:
    """What a benchmark stack runs with; the same settings go to ``raw`` and ``naive``."""

    database_url: str
    broker_url: str
    models_dir: Path
    models: list[str]
    workers: int = 2
    runner_threads: int = 1
    intra_op_threads: int = 1
    concurrency: int = 32
    api_procs: int = 1
    """HTTP server worker processes of the API."""
    http_server: str = "uvicorn"
    """``uvicorn`` or ``granian`` (``inferq api --server``)."""
    providers: list[str] = field(default_factory=list)
    beat: bool = True
    log_level: str = "INFO"
    """Log level of every process; the CLI's default (INFO) also logs each Celery task."""
    overrides: dict[str, str] = field(default_factory=dict)
    """Further inferq settings for the API and workers (``job_chunk_lines`` becomes
    INFERQ_JOB_CHUNK_LINES): the stack does not inherit the caller's ``INFERQ_*`` variables, so an
    A/B says what it sets."""
    worker_env: dict[str, str] = field(default_factory=dict)
    """Environment variables for the worker processes only (not the API), taken as they are:
    ``accel-sim`` sets INFERQ_BENCH_SIMULATED_DEVICE here."""
    prefix: str = field(default_factory=lambda: f"bench{uuid.uuid4().hex[:8]}")
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="inferq-bench-")))


class Stack:
    """API + ``workers`` Celery worker processes (+ beat) of inferq on loopback."""

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.api: Proc | None = None
        self.workers: list[Proc] = []
        self.beat: Proc | None = None
        self.base_url = ""
        self.env = child_env(
            **cfg.overrides,
            database_url=cfg.database_url,
            broker_url=cfg.broker_url,
            models_dir=str(cfg.models_dir),
            queue_prefix=cfg.prefix,
            runner_threads=str(cfg.runner_threads),
            intra_op_threads=str(cfg.intra_op_threads),
            worker_concurrency=str(cfg.concurrency),
            providers=json.dumps(cfg.providers),
            log_json="true",
            log_level=cfg.log_level,
        )

    @property
    def queues(self) -> list[str]:
        p = self.cfg.prefix
        return [f"{p}.{m}" for m in self.cfg.models] + [f"{p}.maintenance", f"{p}.default"]

    def _start_workers(self) -> None:
        for i in range(self.cfg.workers):
            argv = celery_worker_argv(
                "workers.celery_app:celery_app",
                queues=self.queues,
                node=f"{self.cfg.prefix}-w{i}",
                pool="threads",
                concurrency=self.cfg.concurrency,
                log_level=self.cfg.log_level,
            )
            env = {**self.env, **self.cfg.worker_env}
            self.workers.append(Proc(argv, env, self.cfg.log_dir / f"worker{i}.log", "worker"))

    def _start_api(self) -> None:
        from app.cli.processes import api_argv

        port = free_port()
        argv = api_argv("127.0.0.1", port, self.cfg.api_procs, server=self.cfg.http_server)
        self.api = Proc(argv, self.env, self.cfg.log_dir / "api.log", "api")
        self.base_url = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if not self.api.alive():
                raise RuntimeError(f"api exited:\n{self.api.output()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"api did not answer:\n{self.api.output()[-3000:]}")

    def start(self) -> Stack:
        if self.api is not None or self.workers:
            raise RuntimeError("this stack is already started (with Stack(cfg) starts it)")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self._start_workers()
        if self.cfg.beat:
            argv = [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.celery_app:celery_app",
                "beat",
                "-s",
                str(self.cfg.log_dir / "beat-schedule"),
                "--loglevel",
                "WARNING",
            ]
            self.beat = Proc(argv, self.env, self.cfg.log_dir / "beat.log", "beat")
        self._start_api()
        for w in self.workers:
            w.wait_for_log(" ready.")

    def pids(self) -> dict[str, int]:
        out = {f"worker{i}": w.pid for i, w in enumerate(self.workers)}
        if self.api is not None:
            out["api"] = self.api.pid
            if self.cfg.api_procs > 1:
                out.update({f"api{i}": pid for i, pid in enumerate(self.api_servers())})
        return out

    def api_servers(self) -> list[int]:
        """The processes that serve HTTP: the API process, or with ``api_procs`` > 1 the
        workers uvicorn's supervisor spawned (not the supervisor, nor its resource tracker)."""
        if self.api is None:
            return []
        if self.cfg.api_procs == 1:
            return [self.api.pid]
        from bench.procstat import children

        def spawned(pid: int) -> bool:
            try:
                return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                return False

        return [pid for pid in children(self.api.pid) if spawned(pid)]

    def providers_used(self) -> list[str]:
        """The providers the workers' ONNX sessions report (from their start-up logs)."""
        seen: list[str] = []
        for w in self.workers:
            for line in w.output().splitlines():
                if "onnx session ready" not in line:
                    continue
                try:
                    providers = json.loads(line).get("providers") or []
                except ValueError:
                    continue
                if providers and providers[0] not in seen:
                    seen.append(providers[0])
        return seen

    def stop(self) -> None:
        for p in [self.api, self.beat, *self.workers]:
            if p is not None:
                p.stop()
        purge_queues(self.cfg.broker_url, self.queues)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def start_naive_worker(cfg: StackConfig, queue: str) -> Proc:
    """The naive Celery worker: prefork, ``cfg.workers`` processes, same broker and model."""
    env = child_env(
        models_dir=str(cfg.models_dir),
        intra_op_threads=str(cfg.intra_op_threads),
        providers=json.dumps(cfg.providers),
    )
    env.update(
        BENCH_NAIVE_BROKER=cfg.broker_url,
        BENCH_NAIVE_BACKEND=cfg.broker_url,
        BENCH_NAIVE_QUEUE=queue,
        BENCH_NAIVE_MODELS=",".join(cfg.models),
    )
    argv = celery_worker_argv(
        "bench.naive:app",
        queues=[queue],
        node=f"{cfg.prefix}-naive",
        pool="prefork",
        concurrency=cfg.workers,
        log_level=cfg.log_level,
    )
    p = Proc(argv, env, cfg.log_dir / "naive-worker.log", "naive-worker")
    p.wait_for_log(" ready.")
    return p
