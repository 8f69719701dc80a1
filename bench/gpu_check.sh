#!/usr/bin/env bash
# The prepared GPU check (issue 14): on a CUDA machine, install what is missing, run the CUDA and
# mixed-precision paths of streaming, training and inference (bench/gpu_paths.py), then a short
# graph-budget table (bench/streaming.py --budgets: conventional, checkpoint, streaming today and
# at two budgets; ResNet-34 to layer2 at 4096² and 8192², tile 2048; bf16 and fp16). Under 8
# minutes on one modern GPU. Everything printed is also written under $OUT (else ./gpu-check-out).
#
#   bash bench/gpu_check.sh               # on a CUDA machine
#   bash bench/gpu_check.sh --cpu-smoke   # the same steps, tiny and on the CPU, in well under a minute
#                                         # (GPU_CHECK_CPU_SMOKE=1 does the same; the test suite runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
: > "$LOG"
PY="${PYTHON:-python3}"
SMOKE="${GPU_CHECK_CPU_SMOKE:-0}"
if [[ "${1:-}" == "--cpu-smoke" ]]; then SMOKE=1; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

say() { echo "== $*" | tee -a "$LOG"; }
run() { "$@" 2>&1 | tee -a "$LOG"; return "${PIPESTATUS[0]}"; }

if [[ "$SMOKE" == 1 ]]; then
    say "CPU smoke version (no GPU used)"
    # One thread: on a busy machine, several spinning OpenMP threads per process cost far more
    # than they give at these sizes.
    export OMP_NUM_THREADS=1
    run "$PY" bench/gpu_paths.py --device cpu --quick
    run "$PY" bench/streaming.py --budgets --steady --device cpu --models smallnet --sizes 256 --tiles 128 \
        --threads 1 --levels "tile only" "0.5 conv" --json "$OUT_DIR/budgets-cpu.json"
    say "done: $OUT_DIR"
    exit 0
fi

if ! command -v nvidia-smi > /dev/null || ! nvidia-smi > /dev/null 2>&1; then
    echo "no working nvidia-smi: this is not a CUDA machine (use --cpu-smoke for the CPU version)" | tee -a "$LOG"
    exit 2
fi
run nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
# torch with CUDA may be installed already: keep it. Otherwise pip's default index has CUDA
# wheels on Linux. No constraints-ci.txt here: it pins the CPU wheel.
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2> /dev/null; then
    say "installing torch with CUDA"
    run "$PY" -m pip install -q torch
fi
if ! "$PY" -c "import engine, pytest" 2> /dev/null; then
    say "installing the project"
    run "$PY" -m pip install -q -e '.[test]'
fi
run "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

say "device paths: streaming (float32, bf16, fp16; graph budgets none/some/all), training (amp, graph_budget=auto)"
run "$PY" bench/gpu_paths.py --device cuda

say "CPU test suite's streaming, autocast and budget tests on this machine"
run timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/engine/test_graph_budget.py \
    tests/engine/test_graph_budget_estimate.py tests/engine/test_streaming_behaviour.py \
    -k "autocast or budget or sink or pooled or estimate or whole" || say "tests failed or stopped: see above"

# Time plan (one H200-class GPU): about 1 min of device paths, at most 2 min of tests, at most
# 2 x 150 s of tables (10 fresh processes each, CUDA start-up included): under 8 minutes.
# --steady: the second step is timed, as a training run's later steps go (the first also pays for
# the caching allocator's first cudaMalloc of every kept byte).
for amp in bf16 fp16; do
    say "graph budgets, CUDA, $amp"
    run timeout 150 "$PY" bench/streaming.py --budgets --steady --device cuda --autocast "$amp" --models resnet34-layer2 \
        --sizes 4096 8192 --tiles 2048 --threads 4 --levels "tile only" "0.5 conv" --no-conventional-above 8192 \
        --json "$OUT_DIR/budgets-cuda-$amp.json" || say "budget table ($amp) stopped: see above"
done
say "done in ${SECONDS}s: $OUT_DIR"
