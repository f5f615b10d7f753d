#!/usr/bin/env bash
# The test suite, once per backend lane available on this machine.
#   tests/run.sh PYTHON [extra pytest args]
set -euo pipefail
PY=${1:-python}; shift || true
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
# The examples (tests/test_example_*.py) train small models end to end on the backend a user
# gets by default: they run once, in the cpp lane, or in the reference lane where cpp is missing
# (the reference backend's own numbers are checked by the rest of the suite; its Python time
# loop makes the examples take minutes).
if "$PY" -c "import fastrnn, sys; sys.exit(fastrnn.available_backends()['cpp'] != 'available')"; then
  CPP=1; EXAMPLES_IN_REFERENCE=(--ignore-glob='tests/test_example_*.py')
else
  CPP=0; EXAMPLES_IN_REFERENCE=()
fi
echo "== lane: reference backend (whole suite${EXAMPLES_IN_REFERENCE:+ but the examples})"
FASTRNN_BACKEND=reference "$PY" -m pytest tests -q "${EXAMPLES_IN_REFERENCE[@]}" "$@"
if [ "$CPP" = 1 ]; then
  echo "== lane: cpp backend (whole suite, examples included)"
  FASTRNN_BACKEND=cpp "$PY" -m pytest tests -q "$@"
  echo "== bench's own checks: its peers against fastrnn, each benchmark called once (bench/test_*.py)"
  FASTRNN_BACKEND=cpp "$PY" -m pytest bench -q --benchmark-disable "$@"
else
  echo "== lane: cpp backend skipped: $("$PY" -c "import fastrnn; print(fastrnn.available_backends()['cpp'])")"
fi
# the interpreter runs the kernels in numpy: the files whose cases are small enough
TRITON_FILES="tests/test_triton.py tests/test_triton_gemm.py tests/test_triton_layernorm.py tests/test_beyond.py tests/test_module_samples.py tests/test_precision.py
  tests/test_transforms.py tests/test_dropin.py tests/test_interop.py tests/test_variants.py"
echo "== lane: triton backend through the interpreter ($(echo $TRITON_FILES))"
TRITON_INTERPRET=1 FASTRNN_BACKEND=triton "$PY" -m pytest $TRITON_FILES -q "$@"
if "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "== lane: triton backend on the GPU ($(echo $TRITON_FILES))"
  FASTRNN_TEST_DEVICE=cuda FASTRNN_BACKEND=triton "$PY" -m pytest $TRITON_FILES -q "$@"
else
  echo "== lane: triton backend on the GPU skipped: no CUDA device"
fi
echo "== lane: triton kernels compiled for sm_90 without a GPU (tests/test_triton_compile.py)"
FASTRNN_BACKEND=triton "$PY" -m pytest tests/test_triton_compile.py -q "$@"
