"""Shared fixtures: real Postgres/Redis/RabbitMQ, the demo models, process factories."""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

import app.db
from app.db.engine import make_engine, make_sessionmaker, migrate
from app.settings import Settings, build_settings
from tests.support.procs import Proc, start_api, start_beat, start_worker
from tests.support.receiver import Receiver, serve
from tests.support.services import service_url, unique

ROOT = Path(__file__).resolve().parents[1]
for _mod in pkgutil.iter_modules(app.db.__path__):
    importlib.import_module(f"app.db.{_mod.name}")


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The demo models, built once (and kept between runs under var/test-models)."""
    from app.modelbuild import build_all

    target = Path(os.environ.get("INFERQ_TEST_MODELS_DIR", ROOT / "var" / "test-models"))
    build_all(target, quantize=False, progress=lambda _: None)
    return target


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    with service_url("postgres") as url:
        yield url


@pytest.fixture(scope="session")
def pg_url(postgres_server: str) -> Iterator[str]:
    """A fresh database for this test session, migrated once."""
    name = unique("inferq_test_")
    admin_url = Settings(database_url=postgres_server).database_url
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base, _, _ = admin_url.rpartition("/")
    url = f"{base}/{name}"
    migrate(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with service_url("redis") as url:
        yield url


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    with service_url("rabbitmq") as url:
        yield url


@pytest.fixture
def pg_sessions(pg_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on the test database, every table emptied before the test."""
    engine = make_engine(build_settings(database_url=pg_url), pool_size=5)
    with engine.begin() as conn:
        names = (
            conn.execute(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                    " AND tablename <> 'alembic_version'"
                )
            )
            .scalars()
            .all()
        )
        if names:
            conn.execute(text("TRUNCATE " + ", ".join(f'"{n}"' for n in names) + " CASCADE"))
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real HTTP server on loopback recording what it gets."""
    rec = Receiver()
    server, _ = serve(rec)
    yield rec
    server.shutdown()
    server.server_close()


@dataclass
class Stack:
    """API + workers + (optionally) beat on real services, all on loopback."""

    env: dict[str, str]
    tmp: Path
    models: list[str]
    procs: list[Proc] = field(default_factory=list)
    base_url: str = ""
    api: Proc | None = None

    @property
    def prefix(self) -> str:
        return self.env["INFERQ_QUEUE_PREFIX"]

    def queues(self) -> list[str]:
        return [f"{self.prefix}.{m}" for m in self.models] + [
            f"{self.prefix}.maintenance",
            f"{self.prefix}.default",
        ]

    def start_worker(
        self, name: str = "worker", concurrency: int = 16, queues: list[str] | None = None
    ) -> Proc:
        p = start_worker(
            self.env,
            self.tmp / f"{name}-{len(self.procs)}.log",
            queues=queues or self.queues(),
            concurrency=concurrency,
            name=name,
        )
        self.procs.append(p)
        return p

    def start_api(self) -> str:
        self.api, self.base_url = start_api(self.env, self.tmp / "api.log")
        self.procs.append(self.api)
        return self.base_url

    def start_beat(self) -> Proc:
        p = start_beat(self.env, self.tmp / "beat.log", self.tmp / "beat-schedule")
        self.procs.append(p)
        return p

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=40, **kw)

    def settings(self) -> Settings:
        return build_settings(
            **{
                k[len("INFERQ_") :].lower(): v
                for k, v in self.env.items()
                if k.startswith("INFERQ_") and k != "INFERQ_API_KEYS"
            }
        )

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()


class StackFactory:
    """Builds stacks on one database and one models folder; stops them all at the end."""

    def __init__(self, pg_url: str, models_dir: Path, tmp: Path) -> None:
        self.pg_url, self.models_dir, self.tmp = pg_url, models_dir, tmp
        self.stacks: list[Stack] = []

    def __call__(
        self,
        broker_url: str,
        *,
        api: bool = True,
        workers: int = 1,
        beat: bool = False,
        **settings: Any,
    ) -> Stack:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
        env.update(
            {
                "INFERQ_DATABASE_URL": self.pg_url,
                "INFERQ_BROKER_URL": broker_url,
                "INFERQ_MODELS_DIR": str(self.models_dir),
                "INFERQ_QUEUE_PREFIX": unique("t"),
                "INFERQ_LOG_JSON": "true",
                "INFERQ_SWEEP_INTERVAL_SECONDS": "1",
                # the tests' receivers and fake APIs listen on 127.0.0.1
                "INFERQ_EGRESS_ALLOW": "127.0.0.1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update({f"INFERQ_{k.upper()}": str(v) for k, v in settings.items()})
        models = sorted({p.parent.parent.name for p in self.models_dir.glob("*/*/manifest.json")})
        tmp = self.tmp / f"stack{len(self.stacks)}"
        tmp.mkdir(parents=True, exist_ok=True)
        stack = Stack(env, tmp, models)
        self.stacks.append(stack)
        for n in range(workers):
            stack.start_worker(f"worker{n}")
        if beat:
            stack.start_beat()
        if api:
            stack.start_api()
        return stack

    def close(self, show_logs: bool) -> None:
        for s in self.stacks:
            s.stop()
            _purge_queues(s)
        if show_logs:
            for s in self.stacks:
                for log in sorted(s.tmp.glob("*.log")):
                    print(f"--- {log} ---\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture
def make_stack(
    pg_url: str,
    pg_sessions: sessionmaker[Session],
    models_dir: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[StackFactory]:
    """Factory: ``make_stack(broker_url, api=True, workers=1, beat=False, **INFERQ_settings)``."""
    factory = StackFactory(pg_url, models_dir, tmp_path)
    yield factory
    rep = getattr(request.node, "rep_call", None)
    factory.close(show_logs=bool(rep and rep.failed))


@pytest.fixture(scope="module")
def module_stacks(
    pg_url: str, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StackFactory]:
    """Like ``make_stack`` but shared by a module's tests (the database is not wiped between)."""
    factory = StackFactory(pg_url, models_dir, tmp_path_factory.mktemp("stacks"))
    yield factory
    factory.close(show_logs=False)


def _purge_queues(stack: Stack) -> None:
    """Delete this stack's queues so brokers do not fill up across runs."""
    from kombu import Connection

    url = stack.env["INFERQ_BROKER_URL"]
    if not url.startswith(("redis://", "amqp://")):
        return
    try:
        with Connection(url, connect_timeout=3) as conn:
            channel = conn.default_channel
            for q in stack.queues():
                try:
                    channel.queue_delete(q)
                except Exception:
                    channel = conn.channel()
    except Exception:
        pass


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
