# make test  : create/reuse .venv (pinned requirements.txt), build fastrnn, run the tests
# make bench : same environment, run the benchmark
# make test PYTHON=/path/to/python : use that environment as it is, install nothing,
#                                    build the C++ extension in place if a compiler allows
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

.PHONY: test bench inplace clean

test: $(READY)
	bash tests/run.sh $(PY)

bench: $(READY)
	$(PY) -m bench

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

clean:
	rm -rf build *.egg-info fastrnn/_C*.so $(VENV)
