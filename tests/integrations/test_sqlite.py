"""The whole integration path on SQLite (the default database of a laptop install), in one
process: hook -> event + prediction -> batch write with the write hook -> sender -> receiver."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from app.db import predictions as crud
from app.db.deliveries import Delivery
from app.db.engine import make_engine, make_sessionmaker, migrate, session_scope
from app.db.integrations import IntegrationEvent
from app.delivery import outbox as delivery_outbox
from app.delivery.engine import build_dispatcher
from app.integrations import inbound, outbox, store
from app.integrations.config import IntegrationSettings
from app.integrations.secrets import SecretBox
from app.registry import Registry
from app.settings import build_settings
from tests.support.receiver import Receiver

pytestmark = pytest.mark.slow  # it needs the demo models

TOKEN = "4242424242:AAFakeTokenForTheSqliteTest_abcdefghi"


class Recorder:
    """A publisher that keeps what it was given (no broker in this test)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, list[str]]] = []

    def publish(self, model: str, ids: Sequence[str], priority: int) -> None:
        self.published.append((model, list(ids)))


def test_telegram_round_trip_on_sqlite(
    tmp_path: Path, models_dir: Path, receiver: Receiver
) -> None:
    settings = build_settings(
        database_url=f"sqlite:///{tmp_path / 'inferq.db'}",
        models_dir=models_dir,
        egress_allow=["127.0.0.1"],
    )
    migrate(settings.database_url)
    engine = make_engine(settings)
    sessions = make_sessionmaker(engine)
    isettings = IntegrationSettings(integration_backoff_base_seconds=0.1)
    box = SecretBox.from_settings(settings, isettings)
    registry = Registry(models_dir)
    row = store.create(
        sessions=sessions,
        box=box,
        registry=registry,
        tenant="default",
        kind="telegram",
        name="bot",
        config={"api_base": receiver.url},
        secrets={"token": TOKEN, "webhook_secret": "s3cret"},
    )
    deps = inbound.HookDeps(sessions, registry, settings, Recorder())
    update: dict[str, Any] = {
        "update_id": 1,
        "message": {"message_id": 3, "chat": {"id": 9}, "text": "refund please"},
    }
    body = orjson.dumps(update)
    integ = store.load(sessions=sessions, box=box, integration_id=row.id)
    accepted = inbound.receive_telegram(integ, bot=row.id, secret="s3cret", body=body, deps=deps)
    assert accepted.status == "queued" and accepted.prediction_id
    again = inbound.receive_telegram(integ, bot=row.id, secret="s3cret", body=body, deps=deps)
    assert again.status == "duplicate"

    output = {"category": "billing", "category_scores": {"billing": 0.8}}
    delivery_outbox.take_pending()  # drop what earlier tests' write hooks left on this thread
    with session_scope(sessions) as s:  # what the executor does with a finished batch
        written = crud.write_results(
            session=s, results=[crud.ResultRow(accepted.prediction_id, "succeeded", output)]
        )
        outbox.write_hook(s, written)
    made = delivery_outbox.take_pending()
    assert len(made) == 1
    sender = build_dispatcher(sessions, settings, isettings=isettings, box=box)
    receiver.fail_next = 1
    try:
        sender.submit(made)
        sends = receiver.wait_for(lambda rs: len(rs) >= 2, timeout=10)
    finally:
        sender.close()
    assert [r.path for r in sends] == [f"/bot{TOKEN}/sendMessage"] * 2
    assert sends[1].json() == {
        "chat_id": 9,
        "text": "Category: billing (80%)",
        "reply_to_message_id": 3,
    }
    with session_scope(sessions) as s:
        event = s.scalars(select(IntegrationEvent)).one()
        delivery = s.scalars(select(Delivery)).one()
        assert (event.status, delivery.status, delivery.attempt_count) == ("done", "delivered", 2)
        view = store.views(s, [row], recent=5, attempts=True)[0]
    assert view["activity"]["recent"][0]["deliveries"][0]["attempt_log"][0]["status_code"] == 500
    store.delete(sessions=sessions, tenant="default", integration_id=row.id)
    with session_scope(sessions) as s:
        assert s.scalars(select(Delivery)).all() == []
    engine.dispose()


def test_a_hook_over_the_tenants_bound_is_refused_and_stores_nothing(
    tmp_path: Path, models_dir: Path
) -> None:
    """Hooks pass the same admission bounds as the API (on SQLite here: no advisory locks)."""
    from app.errors import RateLimited

    settings = build_settings(
        database_url=f"sqlite:///{tmp_path / 'inferq.db'}",
        models_dir=models_dir,
        tenant_limits={"default": {"max_queued": 2}},
    )
    migrate(settings.database_url)
    engine = make_engine(settings)
    sessions = make_sessionmaker(engine)
    isettings = IntegrationSettings()
    box = SecretBox.from_settings(settings, isettings)
    registry = Registry(models_dir)
    row = store.create(
        sessions=sessions,
        box=box,
        registry=registry,
        tenant="default",
        kind="telegram",
        name="bot",
        config={},
        secrets={"token": TOKEN, "webhook_secret": "s3cret"},
    )
    deps = inbound.HookDeps(sessions, registry, settings, Recorder())
    integ = store.load(sessions=sessions, box=box, integration_id=row.id)

    def message(n: int) -> bytes:
        body = {"update_id": n, "message": {"message_id": n, "chat": {"id": 9}, "text": "help"}}
        return orjson.dumps(body)

    for n in (1, 2):
        got = inbound.receive_telegram(
            integ, bot=row.id, secret="s3cret", body=message(n), deps=deps
        )
        assert got.status == "queued"
    with pytest.raises(RateLimited, match="the limit is 2"):
        inbound.receive_telegram(integ, bot=row.id, secret="s3cret", body=message(3), deps=deps)
    with session_scope(sessions) as s:
        assert len(s.scalars(select(IntegrationEvent)).all()) == 2  # the third left nothing
        from app.db.models import Prediction

        assert len(s.scalars(select(Prediction)).all()) == 2
    engine.dispose()
