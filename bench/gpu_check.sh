#!/usr/bin/env bash
# Styledrop GPU check: ONE device call on a fresh H100 (the default machine; an H200 works the same), <= 7 minutes,
# ONE Python process (bench/gpu_all.py: one CUDA start, models built on the device, training first, each part given
# the time left, every figure printed as it is measured). Log: $OUT/gpu.log; figures: $OUT/gpu_figures.json.
# Record what it prints in docs/benchmarks.md ("GPU check") with the device and the commit it prints.
#
# Before the call, here in the checkout's root (nothing is committed; both travel with `carry`):
#   grep -qx /.whl/ .git/info/exclude || echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 peft==0.21.2      # about 7 MB, once
#   git describe --always --dirty --abbrev=12 > bench/COMMIT   # .git does not travel: the commit goes as a file
# Call: run(command="bash bench/gpu_check.sh", carry=[".whl", "bench/COMMIT"], timeout_s=480); then give_back.
# Dry run of the same script on any machine (tests/test_gpu_check.py runs it):
#   python bench/gpu_all.py --device cpu --config tiny --quick
# The device image has torch + CUDA, transformers, accelerate, safetensors, pillow, numpy, pytest(-timeout);
# do NOT `pip install -e .` there: offline it cannot resolve the service's packages, which the engine never imports.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"; export OUT; exec > >(tee "$OUT/gpu.log") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; nproc
# 400 s for the process (its own time box is 380 s: it stops starting runs that would not fit), inside the call's 480.
timeout -k 10 400 python3 bench/gpu_all.py --budget-s 380 "$@"
echo "=== rc=$? after ${SECONDS}s"
