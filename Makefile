# Everything runs from the project venv (.venv), created by `make setup`.
PY ?= .venv/bin/python
PYTHON ?= python3

.PHONY: setup generate verify lint test test-all bench demo clean

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

test:
	$(PY) -m pytest -q -m "not interop"

test-all:
	$(PY) -m pytest -q

bench:
	$(PY) -m workflow_eventbus.cli.main bench

demo:
	$(PY) -m workflow_eventbus.cli.main demo

clean:
	rm -rf build dist .pytest_cache .mypy_cache bench/results.json
