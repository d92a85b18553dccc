"""The benchmark harness's pieces, without timing anything: no test here asserts a time."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from tokenizers import Tokenizer

from app.registry import Registry
from bench import naive, raw
from bench.__main__ import parse
from bench.corpus import POOL, churn_rows, inputs_for, ticket_sample, ticket_texts
from bench.http import MiniClient
from bench.phases import phase_raw_again, settle
from bench.procstat import CpuMeter, RssSampler, children, cpu_seconds
from bench.profile import summarize
from bench.report import ratios, write_report
from bench.scenarios import percentile
from bench.stack import Stack, StackConfig
from tests.support.receiver import Receiver
from tests.support.services import unique


def test_corpus_is_deterministic_and_within_8_to_120_tokens(models_dir: Path) -> None:
    texts = ticket_texts(1000)
    assert texts == ticket_texts(1000)
    assert texts[:50] == ticket_texts(50)  # a shorter corpus is a prefix of a longer one
    assert ticket_texts(50, seed=1) != ticket_texts(50, seed=2)
    entry = Registry(models_dir).get("minilm-embed")
    tok = Tokenizer.from_file(str(entry.asset(entry.manifest.preprocessing["tokenizer"])))
    tok.no_padding()
    tok.no_truncation()
    lengths = [len(e.ids) for e in tok.encode_batch(texts)]
    assert min(lengths) >= 8
    assert max(lengths) <= 120
    assert max(lengths) >= 80  # a few paragraphs, not only one-liners


def test_churn_rows_are_deterministic_and_have_the_model_width() -> None:
    rows = churn_rows(100, 12)
    assert rows == churn_rows(100, 12)
    assert {len(r) for r in rows} == {12}
    assert inputs_for("tabular", 3, n_features=12)[0] == {"features": rows[0]}
    assert inputs_for("tabular", 3, n_features=12, salt=4) != inputs_for("tabular", 3, salt=0)


def test_every_scenario_draws_texts_with_the_corpus_length_distribution(models_dir: Path) -> None:
    tok = Tokenizer.from_file(str(models_dir / "minilm-embed" / "1" / "tokenizer.json"))
    tok.no_padding()

    def tokens(texts: list[str]) -> tuple[float, float]:
        n = [len(e.ids) for e in tok.encode_batch(texts)]
        return sum(n) / len(n), sum(k * k for k in n) / len(n)

    pool_mean, pool_sq = tokens(ticket_texts(POOL))
    for n, salt in ((256, 0), (1000, 0), (1500, 1), (3000, 2), (460, 3), (POOL, 4)):
        texts = [i["text"] for i in inputs_for("text-embedding", n, salt=salt)]
        assert len(texts) == n and texts == [t for t in ticket_sample(n, salt=salt)]
        mean, sq = tokens(texts)
        assert abs(mean / pool_mean - 1) < 0.01 and abs(sq / pool_sq - 1) < 0.02, (n, mean, sq)
    # What the sample replaced: raw took the corpus's first 1,000 texts, 2 % lighter in mean
    # tokens and 5 % in mean squared tokens than the 5,000 of bulk.
    prefix_mean, prefix_sq = tokens(ticket_texts(1000))
    assert prefix_mean / pool_mean < 0.985 and prefix_sq / pool_sq < 0.96
    assert sorted(ticket_sample(POOL, salt=4)) == sorted(ticket_texts(POOL))
    assert ticket_sample(1000, salt=0) != ticket_sample(1000, salt=1)
    assert ticket_sample(1000, salt=0)[:20] != sorted(ticket_sample(1000, salt=0)[:20], key=len)


def _fake_results() -> dict[str, Any]:
    model = {
        "kind": "text-embedding",
        "version": "1",
        "batching": {"max_batch_size": 32, "max_delay_ms": 5.0},
        "raw": {
            "procs": 2,
            "provider": "CPUExecutionProvider",
            "items_per_s": {"1": 400.0, "16": 650.0},
            "best_batch": 16,
            "best": 650.0,
        },
        "raw_1proc": {
            "procs": 1,
            "provider": "CPUExecutionProvider",
            "items_per_s": {"1": 420.0},
            "best_batch": 1,
            "best": 420.0,
        },
        "raw_end": {"batch": 16, "items_per_s": 585.0, "start_items_per_s": 650.0, "drift": -0.1},
        "single_item_ms": 2.38,
        "naive": {"items_per_s": 230.0, "n": 100},
        "online": {
            "items_per_s": 520.0,
            "n": 100,
            "p50_ms": 80.0,
            "p95_ms": 120.0,
            "p99_ms": 150.0,
            "mean_batch": 12.5,
        },
        "online_light": {
            "rate_per_s": 52.0,
            "p50_ms": 12.0,
            "p95_ms": 20.0,
            "p99_ms": 40.0,
            "mean_batch": 1.2,
            "added_p50_ms": 9.62,
            "added_p99_ms": 37.62,
        },
        "bulk": {"items_per_s": 600.0, "n": 1000, "peak_rss_mib": {"api": 150.0}},
        "settle": {
            "online": {"seconds": 1.5, "db_flushed": True, "busy": 0.1},
            "bulk": {"seconds": 3.25, "db_flushed": False, "busy": 0.3},
        },
        "cpu": {
            "online": {
                "api": 1.0,
                "workers": 2.0,
                "machine_busy": 3.0,
                "machine_capacity": 4.0,
                "items": 100,
            }
        },
        "profile": {
            "worker0": {
                "samples": 10,
                "self_by_package": [["sqlalchemy", 50.0]],
                "self_by_function": [],
                "inclusive_own": [],
            }
        },
    }
    return {
        "meta": {
            "stamp": "test",
            "started_at": "2025-01-01T00:00:00+00:00",
            "quick": True,
            "command": "python -m bench --quick",
            "machine": {
                "cpu_model": "Test CPU",
                "cores": 2,
                "cores_usable": 2,
                "memory_gib": 4.0,
                "gpus": [],
                "python": "3.11",
            },
            "versions": {"onnxruntime": "1.0", "onnxruntime_providers": ["CPUExecutionProvider"]},
            "settings": {"workers": 2},
        },
        "models": {"minilm-embed": model, "churn-risk": {"kind": "tabular", "naive": None}},
    }


def test_report_writes_valid_json_and_markdown_with_the_ratios(tmp_path: Path) -> None:
    json_path, md_path, text = write_report(_fake_results(), tmp_path / "results")
    doc = json.loads(json_path.read_text())
    r = doc["models"]["minilm-embed"]["ratios"]
    assert r == {
        "online/raw": 0.8,
        "bulk/raw": 0.923,
        "online/naive": 2.26,
        "added_p50_ms": 9.62,
        "added_p99_ms": 37.62,
    }
    assert doc["models"]["churn-risk"]["ratios"]["online/raw"] is None  # not measured
    assert md_path.read_text() == text + "\n"
    assert "| minilm-embed | 0.80 | 0.92 | 2.26 | 9.6 / 37.6 |" in text
    assert "| churn-risk | - | - | - | - / - |" in text
    assert "Test CPU, 2 cores" in text
    assert "**minilm-embed, worker0**" in text
    assert "CHECKPOINT and VACUUM (ANALYZE) (done: 1 of 2)" in text
    assert "| raw again, after the other scenarios | 585.0 | | 16 | -10.0% against" in text
    assert "(longest 3.25 s)" in text


def test_ratios_leave_out_what_was_not_measured() -> None:
    assert ratios({}) == {
        "online/raw": None,
        "bulk/raw": None,
        "online/naive": None,
        "added_p50_ms": None,
        "added_p99_ms": None,
    }


def test_ratios_take_the_best_raw_sweep_as_the_ceiling() -> None:
    m = {
        "raw": {"best": 100.0},
        "raw_1proc": {"best": 200.0},
        "online": {"items_per_s": 150.0},
        "bulk": {"items_per_s": 0.01},
    }
    assert ratios(m)["online/raw"] == 0.75
    assert ratios(m)["bulk/raw"] == 5e-05


def test_percentile_interpolates() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([0.0, 10.0], 0.99) == pytest.approx(9.9)


def test_raw_runs_64_items_and_returns_positive_figures(models_dir: Path) -> None:
    spec = raw.RawSpec(models_dir, "minilm-embed", 64, min_seconds=0.0)
    result = raw.run_raw(spec, procs=2, batch_sizes=[1, 16])
    assert set(result.items_per_s) == {1, 16}
    assert all(v > 0 for v in result.items_per_s.values())
    assert result.provider == "CPUExecutionProvider"
    assert result.to_json()["best_batch"] in (1, 16)
    tab = raw.run_raw(
        raw.RawSpec(models_dir, "churn-risk", 64, min_seconds=0.0), procs=1, batch_sizes=[1, 64]
    )
    assert tab.best > 0


def test_naive_task_returns_what_a_json_result_backend_takes(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERQ_MODELS_DIR", str(models_dir))
    monkeypatch.setattr(naive, "_adapters", {})
    emb = json.loads(json.dumps(naive.predict("minilm-embed", {"text": "refund please"})))
    assert len(emb["embedding"]) == 384
    churn = naive.predict("churn-risk", {"features": [0.5] * 12})
    assert 0.0 <= json.loads(json.dumps(churn))["probability"] <= 1.0


def test_profile_summary_attributes_samples(tmp_path: Path) -> None:
    raw_file = tmp_path / "p.txt"
    raw_file.write_text(
        "run (threading.py:1);predict (workers/tasks.py:2);execute (sqlalchemy/orm/s.py:3) 3\n"
        "run (threading.py:1);predict (workers/tasks.py:2);dumps (orjson/x.py:4) 1\n"
    )
    s = summarize(raw_file)
    assert s["samples"] == 4
    assert s["self_by_package"] == [("sqlalchemy", 75.0), ("orjson", 25.0)]
    assert s["inclusive_own"] == [("workers.tasks:predict", 100.0)]
    assert "error" in summarize(tmp_path / "missing.txt")


def test_procstat_reads_this_process() -> None:
    assert cpu_seconds(os.getpid()) > 0
    assert children(os.getpid()) == [] or all(p > 0 for p in children(os.getpid()))
    meter = CpuMeter({"me": lambda: [os.getpid()]})
    meter.start()
    sum(i * i for i in range(200_000))
    time.sleep(0.05)  # a few clock ticks, so the machine's counters move
    out = meter.stop()
    assert out["me"] >= 0 and out["machine_capacity"] > 0
    with RssSampler({"me": os.getpid()}, interval=0.01) as rss:
        pass
    assert rss.peak_kib["me"] > 0


def test_mini_client_talks_to_a_real_http_server(receiver: Receiver) -> None:
    receiver.responder = lambda req: (202, {"path": req.path, "got": req.json()})

    async def go() -> list[tuple[int, Any]]:
        client = MiniClient(receiver.url)
        try:
            return [await client.request("POST", f"/x?i={i}", {"i": i}) for i in range(3)]
        finally:
            await client.aclose()

    answers = asyncio.run(go())
    assert answers == [(202, {"path": f"/x?i={i}", "got": {"i": i}}) for i in range(3)]
    assert [r.headers["content-type"] for r in receiver.requests] == ["application/json"] * 3


def test_cli_refuses_unknown_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse(["--quick", "--scenarios", "raw,bulk"]).quick
    with pytest.raises(SystemExit):
        parse(["--scenarios", "raw,fast"])
    assert "unknown scenarios ['fast']" in capsys.readouterr().err


def test_set_passes_settings_to_the_stack_and_nothing_else_of_the_callers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    args = parse(["--set", "job_chunk_lines=1024", "--set", "COUNT_QUEUE_WAIT=false"])
    assert args.overrides == {"job_chunk_lines": "1024", "count_queue_wait": "false"}
    for bad in ("job_chunk_lines", "no_such_setting=1", "INFERQ_JOB_CHUNK_LINES=1"):
        with pytest.raises(SystemExit):
            parse(["--set", bad])
        assert "--set takes NAME=VALUE" in capsys.readouterr().err
    monkeypatch.setenv("INFERQ_WRITER_THREADS", "9")  # the caller's: not inherited
    cfg = StackConfig("postgresql://x/db", "redis://x", tmp_path, [], overrides=args.overrides)
    env = Stack(cfg).env
    assert env["INFERQ_JOB_CHUNK_LINES"] == "1024" and env["INFERQ_COUNT_QUEUE_WAIT"] == "false"
    assert "INFERQ_WRITER_THREADS" not in env and env["INFERQ_DATABASE_URL"] == "postgresql://x/db"


def test_settle_checkpoints_and_vacuums_the_database_then_waits_for_quiet(pg_url: str) -> None:
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        before = conn.execute(
            text("SELECT last_vacuum FROM pg_stat_user_tables WHERE relname = 'predictions'")
        ).scalar_one()
    t0 = time.monotonic()
    out = settle(pg_url, quiet=1.01, timeout=5)
    assert out["db_flushed"] is True
    assert 1.0 <= out["seconds"] <= 5.5 and time.monotonic() - t0 < 30  # VACUUM, then 1 s
    with engine.begin() as conn:
        after = conn.execute(
            text("SELECT last_vacuum FROM pg_stat_user_tables WHERE relname = 'predictions'")
        ).scalar_one()
    engine.dispose()
    assert after is not None and (before is None or after > before)


def test_settle_says_so_when_the_role_may_not_checkpoint(
    pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    role = unique("bench_ro_")
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
    try:
        url = make_url(pg_url).set(username=role).render_as_string(hide_password=False)
        out = settle(url, quiet=1.01, timeout=2)
        assert out["db_flushed"] is False
        assert "settle: InsufficientPrivilege" in capsys.readouterr().out
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP ROLE "{role}"'))
        admin.dispose()


def test_settle_only_waits_without_postgres(tmp_path: Path) -> None:
    out = settle(f"sqlite:///{tmp_path / 'x.db'}", quiet=1.01, timeout=2)
    assert out["db_flushed"] is False and out["seconds"] >= 1.0


def test_raw_again_measures_the_best_batch_once_more_and_the_drift(
    models_dir: Path, tmp_path: Path
) -> None:
    cfg = StackConfig("sqlite://", "memory://", models_dir, ["minilm-embed"], workers=1)
    args = parse(["--quick"])
    res = {
        "minilm-embed": {
            "kind": "text-embedding",
            "raw": {"procs": 1, "best_batch": 8, "items_per_s": {"1": 50.0, "8": 100.0}},
        },
        "churn-risk": {"kind": "tabular"},  # no raw sweep: nothing to repeat
    }
    phase_raw_again(cfg, args, res)
    again = res["minilm-embed"]["raw_end"]
    assert again["batch"] == 8 and again["start_items_per_s"] == 100.0
    assert again["items_per_s"] > 0
    assert again["drift"] == round(again["items_per_s"] / 100.0 - 1, 3)
    assert "raw_end" not in res["churn-risk"]
