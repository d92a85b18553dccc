"""The model registry: one ``manifest.json`` per model version under ``models_dir``.

Layout::

    <models_dir>/<name>/<version>/manifest.json
    <models_dir>/<name>/<version>/model.onnx
    <models_dir>/<name>/<version>/tokenizer.json   (text models)

The newest version (by ``created_at``) of a name is the one served unless a request pins one.
A model whose ONNX file does not hash to the recorded sha256 is refused.

Across hosts: each host has its own ``models_dir``; a shared folder (``INFERQ_MODELS_SOURCE``:
an NFS or object-store mount, or where ``inferq models build`` wrote) is where new versions
come from. ``pull`` copies the versions a host lacks from it, each checked against its sha256
before it appears (written aside, then renamed into place), and ``find`` (what workers use)
reloads and pulls once before it says a version is unknown: a version built while the system
runs reaches every worker at its first request, without a restart.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.errors import ModelNotReady, UnknownModel

ModelKind = Literal["text-embedding", "text-classification", "tabular"]


class Batching(BaseModel):
    """How the dynamic batcher feeds this model."""

    max_batch_size: int = Field(32, ge=1, le=4096)
    """Largest batch one run gets."""
    max_delay_ms: float = Field(5.0, ge=0, le=10_000)
    """Longest the oldest queued item waits for a batch to fill."""
    length_buckets: list[int] = Field(default_factory=list)
    """Sequence-length bucket edges (tokens); items of one batch come from one bucket."""
    max_batch_tokens: int = Field(0, ge=0)
    """Most padded tokens (items x longest) in one batch; 0: no limit. On CPU a transformer's
    cost per item rises with the batch's size past a few hundred tokens (caches), so text
    models cap batches by tokens as well as by count."""


class Manifest(BaseModel):
    """What the registry knows of one model version."""

    name: str
    version: str
    kind: ModelKind
    onnx_file: str = "model.onnx"
    sha256: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    batching: Batching = Field(default_factory=Batching)
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    """e.g. ``{"tokenizer": "tokenizer.json", "max_length": 256}`` for text models."""
    labels: dict[str, list[str]] = Field(default_factory=dict)
    """Classifier heads: output name -> label names, in logit order."""
    n_features: int | None = None
    """Tabular models: the width of the feature vector."""
    feature_names: list[str] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)
    """How good it is (held-out accuracy, cosine to the reference), as measured at build time."""
    provenance: dict[str, Any] = Field(default_factory=dict)
    """Where the weights came from and how the file was made."""
    created_at: str
    serve_by_default: bool = True
    """False for variants (e.g. int8) that are served only when a request pins their version."""


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ModelEntry:
    """A manifest and the folder it lives in."""

    def __init__(self, manifest: Manifest, folder: Path) -> None:
        self.manifest = manifest
        self.folder = folder

    @property
    def onnx_path(self) -> Path:
        return self.folder / self.manifest.onnx_file

    def asset(self, name: str) -> Path:
        return self.folder / name

    def verify(self) -> None:
        """Raise ``ModelNotReady`` unless the ONNX file exists and matches its sha256."""
        m = self.manifest
        if not self.onnx_path.is_file():
            raise ModelNotReady(f"model {m.name}:{m.version}: {self.onnx_path} is missing")
        actual = file_sha256(self.onnx_path)
        if actual != m.sha256:
            raise ModelNotReady(
                f"model {m.name}:{m.version}: sha256 of {self.onnx_path.name} is {actual[:12]}…, "
                f"manifest says {m.sha256[:12]}…; refusing to serve it"
            )


class Registry:
    """Reads manifests from ``models_dir``; thread-safe, reloads on demand."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, ModelEntry]] = {}
        self._looked: dict[str, float] = {}
        self.reload()

    def reload(self) -> None:
        """Scan ``models_dir`` again."""
        entries: dict[str, dict[str, ModelEntry]] = {}
        if self.models_dir.is_dir():
            for path in sorted(self.models_dir.glob("*/[!.]*/manifest.json")):
                manifest = Manifest.model_validate_json(path.read_text())
                entries.setdefault(manifest.name, {})[manifest.version] = ModelEntry(
                    manifest, path.parent
                )
        with self._lock:
            self._entries = entries

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def latest(self) -> list[ModelEntry]:
        """The served version of every model, by name."""
        return [self.get(name) for name in self.names()]

    def versions(self, name: str) -> list[ModelEntry]:
        with self._lock:
            versions = self._entries.get(name, {})
            return sorted(versions.values(), key=lambda e: e.manifest.created_at)

    def pull(self, source: Path, name: str | None = None) -> list[ModelEntry]:
        """Copy from ``source`` (a registry folder) every version this registry lacks (of
        ``name``, or of every model), each verified against its manifest's sha256 before it
        is renamed into place; returns what was copied. A version that fails its check is left
        out (and said so by ``ModelNotReady``), never half there."""
        src = Registry(source)
        copied: list[ModelEntry] = []
        for model in [name] if name else src.names():
            have = {e.manifest.version for e in self.versions(model)}
            for entry in src.versions(model):
                m = entry.manifest
                if m.version in have:
                    continue
                entry.verify()  # the source's own file first: a bad one is not copied at all
                target = self.models_dir / m.name / m.version
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=f".{m.version}.", dir=target.parent))
                try:
                    shutil.copytree(entry.folder, tmp, dirs_exist_ok=True)
                    ModelEntry(m, tmp).verify()  # what arrived here
                    tmp.rename(target)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                copied.append(ModelEntry(m, target))
        if copied:
            self.reload()
        return copied

    def find(
        self, name: str, version: str | None = None, *, source: Path | None = None
    ) -> ModelEntry:
        """``get``, but a name or version this host does not know yet is looked for again first:
        the folder is read again and, with a ``source``, what it lacks is pulled from there (at
        most once a second per model, so unknown names cost no disk scans)."""
        try:
            return self.get(name, version)
        except UnknownModel:
            now = time.monotonic()
            with self._lock:
                recent = now - self._looked.get(name, -1.0) < 1.0
                if not recent:
                    self._looked[name] = now
            if recent:
                raise
            self.reload()
            if source is not None and Path(source).is_dir():
                self.pull(Path(source), name)
            return self.get(name, version)

    def get(self, name: str, version: str | None = None) -> ModelEntry:
        """The entry for ``name`` (``version`` or the newest); ``UnknownModel`` if absent."""
        versions = self.versions(name)
        if not versions:
            raise UnknownModel(f"unknown model {name!r}; GET /v1/models lists the models")
        if version is None:
            default = [e for e in versions if e.manifest.serve_by_default]
            return (default or versions)[-1]
        for entry in versions:
            if entry.manifest.version == version:
                return entry
        raise UnknownModel(f"model {name!r} has no version {version!r}")
