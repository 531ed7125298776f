#!/usr/bin/env bash
# What a lent GPU runs, as ONE device command. The device tool stops a command at 600 s (what is under $OUT by then
# still comes back, at most 8 files) and a session has 15 minutes of device time, the machine's start (a minute or
# more) included: one full run, with a few minutes left to rerun one phase:
#
#   scripts/gpu_session.sh [PHASE ...]     PHASE: tests, kernels, model, data (none: all four, in this order)
#
#   tests    the GPU parity tests (pytest -m gpu, the Triton kernels first: they decide GPU_VALIDATED), then the
#            device-agnostic kernel tests, which run on CUDA tensors on a GPU
#   kernels  bench/test_kernels.py: each op on each provider, the torch.compile ones last; bench/test_joint_rows.py
#            (audio + video rows through the frozen layers as one GEMM, block-diagonal attention)
#   model    bench/test_model.py: ViT-B/16 Base (eager, then compiled), then the rest (eager, then compiled)
#   data     bench/test_fbank.py, then bench/test_data_pipeline.py (needs PyAV; its DALI cases need DALI)
#
# Every step runs under its own time limit inside one deadline, GPU_SESSION_SECONDS (default 560) after the start: a
# phase gets its weight's share of the time left (tests 45, kernels 20, model 25, data 10), so time one phase does not
# use passes to the next, and a phase run alone gets all of it. A step is stopped with SIGINT at its limit (SIGKILL
# 20 s later), so pytest still prints its summary and pytest-benchmark still writes the cases it finished. The
# benchmark JSON of all steps is merged into one file named like the files of bench/results/ (copy it there), and the
# table is rendered again after every step: a run cut short still brings back what it measured. With device time for
# several commands, run the phases separately, e.g. `scripts/gpu_session.sh tests`, then `... kernels model`.
#
# The lent machines have no xformers, PyAV or DALI: wheels in ./.whl (carried) are installed first. pytest-xdist, where
# installed, runs the test steps in 4 processes (Triton compilation is CPU-bound). GIT_COMMIT=<sha> names the commit in
# the results where there is no git history. Files under $OUT (default ./gpu-out): env.txt, tests.log, bench.log,
# <device>_<time>_<commit>.json, bench_table.md, speedups.png.
set -uo pipefail
cd "$(dirname "$0")/.."
DEADLINE=$((SECONDS + ${GPU_SESSION_SECONDS:-560}))
RESERVE=35  # the SIGKILL grace of a step plus the last merge and render
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1

