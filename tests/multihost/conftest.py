"""A cluster of hosts in network namespaces: a client, an API host (API and beat), a services
host (its own Postgres and Redis on its address) and worker hosts started per test.

Every host has its own folder (``TMPDIR``, ``INFERQ_VAR_DIR``) and its own copy of the models;
the code is all they share. Processes are stopped by PID at the end (``tests.support.netns``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from tests.support import netns
from tests.support.netns import Host, Network
from tests.support.procs import Proc
from tests.support.services import unique

BIN = Path(sys.executable).parent
MODEL = "churn-risk"
FAST = {
    "LEASE_SECONDS": "4",
    # inferq bounds its own sessions (app.db.engine.session_bounds): half a lease here
    "DB_SESSION_TIMEOUT_SECONDS": "2",
    "SWEEP_INTERVAL_SECONDS": "1",
    "REQUEUE_AFTER_SECONDS": "2",
    "WEBHOOK_TIMEOUT_SECONDS": "1",
    "JOB_CHUNK_LINES": "20",
    "JOB_TAIL_SPLIT": "1",
}
"""Short leases and sweeps so a lost host is noticed in seconds."""

SESSION_BOUNDS: dict[str, str] = {}
"""Server settings of the services host's Postgres beyond the defaults: none. A backend whose
client vanished mid-transaction (a worker cut off between its result ``UPDATE`` and its
``COMMIT``) must end, and drop its row locks, within half a lease, or the sweeper could hand
nothing it held to another worker; inferq sets that on its own sessions
(``INFERQ_DB_SESSION_TIMEOUT_SECONDS``, ``app.db.engine.session_bounds``), so a stock server
is what these tests run against."""


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _skip_or_fail(reason: str) -> None:
    """Skip where the machine does not allow it; in CI that is a failure (it must run there)."""
    if _in_ci():
        pytest.fail(reason)
    pytest.skip(reason)


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


@dataclass
class Cluster:
    net: Network
    client: Host
    api: Host
    svc: Host
    workers: dict[str, Host]
    db_url: str
    broker_url: str
    base_url: str
    settings: dict[str, str]
    started: list[Proc] = field(default_factory=list)
    """Every worker started so far (they name their logs by count)."""

    def env(self, host: Host) -> dict[str, str]:
        """The environment of an inferq process on ``host``: its own folders and models."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
        env.update(
            {
                "TMPDIR": str(host.tmp / "tmp"),
                "HOME": str(host.tmp),
                "PYTHONUNBUFFERED": "1",
                "INFERQ_VAR_DIR": str(host.tmp / "var"),
                "INFERQ_MODELS_DIR": str(host.tmp / "models"),
                "INFERQ_DATABASE_URL": self.db_url,
                "INFERQ_BROKER_URL": self.broker_url,
                "INFERQ_LOG_JSON": "true",
                "INFERQ_EGRESS_ALLOW": self.client.addr,
                **{f"INFERQ_{k}": v for k, v in self.settings.items()},
            }
        )
        return env

    def queues(self) -> list[str]:
        prefix = self.settings["QUEUE_PREFIX"]
        return [f"{prefix}.{MODEL}", f"{prefix}.maintenance", f"{prefix}.default"]

    def start_worker(
        self, host: Host, concurrency: int = 8, env: dict[str, str] | None = None
    ) -> Proc:
        """A Celery worker on ``host`` (stopped with the host, or by the test)."""
        argv = [
            str(BIN / "celery"),
            "-A",
            "workers.celery_app:celery_app",
            "worker",
            "--pool",
            "threads",
            "-c",
            str(concurrency),
            "-Q",
            ",".join(self.queues()),
            "--without-mingle",
            "--without-gossip",
            "-n",
            f"{host.name}-{os.getpid()}-{len(self.started)}@%h",
            "--loglevel",
            "INFO",
        ]
        # a log of its own per start: a test reads only its own worker's lines
        proc = host.spawn(argv, {**self.env(host), **(env or {})}, f"worker{len(self.started)}")
        self.started.append(proc)
        proc.wait_for_log(" ready.", timeout=90)
        return proc

    def engine(self) -> Engine:
        """An engine on the services host's Postgres (connect from the client host)."""
        return create_engine(self.db_url, pool_size=2)


def _copy_models(models_dir: Path, host: Host) -> None:
    shutil.copytree(models_dir / MODEL, host.tmp / "models" / MODEL)


