"""The completion hub on a real Postgres: NOTIFY fan-out and the ids a process expects."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from app.notify import CompletionHub


@pytest.fixture
def hub(pg_url: str) -> Iterator[CompletionHub]:
    h = CompletionHub(pg_url)
    h.start()
    assert h.connected.wait(10), "the listener did not connect"
    yield h
    h.stop()


def notify(pg_url: str, payload: str) -> None:
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_notify('inferq_done', :p)"), {"p": payload})
    engine.dispose()


def fired(hub: CompletionHub, pid: str) -> threading.Event:
    seen = threading.Event()
    hub.subscribe(pid, lambda _: seen.set())
    return seen


def test_a_notify_wakes_subscribers_and_ends_expectation(hub: CompletionHub, pg_url: str) -> None:
    hub.expect(["a", "b", "c"], "t1")
    seen = fired(hub, "a")
    notify(pg_url, "a,zzz")
    assert seen.wait(10)
    assert not hub.still_pending("a", "t1")  # finished: a long-poll must read it
    assert hub.still_pending("b", "t1")
    assert not hub.still_pending("b", "t1")  # once only: a second long-poll reads
    assert not hub.still_pending("c", "t2")  # another tenant's id is read (and gets its 404)
    assert not hub.still_pending("never-submitted", "t1")


def test_forget_drops_ids_that_were_not_stored(hub: CompletionHub) -> None:
    hub.expect(["x", "y"], "t1")
    hub.forget(["x"])
    assert not hub.still_pending("x", "t1")
    assert hub.still_pending("y", "t1")


def test_a_lost_listener_connection_forgets_every_expected_id(
    hub: CompletionHub, pg_url: str
) -> None:
    hub.expect(["p1", "p2"], "t1")
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        killed = conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query = 'LISTEN inferq_done' AND datname = current_database()"
            )
        ).all()
    engine.dispose()
    assert killed, "no listener backend found"
    end = time.monotonic() + 10
    while hub.connected.is_set() and time.monotonic() < end:
        time.sleep(0.02)
    assert hub.connected.wait(15), "the listener did not reconnect"
    # NOTIFYs sent while it was away are lost: nothing it expected may skip its read
    assert not hub.still_pending("p1", "t1")
    assert not hub.still_pending("p2", "t1")
    hub.expect(["p3"], "t1")
    seen = fired(hub, "p3")
    notify(pg_url, "p3")
    assert seen.wait(10)


def test_without_postgres_nothing_is_expected() -> None:
    h = CompletionHub("sqlite:///unused.db")
    h.start()
    h.expect(["a"], "t1")
    assert not h.enabled and not h.still_pending("a", "t1")
    h.stop()
