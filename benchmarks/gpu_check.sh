#!/usr/bin/env bash
# The device checks of issue 9 in one run, for a session lent a GPU (a few minutes on an H200):
#   tracker latency on CUDA (STARK reference, eager, deployed, compiled, bf16/fp16 autocast; ONNX Runtime runs on
#   its CUDA EP only where onnxruntime-gpu is installed, else it says so and uses the CPU), and the trial benchmark
#   at the GPU preset (128/320, batch 16: full-fidelity and head-fidelity steps/s, tracking FPS).
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (figures go to OUT_DIR, default runs/gpu_check)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-runs/gpu_check}}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$py" benchmarks/bench_tracker.py --device cuda --threads 1 --repeats 100 --warmup 10 | tee "$out/bench_tracker_cuda.md"
"$py" benchmarks/bench_trial.py --trainer gpu --device cuda | tee "$out/bench_trial_cuda.txt"
