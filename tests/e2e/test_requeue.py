"""No amplification, with real brokers: a backlog older than the requeue time is not copied
sweep after sweep, a lost message is published again within a couple of sweeps, and the backlog
then runs to the end with nothing lost."""

from __future__ import annotations

import time

import pytest
import redis
from kombu import Connection
from sqlalchemy.orm import Session, sessionmaker

from tests.conftest import StackFactory
from tests.e2e.test_faults import counts
from tests.support.procs import start_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

N = 2000


def depth(url: str, queue: str) -> int:
    """Ready messages on ``queue``: LLEN on Redis, a passive declare on RabbitMQ."""
    if url.startswith("redis://"):
        return int(redis.Redis.from_url(url).llen(queue))
    with Connection(url, connect_timeout=3) as conn:
        return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)


def purge(url: str, queue: str) -> None:
    """Lose every message of ``queue`` (as a broker restarted without persistence would)."""
    with Connection(url, connect_timeout=3) as conn:
        conn.default_channel.queue_purge(queue)


def sample(url: str, queue: str, seconds: float) -> list[int]:
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.append(depth(url, queue))
        time.sleep(0.25)
    return out


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_a_backlog_is_not_copied_and_a_lost_message_comes_back(
    make_stack: StackFactory,
    broker: str,
    request: pytest.FixtureRequest,
    pg_sessions: sessionmaker[Session],
) -> None:
    url = request.getfixturevalue("redis_url" if broker == "redis" else "amqp_url")
    stack = make_stack(url, workers=0, beat=True, requeue_after_seconds=1)
    # beat's sweeper runs, but nothing consumes the model's queue: a backlog that waits
    sweeper = start_worker(
        stack.env,
        stack.tmp / "sweeper.log",
        queues=[f"{stack.prefix}.maintenance"],
        concurrency=2,
        name="sweeper",
    )
    stack.procs.append(sweeper)
    queue = f"{stack.prefix}.churn-risk"
    with stack.client() as c:
        for start in range(0, N, 250):
            inputs = [{"features": [0.001 * (start + i)] * 12} for i in range(250)]
            r = c.post("/v1/predictions", json={"model": "churn-risk", "inputs": inputs})
            assert r.status_code == 202, r.text
    time.sleep(1.5)  # older than the requeue time now
    first = depth(url, queue)
    assert first > 0
    beat = next(p for p in stack.procs if p.name == "beat")
    sent = beat.output().count("Sending due task inferq-sweep")
    depths = sample(url, queue, 10)
    sweeps = beat.output().count("Sending due task inferq-sweep") - sent
    assert sweeps >= 8 and depth(url, f"{stack.prefix}.maintenance") <= 1  # and they ran
    assert max(depths) <= first, depths  # each sweep used to add ~N/256 messages

    purge(url, queue)  # every message is lost: published again within a couple of sweeps
    end = time.monotonic() + 5
    while depth(url, queue) == 0:
        assert time.monotonic() < end, "the lost messages were not published again"
        time.sleep(0.2)
    again = sample(url, queue, 3)
    assert 0 < max(again) <= -(-N // 256), again  # once: N ids in messages of 256

    stack.start_worker("worker")
    end = time.monotonic() + 90
    while counts(pg_sessions).get("succeeded", 0) < N and time.monotonic() < end:
        time.sleep(0.5)
    assert counts(pg_sessions) == {"succeeded": N}
