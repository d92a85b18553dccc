"""The OpenAPI document is the contract: Schemathesis, every check, against a real API process.

The API runs on the test database without a worker (what is accepted stays queued; a wait is
bounded: ``Prefer: wait`` and ``?wait`` by 30 s and only on ids that exist, embeddings by
``openai_timeout_seconds``). Each operation is run with a valid API key and without one (every
``/v1`` route then answers a documented 401).

The cases are generated from the document the app builds, at collection time (pytest makes one
test per operation of it), and ``test_live_document_is_the_tested_one`` checks that the API
serves that very document at ``/openapi.json``. (Schemathesis's ``from_fixture``, which would
load it from the live API, does not run on pytest 9.2: it sets ``Node._nodeid``.)
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from api.main import create_app
from app.settings import build_settings
from tests.conftest import Stack, StackFactory

KEY = "key-a"
EXAMPLES = 20
"""Generated cases per operation and run (the coverage phase adds its own boundary cases)."""

# What a request means beyond its shape is checked against the server's state, which no static
# schema can say: a model's input schema depends on which model is named (and the registry
# decides which exist), a cron expression must parse, a file or batch id must exist. A
# schema-valid request to these operations may therefore be answered 422 (or 400, OpenAI's
# status); ``positive_data_acceptance`` accepts that there and nowhere else.
SEMANTIC = [
    ("POST", "/v1/predictions", "422"),
    ("POST", "/v1/jobs", "422"),
    ("POST", "/v1/schedules", "422"),
    ("PATCH", "/v1/schedules/{schedule_id}", "422"),
    ("POST", "/v1/integrations", "422"),
    ("PATCH", "/v1/integrations/{integration_id}", "422"),
    ("POST", "/hooks/telegram/{bot}", "422"),
    ("POST", "/hooks/tickets/{integration}", "422"),
    ("POST", "/v1/embeddings", "400"),
    ("POST", "/v1/batches", "400"),
    ("POST", "/v1/files", "400"),
    ("GET", "/v1/batches", "400"),
]
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
"""Schemathesis's own default for ``positive_data_acceptance``."""


def config(*, key: str | None) -> schemathesis.Config:
    """Bounded generation, every check, the ``SEMANTIC`` allowance; with ``key`` every case
    carries it (and Schemathesis knows it does: it also sends some without, and expects 401)."""
    auth = {"auth": {"openapi": {"bearer": {"bearer": key}}}} if key else {}
    return schemathesis.Config.from_dict(
        {
            **auth,
            # the same seeded cases every run, and nothing kept under .hypothesis/
            "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none"},
            "phases": {"stateful": {"enabled": False}},
            "operations": [
                {
                    "include-name": f"{method} {path}",
                    "checks": {
                        "positive_data_acceptance": {"expected-statuses": [*ACCEPTED, status]}
                    },
                }
                for method, path, status in SEMANTIC
            ],
        }
    )


KEYS = {KEY: "tenant-a"}


def document() -> dict[str, Any]:
    """The OpenAPI document of an API with these API keys (what ``/openapi.json`` serves)."""
    return create_app(build_settings(api_keys=KEYS)).openapi()


@pytest.fixture(scope="module")
def api(module_stacks: StackFactory, redis_url: str) -> Stack:
    return module_stacks(redis_url, workers=0, api_keys=json.dumps(KEYS), openai_timeout_seconds=2)


def test_live_document_is_the_tested_one(api: Stack) -> None:
    with api.client() as c:
        live = c.get("/openapi.json")
    assert live.status_code == 200
    assert live.json() == json.loads(json.dumps(document()))


with_key = schemathesis.openapi.from_dict(document(), config=config(key=KEY))
without_key = schemathesis.openapi.from_dict(document(), config=config(key=None))
BOUNDED = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@with_key.parametrize()
@BOUNDED
def test_contract_with_key(case: Any, api: Stack) -> None:
    case.call_and_validate(base_url=api.base_url, timeout=40)


@without_key.parametrize()
@BOUNDED
def test_contract_without_key(case: Any, api: Stack) -> None:
    case.call_and_validate(base_url=api.base_url, timeout=40)
