# edgeloop: the commands people and CI use alike.
#   make demo   the whole loop on this machine (installs what is missing first)
#   make test   lint, type check and the test suite (same)
#   make bench  the benchmarks, figures and ratios from one run
#   make schemathesis  the REST API fuzzed from its OpenAPI schema (part of make test)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

export LITERT_TORCH_SHOW_PROGRESS = n
export TF_CPP_MIN_LOG_LEVEL = 3

.PHONY: all install redis demo demo-quick test test-examples test-fast test-edge-only test-tflite-runtime \
	edge-venvs venv-edge venv-tflite edge-only-tests tflite-runtime-tests schemathesis lint typecheck bench clean

all: test

# torch is pinned and installed first so that nothing resolves a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[edge,cloud,dev]'
	touch $(STAMP)

install: $(STAMP) redis

redis:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (apt)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server >/dev/null; }
	@redis-server --version
	@# the chaos scenario builds its wall-clock shim (cloud/demo/chaos/clockshift.c)
	@command -v cc >/dev/null || { \
	  echo "installing a C compiler (apt)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq gcc libc6-dev >/dev/null; }

demo: install
	$(VENV)/bin/edgeloop demo

demo-quick: install
	$(VENV)/bin/edgeloop demo --quick

# The suite in two parts side by side (tests/conftest.py, PART_ONE): one holds the
# whole quick demos, which it starts with its first test and runs two at a time
# (tests/demo_runs.py); each part alone leaves a core idle much of the time (its tests
# wait on processes and sockets). Lint, the type check and the two edge-only
# environments' builds run at the lowest CPU priority behind them and fail the run as
# they would before it; the edge-only suites then run beside schemathesis. CI and a
# person run the same.
PYTEST_RUN = $(PY) -m pytest -q -m "not example and not bench_run"
test: install
	@nice -n 19 $(MAKE) --no-print-directory lint typecheck edge-venvs > .test-prep.log 2>&1 & prep=$$!; \
	$(PYTEST_RUN) -p no:cacheprovider --part one --durations=15 > .test-part-one.log 2>&1 & one=$$!; \
	$(PYTEST_RUN) --part two --durations=20; two=$$?; \
	wait $$one; one_rc=$$?; echo "--- part one (tests/conftest.py, PART_ONE)"; cat .test-part-one.log; \
	if ! wait $$prep; then cat .test-prep.log; echo "lint, typecheck or edge-venvs failed"; exit 1; fi; \
	echo "lint, typecheck and the edge-only environments: ok"; \
	[ $$one_rc = 0 ] && [ $$two = 0 ]
	$(MAKE) --no-print-directory -j3 --output-sync=target schemathesis edge-only-tests tflite-runtime-tests

# Each shipped example's quick demo end to end (a few minutes each).
test-examples: install
	$(PY) -m pytest -q -m example

# Whole benchmarks run as tests (their quick forms): a minute or so each.
test-benches: install
	$(PY) -m pytest -q -m bench_run

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# The edge and shared tests in an environment of their own (run from tests/ so
# that they import what that environment installed).
EDGE_TESTS = cd tests && ../$(1)/bin/python -m pytest -q -p no:cacheprovider -c ../pyproject.toml --rootdir .. -m "not failover" edge shared
TEST_DEPS = pytest pytest-timeout hypothesis

# An edge-only install: no torch may arrive, and the daemon must start.
test-edge-only: venv-edge
	$(MAKE) --no-print-directory edge-only-tests

# One after the other: both build the project from this tree (setuptools' build/).
edge-venvs:
	$(MAKE) --no-print-directory venv-edge
	$(MAKE) --no-print-directory venv-tflite

venv-edge:
	rm -rf .venv-edge
	$(PYTHON) -m venv .venv-edge
	.venv-edge/bin/pip install --quiet '.[edge]' $(TEST_DEPS)
	@! .venv-edge/bin/python -c "import torch" 2>/dev/null || { echo "torch arrived with .[edge]"; exit 1; }
	.venv-edge/bin/edgeloop-edge --help >/dev/null

edge-only-tests: redis
	$(call EDGE_TESTS,.venv-edge)

# The same on tflite-runtime 2.14 (numpy < 2), the runtime for boards without
# an ai-edge-litert wheel.
test-tflite-runtime: venv-tflite
	$(MAKE) --no-print-directory tflite-runtime-tests

venv-tflite:
	rm -rf .venv-tflite
	$(PYTHON) -m venv .venv-tflite
	.venv-tflite/bin/pip install --quiet '.[edge-tflite]' $(TEST_DEPS)
	@! .venv-tflite/bin/python -c "import ai_edge_litert" 2>/dev/null || { echo "ai-edge-litert arrived with .[edge-tflite]"; exit 1; }

tflite-runtime-tests: redis
	$(call EDGE_TESTS,.venv-tflite)

# The REST API on a private redis-server, fuzzed by schemathesis from its own
# OpenAPI schema with an admin token; any 5xx answer fails (about 30 s).
schemathesis: install
	$(PY) tests/schemathesis_api.py

# Style, formatting, and the layering contracts in pyproject.toml ([tool.importlinter]).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: install
	@command -v wrk >/dev/null || { echo "installing wrk (apt)"; $(SUDO) apt-get install -y -qq wrk >/dev/null; }
	$(PY) -m bench

clean:
	rm -rf $(VENV) .venv-edge .venv-tflite .pytest_cache build *.egg-info
