"""The OpenAI-compatible core without a server: request checks, the batch plan of a file, the
output and error files rendered from a plan and job results, OpenAI's error statuses."""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from app.errors import InvalidInput, UnknownModel
from app.openai_compat import batch_render, embeddings, wire
from app.openai_compat.batch_plan import PlanEntry, Planner
from app.predictions.admission import OverLimit
from app.registry import ModelEntry, Registry
from app.settings import build_settings


@pytest.fixture(scope="module")
def registry(models_dir: Path) -> Registry:
    return Registry(models_dir)


def count(entry: ModelEntry, texts: Sequence[str]) -> list[int]:
    return [len(t.split()) + 2 for t in texts]


def line(cid: Any, body: Any, url: str = "/v1/embeddings") -> bytes:
    return orjson.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body})


def test_inputs_that_are_served_and_those_that_are_not() -> None:
    req = embeddings.parse({"model": "m", "input": "one"})
    assert embeddings.texts_of(req) == (["one"], False)
    assert embeddings.texts_of(embeddings.parse({"model": "m", "input": ["a", "b"]})) == (
        ["a", "b"],
        True,
    )
    for bad, words in [
        ([1, 2, 3], "token ids"),
        ([[1, 2]], "token ids"),
        ([], "empty list"),
        (["a", None], "input[1] must be a string"),
        (3.5, "a string or a list"),
    ]:
        with pytest.raises(InvalidInput, match=re.escape(words)):
            embeddings.texts_of(embeddings.parse({"model": "m", "input": bad}))
    with pytest.raises(InvalidInput, match="Unrecognized request argument supplied: seed"):
        embeddings.parse({"model": "m", "input": "x", "seed": 1})
    with pytest.raises(InvalidInput, match="encoding_format"):
        embeddings.parse({"model": "m", "input": "x", "encoding_format": "int8"})


def test_base64_is_little_endian_float32() -> None:
    vec = [0.1, -2.5, 3.0]
    raw = base64.b64decode(embeddings.encode(vec, "base64"))
    assert raw == np.asarray(vec, dtype="<f4").tobytes()
    assert embeddings.encode(vec, "float") is vec


def test_openai_statuses_of_inferq_errors() -> None:
    assert wire.render_error(UnknownModel("unknown model 'x'"))[0] == 404
    assert wire.render_error(UnknownModel("x"))[1]["error"]["code"] == "model_not_found"
    assert wire.render_error(InvalidInput("bad"))[0] == 400
    status, body = wire.render_error(OverLimit("busy", bound="tenant_rate", limit=1, retry_after=2))
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["bound"] == "tenant_rate"
    assert wire.result_error("inference_failed", "boom")[0] == 500


def test_a_plan_and_its_files(registry: Registry) -> None:
    planner = Planner(registry, build_settings(), count, "/v1/embeddings")
    jobs = [
        planner.take(line("a", {"model": "minilm-embed", "input": "hello there"})),
        planner.take(b"[1, 2]"),
        planner.take(
            line("b", {"model": "minilm-embed", "input": ["x", "y z"], "encoding_format": "base64"})
        ),
        planner.take(line("c", {"model": "ticket-triage", "input": "x"})),
        planner.take(line("d", {"model": "minilm-embed", "input": "x"}, url="/v1/completions")),
        planner.take(line("e", {"model": "minilm-embed", "input": "never ran"})),
    ]
    assert [len(j) for j in jobs] == [1, 0, 2, 0, 0, 1]
    assert orjson.loads(jobs[2][1]) == {"custom_id": "b", "input": {"text": "y z"}}
    assert (planner.texts, planner.refused, planner.model and planner.model.manifest.name) == (
        4,
        3,
        "minilm-embed",
    )
    entries = [PlanEntry.load(e) for e in planner.entries]
    assert (entries[2].tokens, entries[2].base64) == (2 + 3 + 1 + 1, True)  # count() above

    vec = [0.25] * 384
    results = iter(
        [
            orjson.dumps({"index": 0, "custom_id": "a", "output": {"embedding": vec}}),
            orjson.dumps({"index": 1, "custom_id": "b", "output": {"embedding": vec}}),
            orjson.dumps({"index": 2, "custom_id": "b", "output": {"embedding": vec}}),
            orjson.dumps(
                {"index": 3, "custom_id": "e", "error": {"code": "cancelled", "message": ""}}
            ),
        ]
    )
    outcomes = list(batch_render.walk(planner.entries, results, ended="expired"))
    assert batch_render.tally(outcomes) == (2, 4)
    out = [
        orjson.loads(x)
        for x in b"".join(
            batch_render.render(outcomes, batch_id="batch_1", model="minilm-embed", which="output")
        ).splitlines()
    ]
    assert [o["custom_id"] for o in out] == ["a", "b"]
    data = out[1]["response"]["body"]["data"]
    assert [d["index"] for d in data] == [0, 1]
    assert np.frombuffer(base64.b64decode(data[0]["embedding"]), "<f4").tolist() == vec
    err = [
        orjson.loads(x)
        for x in b"".join(
            batch_render.render(outcomes, batch_id="batch_1", model="minilm-embed", which="error")
        ).splitlines()
    ]
    assert [(e["custom_id"], e["response"] and e["response"]["status_code"]) for e in err] == [
        (None, 400),
        ("c", 400),
        ("d", 400),
        ("e", None),
    ]
    assert err[3]["error"]["code"] == "batch_expired"
    assert (
        "line 2: the line must be a JSON object" in err[0]["response"]["body"]["error"]["message"]
    )
