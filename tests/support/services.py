"""Where the real Postgres, Redis and RabbitMQ are.

A URL from the environment if set; else a testcontainers container if a Docker engine
answers; else the test is skipped on a laptop and fails in CI (``CI=true``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

ENV = {
    "postgres": "INFERQ_TEST_POSTGRES_URL",
    "redis": "INFERQ_TEST_REDIS_URL",
    "rabbitmq": "INFERQ_TEST_AMQP_URL",
}


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@contextmanager
def service_url(kind: str) -> Iterator[str]:
    url = os.environ.get(ENV[kind])
    if url:
        yield url
        return
    if _docker_answers():
        with _container(kind) as url:
            yield url
        return
    message = f"no {kind}: set {ENV[kind]} or run a Docker engine"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def _container(kind: str) -> Iterator[str]:
    if kind == "postgres":
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as pg:
            yield pg.get_connection_url()
    elif kind == "redis":
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7-alpine") as r:
            yield f"redis://{r.get_container_host_ip()}:{r.get_exposed_port(6379)}/0"
    else:
        from testcontainers.rabbitmq import RabbitMqContainer

        with RabbitMqContainer("rabbitmq:3.13-alpine") as mq:
            yield f"amqp://guest:guest@{mq.get_container_host_ip()}:{mq.get_exposed_port(5672)}//"


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"
