#!/usr/bin/env bash
# The GPU suite (issue 19): CUDA tests, kernels against their peers and the roofline, engine decode
# against the planner, in one command that stays under 8 minutes on one H200.
#
#   bash benchmarks/gpu_suite.sh RESULTS_DIR             # on the GPU machine
#   bash benchmarks/gpu_suite.sh --dry-run RESULTS_DIR   # anywhere: every step's code on CPU, tiny sizes
#
# What the GPU machine lacks travels in benchmarks/.vendor (git-ignored; benchmarks/gpu_prepare.py
# fills it and prints the device call): vLLM's Triton Mamba files and wheels (pydantic and its
# needs), installed here into a private folder first. The steps are in benchmarks/gpu_suite.py.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
wheels=benchmarks/.vendor/wheels
dry_run=0
for arg in "$@"; do [[ $arg == --dry-run ]] && dry_run=1; done
if compgen -G "$wheels/*.whl" >/dev/null; then
  if (( dry_run )); then
    echo "dry run: carried wheels in $wheels not installed (they are built for the GPU machine's Python)"
  else
    site=$(mktemp -d /tmp/nemodeploy-site.XXXXXX)
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl \
      || { echo "gpu_suite: installing the carried wheels from $wheels failed" >&2; exit 1; }
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec "$python" benchmarks/gpu_suite.py "$@"
