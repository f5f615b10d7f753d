# make test  : create/reuse .venv (pinned requirements.txt), build fastrnn, run the tests
# make bench : same environment, run the benchmark
# make examples : same environment, every example of examples/ in full with --compare, one after
#                 the other (the pictures and JSON in examples/results/; about 15-20 minutes on 2 cores)
# make test PYTHON=/path/to/python : use that environment as it is, install nothing,
#                                    build the C++ extension in place if a compiler allows
# make sanitize : the cpp lane (C++ tests, parity, ops, precision) against an extension built
#                 with -fsanitize=address,undefined in a scratch copy (build/sanitize); any
#                 sanitizer report fails it
# make lint   : ruff check, ruff format --check and clang-format --dry-run on csrc/; changes nothing
# make format : applies ruff's fixes, ruff format and clang-format -i (pinned versions from
#               requirements.txt; with PYTHON=..., that environment's ruff and clang-format)
PYTHON ?=
VENV   := .venv
CSRC   := $(wildcard csrc/*.cpp csrc/*.h)

ifeq ($(strip $(PYTHON)),)
PY    := $(VENV)/bin/python
READY := $(VENV)/.built
else
PY    := $(PYTHON)
READY := inplace
endif

.PHONY: test bench examples inplace clean sanitize lint format

test: $(READY)
	bash tests/run.sh $(PY)

bench: $(READY)
	$(PY) -m bench

EXAMPLES := char_lm forecast classify seq2seq gates
examples: $(READY)
	set -e; for e in $(EXAMPLES); do PYTHONPATH=. $(PY) -m examples.$$e --compare --no-progress; done

$(VENV)/.deps: requirements.txt
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q torch==2.13.0
	$(VENV)/bin/python -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps setup.py pyproject.toml $(CSRC)
	$(VENV)/bin/python -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

# An existing environment (e.g. a GPU image without network): nothing is installed, the
# package runs from the source tree. The C++ backend is optional there.
inplace:
	@if [ -n "$(CSRC)" ]; then $(PY) setup.py -q build_ext --inplace \
	  || echo "warning: C++ extension not built; the cpp backend will be unavailable"; fi

# The tools come from the environment of $(PY): ruff as a module, clang-format from its
# scripts directory (the pip wheel puts the binary there). Expanded when a recipe runs, after
# $(VENV)/.deps has installed them.
RUFF         = $(PY) -m ruff
CLANG_FORMAT ?= $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/clang-format
CXX_FILES    := $(shell find csrc \( -name '*.h' -o -name '*.cpp' \) | sort)
TOOLS        := $(if $(strip $(PYTHON)),,$(VENV)/.deps)
CHECK_CLANG_FORMAT = test -x "$(CLANG_FORMAT)" || { echo "no clang-format at $(CLANG_FORMAT):" \
                     "pip install -r requirements.txt there, or set CLANG_FORMAT=/path/to/it"; exit 1; }

# all three checks run and report; any failure fails the target
lint: $(TOOLS)
	@$(CHECK_CLANG_FORMAT)
	@status=0; \
	$(RUFF) check . || status=1; \
	$(RUFF) format --check . || status=1; \
	"$(CLANG_FORMAT)" --dry-run -Werror $(CXX_FILES) || status=1; \
	exit $$status

# check --fix before format, so the formatter has the last word on layout; what --fix cannot
# repair is printed and left for a person (make lint then fails on it)
format: $(TOOLS)
	@$(CHECK_CLANG_FORMAT)
	$(RUFF) check --fix --exit-zero .
	$(RUFF) format .
	"$(CLANG_FORMAT)" -i $(CXX_FILES)

# Python itself is not instrumented, so the sanitizer runtimes are preloaded; leak checking
# is off (the interpreter keeps its allocations at exit by design). --capture=sys: pytest
# would otherwise swallow the report written to fd 2 by a process that then aborts.
SAN_DIR   := build/sanitize
SAN_PY    := $(if $(findstring /,$(PY)),$(abspath $(PY)),$(PY))
SAN_TESTS ?= tests/test_cpp.py tests/test_parity.py tests/test_ops.py tests/test_precision.py \
  tests/test_variants.py::test_layer_matches_equations tests/test_variants.py::test_cell_matches_equations \
  tests/test_variants.py::test_half_precision_against_fp32_oracle tests/test_fastpaths.py
sanitize: $(if $(strip $(PYTHON)),,$(VENV)/.deps)
	rm -rf $(SAN_DIR) && mkdir -p $(SAN_DIR)
	tar --exclude=./build --exclude=./.venv --exclude=./.git --exclude='*.so' -cf - . | tar -xf - -C $(SAN_DIR)
	cd $(SAN_DIR) && SANITIZE=1 $(SAN_PY) setup.py -q build_ext --inplace
	cd $(SAN_DIR) && LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  PYTHONPATH=. FASTRNN_BACKEND=cpp $(SAN_PY) -m pytest $(SAN_TESTS) -q -p no:cacheprovider --capture=sys

clean:
	rm -rf build *.egg-info fastrnn/_C*.so $(VENV)
