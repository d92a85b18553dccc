"""Builds inferq's demo models into a models folder, in the layout :mod:`app.registry` reads.

Models: ``minilm-embed:1`` (all-MiniLM-L6-v2 sentence embeddings), ``ticket-triage:1``
(support-ticket category and urgency on those embeddings), ``churn-risk:1`` (a 12-feature
tabular MLP) and, with ``quantize=True``, ``minilm-embed:1-int8``. Everything is offline and
seeded. This module imports nothing heavy: torch, transformers and onnx (the ``models`` extra)
are imported only when something actually has to be built, so ``inferq models build`` on an
up-to-date folder, or on a host without the extra, fails or finishes fast.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from app.registry import Manifest

if TYPE_CHECKING:
    from app.modelbuild.minilm import MeanPoolEncoder

__all__ = ["MODELS", "build_all", "verified_manifest"]

MODELS: tuple[tuple[str, str], ...] = (
    ("minilm-embed", "1"),
    ("ticket-triage", "1"),
    ("churn-risk", "1"),
)
INT8 = ("minilm-embed", "1-int8")


class _Builder:
    """Holds what several builders share (the torch encoder), loaded once and only if needed."""

    def __init__(self, models_dir: Path, progress: Callable[[str], None]) -> None:
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise RuntimeError(
                "building models needs the 'models' extra: pip install 'inferq[models]'"
            ) from exc
        self.models_dir = models_dir
        self.progress = progress
        self._encoder: MeanPoolEncoder | None = None
        self._threads = torch.get_num_threads()
        from app.modelbuild.common import THREADS

        torch.set_num_threads(THREADS)

    def close(self) -> None:
        import torch

        torch.set_num_threads(self._threads)

    def encoder(self) -> MeanPoolEncoder:
        if self._encoder is None:
            from app.modelbuild import minilm

            self.progress("loading all-MiniLM-L6-v2 weights from the installed package")
            self._encoder = minilm.load_encoder()
        return self._encoder

    def build(self, name: str, version: str) -> Manifest:
        from app.modelbuild import churn, minilm, quantize, triage

        if (name, version) == ("minilm-embed", "1"):
            return minilm.build(self.models_dir, self.encoder(), self.progress)
        if (name, version) == ("churn-risk", "1"):
            return churn.build(self.models_dir, self.progress)
        base = verified_manifest(self.models_dir, "minilm-embed", "1")
        if base is None:  # built earlier in this run, so this means someone removed it
            raise RuntimeError("minilm-embed:1 is missing or does not verify")
        if (name, version) == ("ticket-triage", "1"):
            embed_onnx = self.models_dir / base.name / base.version / base.onnx_file
            return triage.build(self.models_dir, self.encoder(), embed_onnx, self.progress)
        if (name, version) == INT8:
            return quantize.build(self.models_dir, base, self.progress)
        raise ValueError(f"no builder for {name}:{version}")


def verified_manifest(models_dir: Path, name: str, version: str) -> Manifest | None:
    """The manifest of ``name:version`` if it exists, parses and its ONNX file verifies."""
    from app.errors import ModelNotReady
    from app.registry import ModelEntry

    folder = models_dir / name / version
    path = folder / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = Manifest.model_validate_json(path.read_text(encoding="utf-8"))
        ModelEntry(manifest, folder).verify()
    except (ValueError, ModelNotReady):
        return None
    if (manifest.name, manifest.version) != (name, version):
        return None
    return manifest


def build_all(
    models_dir: Path,
    *,
    quantize: bool = False,
    force: bool = False,
    progress: Callable[[str], None] = print,
) -> list[Manifest]:
    """Build every demo model into ``models_dir``; returns their manifests in build order.

    A model whose manifest exists and whose ONNX file matches its sha256 is skipped unless
    ``force``. ``quantize`` adds ``minilm-embed:1-int8``. Each model folder is emptied before
    it is rebuilt and its ``manifest.json`` is written last, so a reader never sees a
    half-written model under a valid manifest. Deterministic: fixed seeds, 2 CPU threads.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    wanted = [*MODELS, INT8] if quantize else list(MODELS)
    started = time.perf_counter()
    results: list[Manifest] = []
    builder: _Builder | None = None
    try:
        for name, version in wanted:
            existing = None if force else verified_manifest(models_dir, name, version)
            if existing is not None:
                progress(f"{name}:{version} is up to date (sha256 {existing.sha256[:12]}), skipped")
                results.append(existing)
                continue
            if builder is None:
                builder = _Builder(models_dir, progress)
            step = time.perf_counter()
            progress(f"building {name}:{version}")
            manifest = builder.build(name, version)
            progress(f"{name}:{version} built in {time.perf_counter() - step:.1f}s")
            results.append(manifest)
    finally:
        if builder is not None:
            builder.close()
    progress(f"{len(results)} models ready in {models_dir} ({time.perf_counter() - started:.1f}s)")
    return results
