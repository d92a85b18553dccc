"""Build one ONNX Runtime session per model per process, on CUDA when there is one."""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def choose_providers(requested: list[str] | None = None) -> list[str]:
    """``requested`` filtered to what this build has, else CUDA (if present) then CPU."""
    available = ort.get_available_providers()
    if requested:
        chosen = [p for p in requested if p in available]
        missing = [p for p in requested if p not in available]
        if missing:
            log.warning("providers not available here: %s (have %s)", missing, available)
        return chosen or [CPU]
    return [CUDA, CPU] if CUDA in available else [CPU]


def build_session(
    path: Path, *, intra_op_threads: int = 1, providers: list[str] | None = None
) -> ort.InferenceSession:
    """An ``InferenceSession`` for ``path``; logs which provider it really runs on."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # No busy-waiting between runs: the cores are shared with tokenisation, the database
    # driver and, on small hosts, the API itself.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(path), sess_options=opts, providers=choose_providers(providers)
    )
    log.info(
        "onnx session ready",
        extra={
            "model_file": str(path),
            "providers": session.get_providers(),
            "intra_op_threads": intra_op_threads,
        },
    )
    return session
