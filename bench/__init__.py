"""inferq's benchmark (``python -m bench``): every scenario of BENCH.md in one run.

``raw`` (ONNX Runtime alone, the ceiling), ``naive`` (one Celery task per item), ``online``
(K concurrent HTTP clients), ``online-light`` (open loop at ~10 % of ``online``) and ``bulk`` (one
job through ``/v1/jobs``) run on the same machine, model file, provider and thread settings; the
report prints their ratios and writes Markdown + JSON under ``bench/results/``.
"""
