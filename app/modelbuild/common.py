"""Shared plumbing of the model builders: folders, manifests, quiet ONNX export, ORT sessions.

Everything that touches the on-disk layout of :mod:`app.registry` lives here, so the
individual builders only produce a graph, its assets and a :class:`Manifest`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from app.registry import Manifest

Progress = Callable[[str], None]

OPSET = 17
THREADS = 2
"""CPU threads for torch and ONNX Runtime while building: the build must be quick on 2 cores."""


def now_iso() -> str:
    """The current time, ISO 8601 UTC with a ``Z`` (manifest ``created_at``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def version_dir(models_dir: Path, name: str, version: str) -> Path:
    return models_dir / name / version


def prepare_dir(models_dir: Path, name: str, version: str) -> Path:
    """Empty the version folder, manifest first, so no reader ever sees a half-built model."""
    folder = version_dir(models_dir, name, version)
    (folder / "manifest.json").unlink(missing_ok=True)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` atomically; it is written last, which publishes the model."""
    tmp = folder / "manifest.json.tmp"
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / "manifest.json")


def package_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def toolchain() -> dict[str, Any]:
    """Versions of the tools that made a file, for ``provenance``."""
    return {
        "torch": torch.__version__,
        "onnx": package_version("onnx"),
        "onnxruntime": ort.__version__,
        "opset": OPSET,
        "exporter": "torch.onnx.export (TorchScript tracer, dynamo=False)",
    }


def seed_all(seed: int) -> None:
    """Seed every RNG a builder uses, so the same inputs give the same weights."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch CPU threads, then restore the previous setting.

    Training the small heads uses one thread: with tiny tensors two threads are slower, and
    the result must not depend on how many cores the build machine has.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence exporter/quantizer chatter (warnings and root-logger warnings) inside a block.

    ``torch.onnx.export`` warns about its own deprecation and about tracing; the project runs
    pytest with warnings as errors, so the builder swallows them here, deliberately and locally.
    """
    root = logging.getLogger()
    level = root.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)
        try:
            yield
        finally:
            root.setLevel(level)


def export_onnx(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> None:
    """Trace ``module`` on ``args`` and write an opset-17 ONNX file (atomically)."""
    tmp = path.with_name(path.name + ".tmp")
    module.eval()
    with quiet(), torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(tmp),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    os.replace(tmp, path)


def ort_session(path: Path) -> ort.InferenceSession:
    """A CPU ONNX Runtime session limited to :data:`THREADS` threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    # No busy-waiting between ops: on a shared or busy host spinning threads cost far more
    # than they save (measured 13s vs 8s wall embedding 600 tickets on a loaded 2-core box).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two equally shaped 2-D arrays."""
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    num = (a64 * b64).sum(axis=1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return np.asarray(num / np.maximum(den, 1e-12))


def binary_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties averaged."""
    y = np.asarray(y_true).astype(bool)
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = np.asarray(score)[order]
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
