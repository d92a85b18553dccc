"""The on-disk contract: layout, manifests, sha256 checks, skipping, tamper refusal, CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from app.errors import ModelNotReady
from app.modelbuild import build_all
from app.modelbuild.__main__ import main
from app.registry import Manifest, Registry, file_sha256

pytestmark = pytest.mark.timeout(600)  # the first test to use built_dir pays for the build

EXPECTED = {"minilm-embed:1", "minilm-embed:1-int8", "ticket-triage:1", "churn-risk:1"}


def test_every_model_is_built_with_a_matching_sha256(
    built_dir: Path, manifests: dict[str, Manifest]
) -> None:
    assert set(manifests) == EXPECTED
    registry = Registry(built_dir)
    assert registry.names() == ["churn-risk", "minilm-embed", "ticket-triage"]
    for key, m in manifests.items():
        entry = registry.get(m.name, m.version)
        entry.verify()
        assert file_sha256(entry.onnx_path) == m.sha256, key
        created = datetime.fromisoformat(m.created_at.replace("Z", "+00:00"))
        assert created.tzinfo is not None and created.utcoffset() == UTC.utcoffset(None)
        if m.kind != "tabular":
            assert (entry.folder / "tokenizer.json").is_file()
            assert m.preprocessing == {"tokenizer": "tokenizer.json", "max_length": 256}
            assert m.input_schema["required"] == ["text"]
            assert m.batching.length_buckets == [8, 16, 24, 32, 48, 64, 96, 128, 192, 256]
            assert m.batching.max_batch_tokens == 512
        leftovers = [p.name for p in entry.folder.iterdir() if p.name.endswith(".tmp")]
        assert leftovers == []


def test_int8_variant_is_not_served_by_default(built_dir: Path) -> None:
    registry = Registry(built_dir)
    assert registry.get("minilm-embed").manifest.version == "1"
    int8 = registry.get("minilm-embed", "1-int8").manifest
    assert int8.serve_by_default is False
    assert (
        int8.provenance["quantized_from"]["sha256"] == registry.get("minilm-embed").manifest.sha256
    )


def test_tampered_model_is_refused_then_rebuilt(built_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(built_dir, models, ignore=shutil.ignore_patterns("1-int8"))
    onnx_path = models / "churn-risk" / "1" / "model.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_path.write_bytes(bytes(data))

    with pytest.raises(ModelNotReady, match="sha256"):
        Registry(models).get("churn-risk").verify()

    messages: list[str] = []
    result = build_all(models, progress=messages.append)
    assert [f"{m.name}:{m.version}" for m in result] == [
        "minilm-embed:1",
        "ticket-triage:1",
        "churn-risk:1",
    ]
    skipped = [m for m in messages if m.endswith("skipped")]
    assert len(skipped) == 2 and not any("churn-risk" in m for m in skipped)
    Registry(models).get("churn-risk").verify()
    # deterministic: the rebuilt file is byte-identical to the original
    assert file_sha256(onnx_path) == file_sha256(built_dir / "churn-risk" / "1" / "model.onnx")


def test_missing_model_file_is_refused(built_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(built_dir / "churn-risk", tmp_path / "churn-risk")
    (tmp_path / "churn-risk" / "1" / "model.onnx").unlink()
    with pytest.raises(ModelNotReady, match="missing"):
        Registry(tmp_path).get("churn-risk").verify()


def test_up_to_date_models_are_skipped(
    built_dir: Path, manifests: dict[str, Manifest], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--models-dir", str(built_dir), "--quantize"]) == 0
    out = capsys.readouterr().out
    assert out.count("is up to date") == 4
    assert "heldout_category_accuracy=" in out
    again = Registry(built_dir)
    for m in manifests.values():  # nothing was rewritten
        assert again.get(m.name, m.version).manifest.created_at == m.created_at


def test_importing_the_package_does_not_import_torch() -> None:
    code = (
        "import sys, app.modelbuild, app.modelbuild.__main__; "
        "assert 'torch' not in sys.modules and 'onnx' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
