"""The egress policy at connect time, with real API and worker processes.

``hooks.example.test`` is no internal name, so every way in accepts it; the stacks answer it
with 127.0.0.1 (``INFERQ_EGRESS_RESOLVE``, as DNS would after a rebinding), where the test's
receiver listens. With nothing allowed, every delivery to it is dead at its first attempt
(``egress_denied``, never retried) and the receiver gets nothing; with the name allowed it is
delivered. Then dead letters: replayed through the API and the CLI, and kept per tenant.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.conftest import Stack, StackFactory
from tests.support.procs import BIN, ROOT
from tests.support.receiver import Receiver

pytestmark = pytest.mark.slow

HOST = "hooks.example.test"
RESOLVE = json.dumps({HOST: "127.0.0.1"})
KEYS = '{"key-a": "tenant-a", "key-b": "tenant-b"}'
A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}
FEATURES = {"features": [2.0] * 12}
TOKEN = "7311592024:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawq"
HOOK_SECRET = "tg-hook-secret_0123"
DENIED = f"egress denied: {HOST} resolves to a loopback address (127.0.0.1)"


@pytest.fixture(scope="module")
def denying(module_stacks: StackFactory, redis_url: str) -> Stack:
    """Nothing internal allowed; the name resolves to loopback."""
    return module_stacks(
        redis_url,
        api_keys=KEYS,
        egress_allow="",
        egress_resolve=RESOLVE,
        webhook_backoff_base_seconds=0.2,
        integration_backoff_base_seconds=0.2,
    )


@pytest.fixture(scope="module")
def allowing(module_stacks: StackFactory, redis_url: str) -> Stack:
    """The name allowed (whatever it resolves to); two attempts per webhook, short backoff."""
    return module_stacks(
        redis_url,
        api_keys=KEYS,
        egress_allow=HOST,
        egress_resolve=RESOLVE,
        webhook_max_attempts=2,
        webhook_backoff_base_seconds=0.2,
        integration_backoff_base_seconds=0.2,
    )


@pytest.fixture
def fresh(pg_sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """Empty tables for each test (the stacks are shared by the module)."""
    return pg_sessions


def at(receiver: Receiver, path: str = "") -> str:
    """``receiver``'s URL under the name that resolves to it."""
    return f"http://{HOST}:{urlsplit(receiver.url).port}{path}"


def until(what: str, probe: Callable[[], Any], timeout: float = 30) -> Any:
    """``probe()`` once it is truthy; fails after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.1)


def final_deliveries(c: httpx.Client, n: int, **params: str) -> list[dict[str, Any]]:
    """The tenant's deliveries once there are ``n`` and none is pending, newest first."""

    def probe() -> list[dict[str, Any]] | None:
        rows = c.get("/v1/deliveries", params=params).json()["deliveries"]
        done = len(rows) == n and all(d["status"] != "pending" for d in rows)
        return rows if done else None

    rows: list[dict[str, Any]] = until(f"{n} final deliveries", probe)
    return rows


def settled(c: httpx.Client, delivery_id: str, status: str) -> dict[str, Any]:
    """One delivery (with its attempts) once it has ``status``."""

    def probe() -> dict[str, Any] | None:
        d: dict[str, Any] = c.get(f"/v1/deliveries/{delivery_id}").json()
        return d if d["status"] == status else None

    got: dict[str, Any] = until(f"delivery {delivery_id} {status}", probe)
    return got


def assert_denied_once(c: httpx.Client, delivery: dict[str, Any]) -> dict[str, Any]:
    """Dead at the first attempt because of the egress policy, and never tried again."""
    assert delivery["status"] == "dead", delivery
    assert delivery["dead_reason"] == "egress_denied"
    assert delivery["attempt_count"] == 1
    assert delivery["last_error"].startswith(DENIED), delivery["last_error"]
    detail: dict[str, Any] = c.get(f"/v1/deliveries/{delivery['id']}").json()
    (attempt,) = detail["attempts"]
    assert attempt["outcome"] == "dead" and attempt["status_code"] is None
    assert attempt["error"].startswith(DENIED)
    return detail


def nothing_reached(receiver: Receiver, c: httpx.Client, delivery_ids: list[str]) -> None:
    """Still nothing at the receiver, and no attempt added, a while after."""
    time.sleep(1.0)
    assert receiver.requests == []
    for did in delivery_ids:
        assert c.get(f"/v1/deliveries/{did}").json()["attempt_count"] == 1


def predict(c: httpx.Client, callback_url: str) -> str:
    resp = c.post(
        "/v1/predictions",
        json={"model": "churn-risk", "input": FEATURES, "callback_url": callback_url},
    )
    assert resp.status_code == 202, resp.text
    pid = str(resp.json()["id"])
    got = c.get(f"/v1/predictions/{pid}", params={"wait": 30}).json()
    assert got["status"] == "succeeded", got
    return pid


