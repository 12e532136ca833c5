#!/usr/bin/env bash
# Every check that needs a GPU, in one run, for a lent GPU machine whose Python already holds torch,
# lightning, pyarrow, onnx and onnxruntime but not Hydra (see /work/.library/device/KINDS.md).
#
#   here, once:  bash scripts/gpu_check.sh --fetch-wheels       # hydra-core, omegaconf, antlr4 -> .whl/
#   on the GPU:  bash scripts/gpu_check.sh                      # carry .whl; results under $OUT
#
# On this workplace's lent GPU: device `run` with command "bash scripts/gpu_check.sh", carry [".whl"],
# timeout_s 600. Its steps are capped at 150 + 300 + 120 s; the training benchmark writes its JSON after
# every case, so a step cut short still returns what it measured.
#
# It installs deepbandit without dependencies, runs the `gpu`-marked tests and the training and serving
# benchmarks at GPU sizes, and writes nvidia-smi, the test log and benchmarks' JSON under $OUT (default
# benchmarks/gpu/). Copy the JSON over benchmarks/train.json and benchmarks/serving.json to commit them.
# Each step has its own time limit so that one slow step still leaves the others' results. ROWS, BATCH,
# STEPS and SERVING_ARGS shrink the benchmarks (to try the script on a CPU: ROWS=2000 BATCH=256 STEPS=2
# SERVING_ARGS="--sizes 1 16 --seconds 0.05").
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=("hydra-core==1.3.8" "omegaconf==2.3.1" "antlr4-python3-runtime==4.9.3")  # as CI installs them

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
    exec python3 -m pip download --no-deps -d .whl "${WHEELS[@]}"
fi

OUT=${OUT:-benchmarks/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --no-build-isolation --target /tmp/site .whl/* || exit 1
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import torch, onnxruntime as ort; print(torch.__version__, torch.cuda.get_device_name(0), ort.__version__, ort.get_available_providers())"

# the gpu-marked tests (their modules import only what the GPU machine has)
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/training/test_train.py \
    tests/data/test_tensors.py tests/evaluation/test_estimators.py tests/serving/test_serving.py 2>&1 \
    | tee "$OUT/gpu_tests.txt"
# training: default model and K=10 at the GPU config's batch, fp32 and bf16, eager and compiled
timeout 300 python3 scripts/bench_train.py --rows "${ROWS:-100000}" --batch "${BATCH:-65536}" --steps "${STEPS:-30}" \
    --precision 32-true bf16-mixed --compile --out "$OUT/train.json"
timeout 120 python3 scripts/bench_serving.py ${SERVING_ARGS:-} --out "$OUT/serving.json"
ls -l "$OUT"
