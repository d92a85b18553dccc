#!/usr/bin/env bash
# The prepared device run (issue 15 part 4), one call of the device tool from the repo root:
#   run(command="bash bench/gpu.sh", timeout_s=300)
# What a lent H200 machine can do for this benchmark: it has torch with CUDA and transformers but
# no onnxruntime-gpu (its wheel is over the 64 MiB a call may carry), no Postgres and no Redis,
# and the fp32 model.onnx (90 MB) cannot travel either. So it measures the device itself: t(b)
# of all-MiniLM-L6-v2's architecture (bench/gpu_calibrate.py), which accel-sim then uses here:
#   python -m bench --scenarios online,accel-sim --sim-t0-ms T0 --sim-k-ms K
# On a GPU host of your own with Postgres, Redis and onnxruntime-gpu, run the whole benchmark
# instead: python -m bench --provider cuda (IO binding is not in the runtime yet: see issue 15).
set -euo pipefail
out="${OUT:-bench/results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu-machine.txt"
python3 -m bench.gpu_calibrate --seq 64 --out "$out/gpu-calibration-seq64.json"
python3 -m bench.gpu_calibrate --seq 128 --dtypes fp16 --out "$out/gpu-calibration-seq128.json"