# --- nothing internal allowed: dead at the first attempt -------------------------------------


def test_a_prediction_webhook_to_a_name_that_resolves_internal_is_dead_at_once(
    denying: Stack, receiver: Receiver, fresh: sessionmaker[Session]
) -> None:
    with denying.client(headers=A) as c:
        pid = predict(c, at(receiver, "/cb"))
        (d,) = final_deliveries(c, 1)
        assert (d["kind"], d["subject_type"], d["subject_id"]) == ("webhook", "prediction", pid)
        assert d["url"] == at(receiver, "/cb")
        assert_denied_once(c, d)
        assert c.get("/v1/deliveries", params={"status": "dead"}).json()["deliveries"] == [d]
        assert c.get("/v1/deliveries", params={"status": "pending"}).json()["deliveries"] == []
        nothing_reached(receiver, c, [d["id"]])


def test_a_job_webhook_to_a_name_that_resolves_internal_is_dead_at_once(
    denying: Stack, receiver: Receiver, fresh: sessionmaker[Session]
) -> None:
    with denying.client(headers=A) as c:
        resp = c.post(
            "/v1/jobs",
            json={
                "model": "churn-risk",
                "inputs": [FEATURES, FEATURES],
                "callback_url": at(receiver, "/job"),
            },
        )
        assert resp.status_code == 202, resp.text
        job = c.get(f"/v1/jobs/{resp.json()['id']}", params={"wait": 30}).json()
        assert job["status"] == "succeeded", job
        (d,) = final_deliveries(c, 1)
        assert (d["subject_type"], d["subject_id"]) == ("job", job["id"])
        assert_denied_once(c, d)
        nothing_reached(receiver, c, [d["id"]])


def test_telegram_replies_to_a_name_that_resolves_internal_are_dead_at_once(
    denying: Stack, receiver: Receiver, fresh: sessionmaker[Session]
) -> None:
    with denying.client(headers=A) as c:
        bot = c.post(
            "/v1/integrations",
            json={
                "kind": "telegram",
                "name": "support-bot",
                "config": {"api_base": at(receiver)},
                "secrets": {"token": TOKEN, "webhook_secret": HOOK_SECRET},
            },
        )
        assert bot.status_code == 201, bot.text
        hook = bot.json()["hook_path"]
        secret = {"X-Telegram-Bot-Api-Secret-Token": HOOK_SECRET}
        # a message: the worker answers it after the model; /start: the API answers at once
        message = c.post(hook, json=update(1, "I was charged twice for my plan"), headers=secret)
        assert message.status_code == 200 and message.json()["status"] == "queued", message.text
        start = c.post(hook, json=update(2, "/start"), headers=secret)
        assert start.status_code == 200 and start.json()["status"] == "replied", start.text
        got = c.get(f"/v1/predictions/{message.json()['prediction_id']}", params={"wait": 30})
        assert got.json()["status"] == "succeeded"

        rows = final_deliveries(c, 2, kind="integration")
        for d in rows:
            assert d["integration_id"] == bot.json()["id"]
            assert_denied_once(c, d)
        nothing_reached(receiver, c, [d["id"] for d in rows])
        activity = c.get(f"/v1/integrations/{bot.json()['id']}").json()["activity"]
        assert activity["deliveries"] == {"dead": 2}


def test_a_help_desk_write_back_to_a_name_that_resolves_internal_is_dead_at_once(
    denying: Stack, receiver: Receiver, fresh: sessionmaker[Session]
) -> None:
    with denying.client(headers=A) as c:
        desk = desk_integration(c, receiver)
        resp = ticket(c, desk, "T-1")
        assert resp.status_code == 202, resp.text
        got = c.get(f"/v1/predictions/{resp.json()['prediction_id']}", params={"wait": 30})
        assert got.json()["status"] == "succeeded"
        (d,) = final_deliveries(c, 1, kind="integration")
        assert d["integration_id"] == desk
        assert_denied_once(c, d)
        nothing_reached(receiver, c, [d["id"]])


