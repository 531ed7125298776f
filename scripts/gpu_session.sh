#!/usr/bin/env bash
# Everything a lent GPU should run, in one command (see the device tool's README):
#   GPU parity tests (pytest -m gpu), the inductor compile tests, then the full benchmark suite, with the
#   pytest-benchmark JSON, the rendered table and the logs written under $OUT (default: ./gpu-out).
# Optional wheels (xformers) are installed from ./.whl when present.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 || cat "$OUT/install.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
python3 -m pytest -m gpu tests -q -rs --durations=20 2>&1 | tee "$OUT/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
python3 -m pytest bench -q -rs --benchmark-json="$OUT/bench_${stamp}.json" 2>&1 | tail -60 > "$OUT/bench.log"
python3 -m bench.report "$OUT/bench_${stamp}.json" --plot "$OUT/speedups.png" > "$OUT/bench_table.md" 2>&1
echo "gpu tests exit code: $tests_rc"
cat "$OUT/bench_table.md"
