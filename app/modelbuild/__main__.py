"""``python -m app.modelbuild --models-dir DIR [--quantize] [--force]``: build the demo models."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from app.modelbuild import build_all
from app.registry import Manifest


def _summary(m: Manifest) -> str:
    """The headline numbers of a manifest's metrics, one line."""
    keys = (
        "onnx_vs_torch_min_cosine",
        "heldout_category_accuracy",
        "heldout_urgency_accuracy",
        "heldout_auc",
        "cosine_to_fp32_min",
    )
    return "  ".join(f"{k}={m.metrics[k]}" for k in keys if k in m.metrics)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.modelbuild",
        description="Build inferq's demo models (offline, deterministic) into a models folder.",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="where to write the models (default: INFERQ_MODELS_DIR / settings.models_dir)",
    )
    parser.add_argument("--quantize", action="store_true", help="also build minilm-embed:1-int8")
    parser.add_argument(
        "--force", action="store_true", help="rebuild models that are already up to date"
    )
    args = parser.parse_args(argv)
    models_dir: Path | None = args.models_dir
    if models_dir is None:
        from app.settings import get_settings

        models_dir = get_settings().models_dir
    manifests = build_all(models_dir, quantize=args.quantize, force=args.force)
    for m in manifests:
        print(f"{m.name}:{m.version}  {m.kind:<19}  sha256 {m.sha256[:12]}  {_summary(m)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