def test_dead_letters_are_the_tenants_own(
    denying: Stack, receiver: Receiver, fresh: sessionmaker[Session]
) -> None:
    with denying.client(headers=A) as a, denying.client(headers=B) as b:
        predict(a, at(receiver, "/cb"))
        (d,) = final_deliveries(a, 1)
        assert b.get("/v1/deliveries").json() == {"deliveries": []}
        assert b.get("/v1/deliveries", params={"status": "dead"}).json() == {"deliveries": []}
        for resp in (
            b.get(f"/v1/deliveries/{d['id']}"),
            b.post(f"/v1/deliveries/{d['id']}/replay"),
        ):
            assert resp.status_code == 404, resp.text
            assert resp.json()["error"]["code"] == "not_found"
            assert d["id"] in resp.json()["error"]["message"]
        time.sleep(0.5)
        assert a.get(f"/v1/deliveries/{d['id']}").json()["attempt_count"] == 1  # B replayed nothing
        assert receiver.requests == []


# --- the name allowed: delivered; dead letters replayed ---------------------------------------


def test_an_allowed_name_is_delivered(
    allowing: Stack, receiver: Receiver, fresh: sessionmaker[Session]
) -> None:
    with allowing.client(headers=A) as c:
        predict(c, at(receiver, "/cb"))
        (hook,) = receiver.wait_for(lambda rs: len(rs) >= 1)
        assert (
            hook.path == "/cb" and hook.headers["host"] == f"{HOST}:{urlsplit(at(receiver)).port}"
        )
        (d,) = final_deliveries(c, 1)
        assert d["status"] == "delivered" and d["attempt_count"] == 1
        assert hook.headers["x-inferq-delivery"] == d["id"]

        bot = c.post(
            "/v1/integrations",
            json={
                "kind": "telegram",
                "name": "support-bot",
                "config": {"api_base": at(receiver)},
                "secrets": {"token": TOKEN, "webhook_secret": HOOK_SECRET},
            },
        ).json()
        start = c.post(
            bot["hook_path"],
            json=update(3, "/start"),
            headers={"X-Telegram-Bot-Api-Secret-Token": HOOK_SECRET},
        )
        assert start.json()["status"] == "replied", start.text
        sent = receiver.wait_for(lambda rs: len(rs) >= 2)[1]
        assert sent.path == f"/bot{TOKEN}/sendMessage" and sent.json()["chat_id"] == 777003
        (reply,) = final_deliveries(c, 1, kind="integration")
        assert reply["status"] == "delivered" and reply["attempt_count"] == 1


def test_a_dead_letter_replayed_once_the_name_is_allowed_is_delivered(
    denying: Stack, allowing: Stack, receiver: Receiver, fresh: sessionmaker[Session]
) -> None:
    with denying.client(headers=A) as c:
        predict(c, at(receiver, "/cb"))
        (d,) = final_deliveries(c, 1)
        assert_denied_once(c, d)
        # replayed where the policy still refuses: a fresh attempt, refused again
        again = c.post(f"/v1/deliveries/{d['id']}/replay")
        assert again.status_code == 202 and again.json()["replayed"] is True, again.text
        denied = settled_after(c, d["id"], attempts=2)
        assert denied["status"] == "dead" and denied["dead_reason"] == "egress_denied"
        assert [a["outcome"] for a in denied["attempts"]] == ["dead", "dead"]
    assert receiver.requests == []
    with allowing.client(headers=A) as c:  # the operator allowed the name: replay it there
        replayed = c.post(f"/v1/deliveries/{d['id']}/replay")
        assert replayed.status_code == 202 and replayed.json()["replayed"] is True
        (hook,) = receiver.wait_for(lambda rs: len(rs) >= 1)
        assert hook.headers["x-inferq-delivery"] == d["id"]
        done = settled(c, d["id"], "delivered")
        assert done["attempt_count"] == 3 and done["dead_reason"] is None
        assert [a["outcome"] for a in done["attempts"]] == ["dead", "dead", "delivered"]
        assert [a["status_code"] for a in done["attempts"]] == [None, None, 200]
        twice = c.post(f"/v1/deliveries/{d['id']}/replay")  # not dead: left alone
        assert twice.status_code == 202 and twice.json()["replayed"] is False
    time.sleep(0.5)
    assert len(receiver.requests) == 1


def test_a_dead_letter_given_up_after_max_attempts_is_replayed(
    allowing: Stack, receiver: Receiver, fresh: sessionmaker[Session]
) -> None:
    receiver.fail_next = 5
    with allowing.client(headers=A) as c:
        predict(c, at(receiver, "/cb"))
        (d,) = final_deliveries(c, 1)
        assert (d["status"], d["dead_reason"], d["attempt_count"]) == ("dead", "max_attempts", 2)
        assert c.get("/v1/deliveries", params={"status": "dead"}).json()["deliveries"] == [d]
        receiver.fail_next = 0
        replayed = c.post(f"/v1/deliveries/{d['id']}/replay")
        assert replayed.status_code == 202 and replayed.json()["replayed"] is True
        done = settled(c, d["id"], "delivered")
        assert done["attempt_count"] == 3
        assert [a["status_code"] for a in done["attempts"]] == [500, 500, 200]
        assert [a["outcome"] for a in done["attempts"]] == ["retry", "dead", "delivered"]
    assert len(receiver.requests) == 3
    assert len({r.headers["x-inferq-delivery"] for r in receiver.requests}) == 1


