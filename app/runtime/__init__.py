"""ONNX Runtime sessions and the per-kind adapters that feed them."""
