"""The completion hub on a real Postgres: NOTIFY fan-out and the ids a process expects."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from app.db.predictions import Final, notify_done
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


def send_finals(pg_url: str, ids: list[str], finals: list[Final]) -> None:
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with Session(engine) as s, s.begin():
        notify_done(session=s, ids=ids, finals=finals)
    engine.dispose()


def test_a_notify_brings_final_documents_to_their_own_tenant_only(
    hub: CompletionHub, pg_url: str
) -> None:
    soon = datetime.now(UTC) + timedelta(hours=1)
    past = datetime.now(UTC) - timedelta(seconds=1)
    docs = {
        "d1": Final("d1", "t1", soon, orjson.dumps({"id": "d1", "note": "tab\there"})),
        "d2": Final("d2", "t1", soon, orjson.dumps({"id": "d2"})),
        "d3": Final("d3", "t1", past, orjson.dumps({"id": "d3"})),
        "d4": Final("d4", "t1", None, orjson.dumps({"id": "d4"})),
    }
    seen = {pid: fired(hub, pid) for pid in docs}
    send_finals(pg_url, [*docs, "plain"], list(docs.values()))
    for pid, event in seen.items():
        assert event.wait(10), pid
    assert hub.take_final("d1", "t1") == docs["d1"].doc  # as sent, a tab inside it too
    assert hub.take_final("d1", "t1") is None  # taken once; a second waiter reads
    assert hub.take_final("d2", "t2") is None  # another tenant's: never handed over
    assert hub.take_final("d2", "t1") is None  # (and not kept for the right one after that)
    assert hub.take_final("d3", "t1") is None  # expired: the read answers its 404
    assert hub.take_final("d4", "t1") == docs["d4"].doc  # kept forever: never expires


def test_documents_nobody_waits_on_are_not_kept_and_big_ones_go_as_ids(
    hub: CompletionHub, pg_url: str
) -> None:
    big = Final("big", "t1", None, orjson.dumps({"output": "x" * 9000}))
    many = [
        Final(f"m{i}", "t1", None, orjson.dumps({"id": f"m{i}", "pad": "y" * 900}))
        for i in range(30)
    ]  # several payloads' worth
    waited = ["big", "m0", "m29"]
    seen = {pid: fired(hub, pid) for pid in waited}
    send_finals(pg_url, ["big", *(f.id for f in many)], [big, *many])
    for pid in waited:
        assert seen[pid].wait(10), pid
    assert hub.take_final("big", "t1") is None  # woken by its id alone: it reads
    assert hub.take_final("m0", "t1") == many[0].doc
    assert hub.take_final("m29", "t1") == many[29].doc
    assert set(hub._finals) == set()  # the 27 nobody waited on were not kept