PHASES=("$@")
((${#PHASES[@]})) || PHASES=(tests kernels model data)
declare -A WEIGHT=([tests]=45 [kernels]=20 [model]=25 [data]=10)
for phase in "${PHASES[@]}"; do
    [[ -n "${WEIGHT[$phase]:-}" ]] || { echo "unknown phase '$phase' (expected: tests kernels model data)"; exit 2; }
done

# ---------------------------------------------------------------------------------------------------------- setup
{
    echo "phases: ${PHASES[*]}; deadline ${GPU_SESSION_SECONDS:-560} s"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    if compgen -G ".whl/*.whl" > /dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
    fi
    python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -n 20
    python3 - <<'EOF'
import importlib
import sys

print("python", sys.version.split()[0])
for name in ("torch", "triton", "timm", "pytest", "pytest_benchmark", "xdist", "xformers", "av", "nvidia.dali",
             "matplotlib", "stgcma_fast.kernels.t_adapter"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "imported"))
    except Exception as exc:  # noqa: BLE001 - report whatever is missing or broken
        print(name, "NOT IMPORTABLE:", type(exc).__name__, exc)
import torch

print("torch.version.cuda", torch.version.cuda, "| device", torch.cuda.get_device_name() if torch.cuda.is_available()
      else "NONE: CUDA is not available")
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
XDIST=()
python3 -c "import xdist" 2> /dev/null && XDIST=(-n 4 --dist loadfile)
JSON="$OUT/$(python3 -c 'from bench.common import results_filename as f; print(f())' 2> /dev/null | tail -n 1)"
[[ "$JSON" == *.json ]] || JSON="$OUT/bench_$(date -u +%Y%m%dT%H%M%SZ).json"
PYTEST=(python3 -m pytest -rfEs -p no:cacheprovider --continue-on-collection-errors)  # -v for tests, -q for benchmarks

# ---------------------------------------------------------------------------------------------------------- helpers
left() { echo $((DEADLINE - SECONDS - RESERVE)); }

# run_step LIMIT LOG CMD...: CMD under LIMIT seconds (SIGINT, SIGKILL 20 s later), its output appended to LOG
run_step() {
    local limit=$1 log=$2 rc
    shift 2
    if ((limit < 15)); then
        echo "## $(date -u +%T) skipped, ${limit}s left: $*" | tee -a "$log"
        return 0
    fi
    echo "## $(date -u +%T) limit ${limit}s: $*" | tee -a "$log"
    timeout -s INT -k 20 "$limit" "$@" >> "$log" 2>&1
    rc=$?
    ((rc == 124)) && echo "## stopped at its ${limit}s limit" >> "$log"
    echo "## exit code $rc" >> "$log"
    tail -n 3 "$log"
}

# bench_step LIMIT NAME PYTEST-ARGS...: a benchmark step, merged into $JSON, the table rendered again
bench_step() {
    local limit=$1 name=$2
    shift 2
    rm -f "$WORK/$name.json"
    run_step "$limit" "$OUT/bench.log" "${PYTEST[@]}" -q --benchmark-json="$WORK/$name.json" "$@"
    python3 -m bench.report --merge-into "$JSON" "$WORK/$name.json" >> "$OUT/bench.log" 2>&1
    [[ -f "$JSON" ]] && python3 -m bench.report "$JSON" --plot "$OUT/speedups.png" > "$OUT/bench_table.md" 2>&1
    return 0
}

# ---------------------------------------------------------------------------------------------------------- phases
phase_tests() {  # $1: seconds for the phase
    local end=$((SECONDS + $1))
    run_step $(($1 * 7 / 10)) "$OUT/tests.log" "${PYTEST[@]}" -v --durations=15 "${XDIST[@]}" -m gpu tests/kernels tests
    run_step $((end - SECONDS)) "$OUT/tests.log" "${PYTEST[@]}" -v "${XDIST[@]}" -m "not gpu and not slow" tests/kernels
}

phase_kernels() {  # ViT-B/16 shapes first (the targets' shapes), then the others, then the torch.compile providers
    local end=$((SECONDS + $1)) files=(bench/test_kernels.py bench/test_joint_rows.py)
    bench_step $(($1 * 4 / 10)) kernels-b16 "${files[@]}" -k "vit-b16 and not compile"
    bench_step $(($1 * 3 / 10)) kernels-other "${files[@]}" -k "not vit-b16 and not compile"
    bench_step $((end - SECONDS)) kernels-compile bench/test_kernels.py -k compile
}

phase_model() {  # the issues' goals are stated for ViT-B/16 Base: its cases first, eager then compiled
    local end=$((SECONDS + $1)) head="test_model_step and clip-b16-base"
    bench_step $(($1 * 3 / 10)) model-b16 bench/test_model.py -k "$head and not compile"
    bench_step $(($1 * 3 / 10)) model-b16-compile bench/test_model.py -k "$head and compile"
    bench_step $(($1 * 2 / 10)) model-eager bench/test_model.py -k "not ($head) and not compile"
    bench_step $((end - SECONDS)) model-compile bench/test_model.py -k "not ($head) and compile"
}

phase_data() {
    local end=$((SECONDS + $1))
    bench_step $(($1 / 2)) fbank bench/test_fbank.py
    bench_step $((end - SECONDS)) pipeline bench/test_data_pipeline.py
}

weight_left=0
for phase in "${PHASES[@]}"; do weight_left=$((weight_left + WEIGHT[$phase])); done
for phase in "${PHASES[@]}"; do
    budget=$(($(left) * WEIGHT[$phase] / weight_left))
    weight_left=$((weight_left - WEIGHT[$phase]))
    echo "# $(date -u +%T) phase $phase: ${budget}s"
    "phase_$phase" "$budget"
done

echo "# done after ${SECONDS}s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
[[ -f "$OUT/tests.log" ]] && grep -E "^## |^(FAILED|ERROR) |[0-9]+ (passed|failed)" "$OUT/tests.log" | tail -n 40
[[ -f "$OUT/bench_table.md" ]] && cat "$OUT/bench_table.md"
exit 0
