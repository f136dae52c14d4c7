#!/usr/bin/env bash
# Styledrop GPU check: one fresh H200, <= 8 minutes, everything to $OUT/gpu.log: serving and training. Run it on
# a machine with a GPU; record every figure it prints in docs/benchmarks.md with the device and the command.
#
# Before the call, on the dev machine in the checkout's root (nothing committed; the wheels travel with `carry`):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 peft==0.21.2      # about 7 MB
# Call: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540); then give_back.
# The device image has torch + CUDA, transformers, accelerate, safetensors, pillow, numpy, pytest(-timeout);
# do NOT `pip install -e .` there: offline it cannot resolve the service's packages, which the engine never imports.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"; exec > >(tee "$OUT/gpu.log") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; nproc
git log -1 --oneline 2>/dev/null
python3 -c 'import torch,diffusers,transformers,peft; print(torch.__version__, torch.version.cuda, diffusers.__version__, transformers.__version__, peft.__version__, torch.cuda.get_device_name())' || exit 1
BUDGET=470  # seconds for the steps below, leaving the call's limit (540 s) room for start-up and copying back
run() { local lim=$1; shift; [ $((SECONDS + 30)) -lt $BUDGET ] || { echo "=== skipped (time): $*"; return; }
        [ $((SECONDS + lim)) -le $BUDGET ] || lim=$((BUDGET - SECONDS)); echo; echo "=== [${SECONDS}s] $*"
        timeout -k 10 "$lim" "$@"; echo "=== rc=$? [${SECONDS}s]"; }
# 1. The GPU tests on the tiny model (bf16 training, multi-style syncs, CUDA sampling with mixed adapters, and
#    any captured-step / 8-bit AdamW tests), with only the engine's fixtures (no service packages on the device).
run 120 python3 -m pytest -q -p no:cacheprovider --noconftest -p tests.helpers.engine_fixtures tests/test_engine_gpu.py
# 2. Serving: ours vs AmusedPipeline at batch 1 and 8, with the pipeline on a CUDA generator (fair) and
#    8 requests on 8 adapters vs 8 calls, full amused-256 shape in bf16.
run 150 python3 bench/sample.py --device cuda --config full --dtype bf16 --reps 3 --pipeline-generator device
# 3. Serving sweep: 0/1/2/4/8 distinct adapters in a batch of 8, eager and captured (torch.compile + CUDA graphs).
run 120 python3 bench/gpu_serving.py --device cuda --config full --dtype bf16 --rows 8 --sweep 0,1,2,4,8
# 4. Training: 1500 steps on the full shape in bf16 (wall time, peak memory), styles per GPU-hour for
#    S = 1, 4, 8, 16, eager and captured (bench/gpu_train.py; present once the training work has landed).
if [ -f bench/gpu_train.py ]; then run 200 python3 bench/gpu_train.py --device cuda; fi
echo "done in ${SECONDS}s"
