# Everything runs from the project venv (.venv), created by `make setup`.
PY ?= .venv/bin/python
PYTHON ?= python3

.PHONY: setup generate verify lint test test-fast bench bench-engine demo clean

setup:
	bash scripts/setup.sh

generate:
	$(PY) scripts/genproto.py

# Regenerate into a scratch dir and fail if the committed code differs.
verify:
	$(PY) scripts/verify_generated.py

lint:
	$(PY) -m ruff check src tests scripts
	$(PY) -m ruff format --check src tests scripts
	$(PY) -m mypy

# The full suite, as CI runs it (installs what it needs on a fresh machine).
test:
	bash scripts/test.sh

# Quick loop while developing: no lint, no interop, no chaos.
test-fast:
	$(PY) -m pytest -q -m "not interop and not chaos"

# Every plugin path against its raw baseline (docs/performance.md); BENCH_ARGS=--quick for CI.
bench:
	$(PY) -m workflow_eventbus.cli.main bench $(BENCH_ARGS)

# The same job through cmd/server (ours, the built-in messaging.nats) and FastStream
# (docs/performance.md "Engine bench"); BENCH_ARGS=--quick for the short mode.
bench-engine:
	$(PY) -m workflow_eventbus.cli.main bench --engine $(BENCH_ARGS)

demo:
	$(PY) -m workflow_eventbus.cli.main demo

clean:
	rm -rf build dist .pytest_cache .mypy_cache bench/results.json
