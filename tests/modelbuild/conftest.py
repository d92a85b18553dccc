"""Builds every demo model (int8 variant included) once per test session into a temp folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.modelbuild import build_all
from app.registry import Manifest


@pytest.fixture(scope="session")
def built_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding minilm-embed:1, :1-int8, ticket-triage:1 and churn-risk:1."""
    target = tmp_path_factory.mktemp("models")
    build_all(target, quantize=True, progress=lambda _: None)
    return target


@pytest.fixture(scope="session")
def manifests(built_dir: Path) -> dict[str, Manifest]:
    """The built manifests by ``name:version``."""
    found = {}
    for path in sorted(built_dir.glob("*/*/manifest.json")):
        m = Manifest.model_validate_json(path.read_text())
        found[f"{m.name}:{m.version}"] = m
    return found