def test_the_cli_lists_and_replays_dead_letters_by_reason(
    denying: Stack, allowing: Stack, receiver: Receiver, fresh: sessionmaker[Session]
) -> None:
    with denying.client(headers=A) as c:
        predict(c, at(receiver, "/denied"))
        (denied,) = final_deliveries(c, 1)
    receiver.fail_next = 5
    with allowing.client(headers=A) as c:
        predict(c, at(receiver, "/cb"))
        (given_up,) = [d for d in final_deliveries(c, 2, status="dead") if d["id"] != denied["id"]]
    assert given_up["dead_reason"] == "max_attempts" and given_up["id"] != denied["id"]
    receiver.fail_next = 0

    listed = cli(allowing, "list", "--status", "dead")
    lines = {line.split("\t")[0]: line.split("\t") for line in listed.stdout.splitlines()}
    assert set(lines) == {denied["id"], given_up["id"]}, listed.stdout
    assert lines[given_up["id"]][1:5] == ["webhook", "dead", "max_attempts", "2"]
    assert lines[denied["id"]][1:5] == ["webhook", "dead", "egress_denied", "1"]
    assert "2 deliveries" in listed.stderr

    replayed = cli(allowing, "replay", "--all", "--reason", "max_attempts")
    assert replayed.stdout.split() == [given_up["id"]], replayed.stdout
    beat = allowing.start_beat()  # the sweeper sends what the CLI made pending
    try:
        with allowing.client(headers=A) as c:
            done = settled(c, given_up["id"], "delivered")
            assert done["attempt_count"] == 3
            assert [a["status_code"] for a in done["attempts"]] == [500, 500, 200]
            still = c.get(f"/v1/deliveries/{denied['id']}").json()
            assert (still["status"], still["dead_reason"]) == ("dead", "egress_denied")
    finally:
        beat.stop()
        allowing.procs.remove(beat)
    assert [r.path for r in receiver.requests] == ["/cb"] * 3
    assert cli(allowing, "list", "--status", "dead").stdout.split("\t")[0] == denied["id"]


# --- helpers -----------------------------------------------------------------------------------


def update(uid: int, text: str) -> dict[str, Any]:
    """A Telegram ``Update`` with a text message."""
    return {
        "update_id": uid,
        "message": {
            "message_id": 1000 + uid,
            "from": {"id": 42, "is_bot": False, "first_name": "Ann"},
            "chat": {"id": 777000 + uid, "type": "private"},
            "date": 1_700_000_000,
            "text": text,
        },
    }


def desk_integration(c: httpx.Client, receiver: Receiver) -> str:
    resp = c.post(
        "/v1/integrations",
        json={
            "kind": "generic",
            "name": "other-desk",
            "config": {
                "id_field": "/ticket/id",
                "text_fields": ["ticket.title", "ticket.body"],
                "signature_header": "X-Desk-Signature",
                "signature_prefix": "sha256=",
                "write_back": {
                    "url": at(receiver, "/api/tickets/{{ticket_id}}"),
                    "method": "PATCH",
                    "body": {"labels": "{{tags}}", "note": "{{note}}"},
                },
            },
            "secrets": {"signing_secret": "desk-secret"},
        },
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def ticket(c: httpx.Client, desk: str, ticket_id: str) -> httpx.Response:
    body = orjson.dumps(
        {"ticket": {"id": ticket_id, "title": "Invoice wrong", "body": "VAT is missing"}}
    )
    mac = hmac.new(b"desk-secret", body, hashlib.sha256).hexdigest()
    return c.post(
        f"/hooks/tickets/{desk}", content=body, headers={"X-Desk-Signature": f"sha256={mac}"}
    )


def settled_after(c: httpx.Client, delivery_id: str, attempts: int) -> dict[str, Any]:
    """One delivery once it has made ``attempts`` attempts and is not pending."""

    def probe() -> dict[str, Any] | None:
        d: dict[str, Any] = c.get(f"/v1/deliveries/{delivery_id}").json()
        return d if d["attempt_count"] >= attempts and d["status"] != "pending" else None

    got: dict[str, Any] = until(f"delivery {delivery_id} after {attempts} attempts", probe)
    return got


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """``inferq deliveries …`` with the stack's environment (straight to its database)."""
    done = subprocess.run(
        [str(BIN / "python"), "-m", "app.cli", "deliveries", *args],
        env=stack.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done
