"""Model versions across hosts: a version built while load runs reaches a worker that lacks it
without a restart (``Registry.find``: reload, then pull from ``INFERQ_MODELS_SOURCE``,
sha256-checked), and no request fails because a worker lagged behind.

Each process has its own models folder, as on separate hosts: the API's, the worker's, and the
shared source the new version is published to.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from app.cli import cli
from app.db.models import Prediction
from app.errors import ModelNotReady
from app.registry import Registry
from tests.conftest import StackFactory

pytestmark = pytest.mark.slow


def publish_version(models: Path, version: str, *, to: list[Path]) -> None:
    """A new version of churn-risk (the same weights under a new version and a later
    ``created_at``, so it is the one served) written into each folder of ``to``."""
    (src,) = (models / "churn-risk").iterdir()
    for root in to:
        target = root / "churn-risk" / version
        shutil.copytree(src, target)
        manifest = json.loads((target / "manifest.json").read_text())
        manifest.update(version=version, created_at="2099-01-01T00:00:00.000Z")
        (target / "manifest.json").write_text(json.dumps(manifest))


def test_pull_copies_what_is_missing_checked_and_refuses_a_corrupt_file(
    models_dir: Path, tmp_path: Path
) -> None:
    source, here = tmp_path / "shared", tmp_path / "host"
    shutil.copytree(models_dir / "churn-risk", source / "churn-risk")
    publish_version(models_dir, "2", to=[source])
    reg = Registry(here)
    assert sorted(e.manifest.version for e in reg.pull(source)) == ["1", "2"]
    assert reg.pull(source) == []  # up to date
    assert reg.get("churn-risk").manifest.version == "2"
    publish_version(models_dir, "3", to=[source])
    with (source / "churn-risk" / "3" / "model.onnx").open("ab") as f:
        f.write(b"tampered")
    with pytest.raises(ModelNotReady, match="sha256"):
        reg.pull(source)
    assert not (here / "churn-risk" / "3").exists()
    assert [p.name for p in (here / "churn-risk").iterdir() if p.name.startswith(".")] == []
    # find: an unknown version is looked for in the source before it is unknown
    shutil.rmtree(source / "churn-risk" / "3")
    publish_version(models_dir, "4", to=[source])
    assert reg.find("churn-risk", "4", source=source).manifest.version == "4"


def test_inferq_models_pull(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, here = tmp_path / "shared", tmp_path / "host"
    shutil.copytree(models_dir / "churn-risk", source / "churn-risk")
    monkeypatch.setenv("INFERQ_MODELS_DIR", str(here))
    runner = CliRunner()
    out = runner.invoke(cli, ["models", "pull", str(source)])
    assert out.exit_code == 0, out.output
    assert "churn-risk:1" in out.output
    assert "up to date" in runner.invoke(cli, ["models", "pull", str(source)]).output
    missing = runner.invoke(cli, ["models", "pull", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no such folder" in missing.output


def test_a_version_built_under_load_reaches_a_worker_without_a_restart_and_nothing_fails(
    pg_url: str,
    pg_sessions: sessionmaker[Session],
    models_dir: Path,
    redis_url: str,
    tmp_path: Path,
) -> None:
    api_models, worker_models, shared = tmp_path / "api", tmp_path / "worker", tmp_path / "shared"
    for root in (api_models, worker_models, shared):
        shutil.copytree(models_dir / "churn-risk", root / "churn-risk")
    factory = StackFactory(pg_url, api_models, tmp_path / "stacks")
    try:
        stack = factory(redis_url, workers=0, beat=True)
        env = dict(stack.env)
        stack.env.update(INFERQ_MODELS_DIR=str(worker_models), INFERQ_MODELS_SOURCE=str(shared))
        try:
            worker = stack.start_worker("lagging")
        finally:
            stack.env.clear()
            stack.env.update(env)
        accepted: list[str] = []
        refused: list[int] = []
        stop = threading.Event()

        def load() -> None:
            with stack.client() as c:
                while not stop.is_set():
                    r = c.post(
                        "/v1/predictions",
                        json={"model": "churn-risk", "input": {"features": [0.3] * 12}},
                    )
                    (accepted.append(r.json()["id"]) if r.status_code == 202 else
                     refused.append(r.status_code))  # fmt: skip
                    time.sleep(0.01)

        feeder = threading.Thread(target=load, daemon=True)
        feeder.start()
        time.sleep(2.0)
        publish_version(models_dir, "2", to=[shared, api_models])  # built; the worker lacks it
        with stack.client() as c:  # the API reads its folder again: it now pins version 2
            versions = {m["name"]: m["version"] for m in c.get("/v1/models").json()["models"]}
        assert versions["churn-risk"] == "2"
        time.sleep(3.0)
        stop.set()
        feeder.join(20)
        end = time.monotonic() + 60
        while True:
            with pg_sessions() as s:
                by = dict(
                    s.execute(
                        select(Prediction.model_version, func.count())
                        .where(Prediction.status == "succeeded")
                        .group_by(Prediction.model_version)
                    ).all()
                )
                live = s.execute(
                    select(func.count()).where(Prediction.status.in_(("queued", "running")))
                ).scalar_one()
            if not live or time.monotonic() > end:
                break
            time.sleep(0.1)
        with pg_sessions() as s:
            statuses = dict(
                s.execute(select(Prediction.status, func.count()).group_by(Prediction.status)).all()
            )
        assert refused == [] and statuses == {"succeeded": len(accepted)}, (refused, statuses)
        assert by.get("1", 0) > 0 and by.get("2", 0) > 0, by
        assert (worker_models / "churn-risk" / "2" / "manifest.json").is_file()  # pulled
        assert worker.alive()
    finally:
        factory.close(show_logs=False)