def _start_postgres(host: Host, net: Network, data: Path) -> str:
    initdb, postgres = _pg_bin("initdb"), _pg_bin("postgres")
    if not (initdb and postgres):
        _skip_or_fail("no PostgreSQL binaries (initdb, postgres) on this machine")
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        _skip_or_fail("no 'postgres' user to run PostgreSQL as (it refuses root)")
    os.chown(data, pw.pw_uid, pw.pw_gid)
    as_pg = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups"]
    pgdata = data / "pgdata"
    host.run([*as_pg, str(initdb), "-D", str(pgdata), "-U", "postgres", "-A", "trust", "-E",
              "UTF8", "--no-sync"], timeout=120)  # fmt: skip
    with (pgdata / "pg_hba.conf").open("a") as f:
        f.write(f"host all all {net.subnet}.0/24 trust\n")
    settings = {
        "listen_addresses": host.addr,
        "port": "5432",
        "unix_socket_directories": "",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "300",
        **SESSION_BOUNDS,
    }
    argv = [*as_pg, str(postgres), "-D", str(pgdata)]
    for k, v in settings.items():
        argv += ["-c", f"{k}={v}"]
    # SIGINT: a fast shutdown (SIGTERM would wait for every client to leave)
    proc = host.spawn(argv, dict(os.environ), "postgres", sig=signal.SIGINT)
    proc.wait_for_log("ready to accept connections", timeout=60)
    return f"postgresql+psycopg://postgres@{host.addr}:5432/postgres"


def _start_redis(host: Host) -> str:
    redis = shutil.which("redis-server")
    if not redis:
        _skip_or_fail("no redis-server on this machine")
    argv = [str(redis), "--bind", host.addr, "--port", "6379", "--save", "",
            "--appendonly", "no", "--protected-mode", "no", "--dir", str(host.tmp)]  # fmt: skip
    host.spawn(argv, dict(os.environ), "redis").wait_for_log("Ready to accept", timeout=30)
    return f"redis://{host.addr}:6379/0"


def _start_api(cluster: Cluster) -> None:
    api = cluster.api
    env = cluster.env(api)
    api.run([str(BIN / "inferq"), "migrate"], env=env, timeout=120)
    argv = [str(BIN / "uvicorn"), "api.main:create_app", "--factory", "--host", api.addr,
            "--port", "8000", "--no-access-log"]  # fmt: skip
    proc = api.spawn(argv, env, "api")
    with cluster.net.entered(cluster.client):
        end = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{cluster.base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if not proc.alive() or time.monotonic() > end:
                raise RuntimeError(f"api did not answer:\n{proc.output()[-4000:]}")
            time.sleep(0.2)
    beat = [str(BIN / "celery"), "-A", "workers.celery_app:celery_app", "beat", "-s",
            str(api.tmp / "beat-schedule"), "--loglevel", "INFO"]  # fmt: skip
    api.spawn(beat, env, "beat")


@pytest.fixture(scope="module")
def cluster(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Client, API, services and two worker hosts (``wa``, ``wb``); workers start per test."""
    reason = netns.unavailable()
    if reason:
        _skip_or_fail(reason)
    tmp = tmp_path_factory.mktemp("hosts")
    # Postgres runs as its own user, who cannot enter pytest's (root-only) temporary folder
    pg_data = Path(tempfile.mkdtemp(prefix=f"{netns.PREFIX}{os.getpid()}-pg-"))
    net = Network(tmp)
    try:
        client, api, svc = net.add_host("client"), net.add_host("api"), net.add_host("svc")
        workers = {n: net.add_host(n) for n in ("wa", "wb")}
        for host in (api, *workers.values()):
            _copy_models(models_dir, host)
        db_url = _start_postgres(svc, net, pg_data)
        broker_url = _start_redis(svc)
        settings = {**FAST, "QUEUE_PREFIX": unique("mh")}
        cluster = Cluster(
            net, client, api, svc, workers, db_url, broker_url, f"http://{api.addr}:8000", settings
        )
        _start_api(cluster)
        yield cluster
    finally:
        try:
            net.close()
        finally:
            shutil.rmtree(pg_data, ignore_errors=True)


@pytest.fixture
def on_client(cluster: Cluster) -> Iterator[Cluster]:
    """The test runs on the client host's network (threads it starts too)."""
    with cluster.net.entered(cluster.client):
        yield cluster
