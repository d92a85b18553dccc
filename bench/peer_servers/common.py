"""What every peer server shares: the command line, the model, the ready line.

The model is inferq's own adapter (``app.runtime.adapters.load_adapter``): the manifest's
tokenizer with its truncation, the batch padded to its longest input, one ``session.run`` on a
session built by ``app.runtime.session.build_session`` (the same options as inferq's workers:
``intra_op_num_threads``, sequential, no spinning). So a peer does, per request, what inferq
does: text (or a feature vector) in, the model's output out; only the serving layer differs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

# as in inferq's workers (app/runtime/adapters.py): no spinning rayon pool per process
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

READY = "PEER READY "
"""The line (then a JSON object) a peer server prints once it answers requests."""

SUPPORTED_KINDS = ("text-embedding", "tabular")


def parser(description: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--models-dir", type=Path, required=True)
    p.add_argument("--model", action="append", required=True, help="repeatable")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="HTTP port")
    p.add_argument("--replicas", type=int, default=2, help="model instances / replicas")
    p.add_argument("--intra-op-threads", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-delay-ms", type=float, default=5.0)
    p.add_argument("--providers", default="", help="comma-separated; empty: as inferq picks")
    return p


def load(models_dir: Path, name: str, intra_op_threads: int, providers: str = "") -> Any:
    """inferq's adapter for ``name`` (the served version), its file checked against its sha256;
    ``providers`` comma-separated (empty: CUDA where there is one, else CPU, as inferq)."""
    from app.registry import Registry
    from app.runtime.adapters import load_adapter

    entry = Registry(models_dir).get(name)
    if entry.manifest.kind not in SUPPORTED_KINDS:
        raise SystemExit(f"{name}: kind {entry.manifest.kind} is not served by the peers")
    chosen = [x for x in providers.split(",") if x] or None
    return load_adapter(entry, intra_op_threads=intra_op_threads, providers=chosen)


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """An adapter's output row with arrays as lists (what a JSON response carries)."""
    return {k: v.tolist() if hasattr(v, "tolist") else v for k, v in row.items()}


def versions(*packages: str) -> dict[str, str]:
    out = {"python": platform.python_version(), "executable": sys.executable}
    for name in ("onnxruntime", "tokenizers", "numpy", *packages):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def announce(info: dict[str, Any]) -> None:
    print(READY + json.dumps(info), flush=True)


def stop_event() -> threading.Event:
    """An event SIGTERM and SIGINT set: the bench stops a peer with SIGTERM to its PID."""
    done = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return done
