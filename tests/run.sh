#!/usr/bin/env bash
# The test suite, once per backend lane available on this machine.
#   tests/run.sh PYTHON [extra pytest args]
set -euo pipefail
PY=${1:-python}; shift || true
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
echo "== lane: reference backend (whole suite)"
FASTRNN_BACKEND=reference "$PY" -m pytest tests -q "$@"
