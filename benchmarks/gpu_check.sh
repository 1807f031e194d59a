#!/usr/bin/env bash
# The GPU check: run on a machine with an NVIDIA GPU whose Python already has a CUDA
# PyTorch, nvcc, pytest, pluggy, click and hypothesis (no network needed). In at most
# 9 minutes (the steps stop at $CRNN_GPU_DEADLINE, default 480 s; a step's time limit adds up to
# 10 s, the summary a few) it
#   1. records the machine (nvidia-smi, torch, nvcc);
#   2. installs this checkout with its CUDA extension (pip -e, no deps, no build isolation);
#   3. runs the fused-op tests, the CUDA ones included (with CRNN_GPU_GDB=EXPR, also a
#      native backtrace of the tests pytest -k EXPR selects, under cuda-gdb);
#   4. runs `crnn bench --device cuda` (fused, eager reference, naive) at the ART shape and
#      benchmarks/gpu_bench.py (fused vs eager, torch.compile and CUDA-graph baselines; nn.LSTM
#      against the FastWeights layer at B 1024, T 100, H 256);
#   5. times one ART training epoch on the GPU per init and backend (benchmarks/art_epoch.py),
#      the fused step captured in a CUDA graph (train.cuda_graphs=true) and the fused zero-init
#      step compiled (train.compile=true; 2 epochs each: the second is steady);
#   6. runs a small forward/backward on every shared-memory path under compute-sanitizer
#      (racecheck and memcheck), where the sanitizer works;
#   7. writes summary.json: the headline numbers (benchmarks/gpu_summary.py; null where a
#      step failed or was skipped).
# Every step runs under a time limit and goes on when an earlier one fails; the last lines
# summarise each step's exit status; CRNN_GPU_SKIP=a,b skips the steps named a and b. Logs and JSON results go to the folder given as the
# first argument or $CRNN_GPU_OUT (default ./gpu-check-out).
#
#   bash benchmarks/gpu_check.sh /tmp/gpu-results
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${CRNN_GPU_OUT:-gpu-check-out}}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 CRNN_KERNEL_CACHE="${CRNN_KERNEL_CACHE:-/tmp/crnn-kernels}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null || echo 9.0)}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
declare -a SUMMARY=()
START=$SECONDS

DEADLINE="${CRNN_GPU_DEADLINE:-480}"  # seconds for the whole script: later steps shrink or are skipped

step() {  # step NAME LIMIT_S LOG COMMAND...: run with a time limit, log to OUT/LOG, remember the status
  local name="$1" limit="$2" log="$3"
  shift 3
  local t0=$SECONDS left=$((DEADLINE - SECONDS))
  if [[ ",${CRNN_GPU_SKIP:-}," == *",$name,"* ]]; then
    SUMMARY+=("$(printf '%-28s skipped (CRNN_GPU_SKIP)' "$name")")
    return 0
  fi
  if ((left < 15)); then
    SUMMARY+=("$(printf '%-28s skipped: the %ss deadline is reached' "$name" "$DEADLINE")")
    return 0
  fi
  ((limit > left)) && limit=$left
  echo "=== $name (limit ${limit}s, $((SECONDS - START))s so far) ==="
  timeout --kill-after=10 "$limit" "$@" >>"$OUT/$log" 2>&1
  local rc=$?
  SUMMARY+=("$(printf '%-28s rc=%-4s %4ss  (log: %s)' "$name" "$rc" "$((SECONDS - t0))" "$log")")
  tail -n 15 "$OUT/$log"
  return 0
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  "$PY" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability(), "SMs", torch.cuda.get_device_properties(0).multi_processor_count)'
  nvcc --version | tail -n 2
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS nproc=$(nproc)"
  git log -1 --oneline 2>/dev/null || true
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

step install 240 build.log env CRNN_REQUIRE_EXT=1 "$PY" -m pip install --no-deps --no-build-isolation --no-input -e . -v
step kernels 60 build.log "$PY" -m crnn_core kernels

# pytest-xdist, where installed, keeps a crashing test from taking the rest with it.
XDIST=$("$PY" -c 'import xdist' 2>/dev/null && echo "-n 4")
step cuda-tests 150 tests.log "$PY" -m pytest -q -p no:cacheprovider $XDIST tests/test_fused_op.py tests/test_nvcc.py
if [[ -n "${CRNN_GPU_GDB:-}" ]] && command -v cuda-gdb >/dev/null; then  # native backtrace of a crashing test
  step backtrace 120 backtrace.log cuda-gdb -batch -ex run -ex bt -ex "info sharedlibrary crnn" --args \
    "$PY" -m pytest -x -q -p no:cacheprovider -p no:faulthandler -k "$CRNN_GPU_GDB" tests/test_fused_op.py
fi
step crnn-bench 60 bench.txt "$PY" -m crnn_core bench --device cuda --batch 128 --length 11 --hidden 50 --repeats 20 --quiet
step gpu-bench 150 gpu_bench.txt "$PY" benchmarks/gpu_bench.py --compile-budget 90 --json "$OUT/gpu_bench.json"
step art-epoch 120 art_epoch.txt "$PY" benchmarks/art_epoch.py --init zero --init learned \
  --json-out "$OUT/art_epoch.json" -- --device cuda
step art-epoch-graphs 90 art_epoch_graphs.txt "$PY" benchmarks/art_epoch.py --init zero --init learned --backend fused \
  --epochs 2 --json-out "$OUT/art_epoch_graphs.json" -- --device cuda --set train.cuda_graphs=true
step art-epoch-compiled 120 art_epoch_compiled.txt "$PY" benchmarks/art_epoch.py --init zero --backend fused --epochs 2 \
  --json-out "$OUT/art_epoch_compiled.json" -- --device cuda --set train.compile=true
if command -v compute-sanitizer >/dev/null; then
  step racecheck 60 sanitizer.log compute-sanitizer --tool racecheck --error-exitcode 3 "$PY" benchmarks/gpu_bench.py smoke
  step memcheck 60 sanitizer.log compute-sanitizer --tool memcheck --error-exitcode 3 "$PY" benchmarks/gpu_bench.py smoke
fi

# Always, even past the deadline: the headline numbers of whatever the steps measured.
timeout 30 "$PY" benchmarks/gpu_summary.py "$OUT" --commit "$(git rev-parse HEAD 2>/dev/null)" >"$OUT/summary_json.log" 2>&1
rc=$?
SUMMARY+=("$(printf '%-28s rc=%-4s       (log: %s)' summary-json "$rc" summary_json.log)")
cat "$OUT/summary.json" 2>/dev/null

echo "=== summary (${SECONDS}s in all; results in $OUT) ==="
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
