#!/usr/bin/env bash
# stgcma-fast's GPU tests and benchmarks on a CUDA machine, within a time budget, the most important first:
#
#   scripts/gpu_session.sh [--budget SECONDS] [--out DIR] [--jobs N] [--wheels DIR] [--no-install] [--dry-run]
#                          [PHASE ...]
#
# The phases, their order and time estimates, and the files written are described in scripts/gpu_check.py (or run
# `scripts/gpu_session.sh --help`). PYTHON selects the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
