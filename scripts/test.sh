#!/usr/bin/env bash
# The project's test command (README, CI): set up, check generated code and
# lint, then run every suite against real servers (nats-server, PostgreSQL and,
# for tests/interop, the Go workflow engine built from its published module).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
PY=.venv/bin/python

echo "== generated protobuf code" && $PY scripts/verify_generated.py
echo "== lint" && $PY -m ruff check src tests scripts && $PY -m ruff format --check src tests scripts
echo "== types" && $PY -m mypy
echo "== workflow engine for tests/interop (built once, cached by version)"
WORKFLOW_ENGINE_BIN_DIR="$(bash interop/build.sh | tail -n 1)"
export WORKFLOW_ENGINE_BIN_DIR
echo "== tests"
$PY -m pytest -q -p no:cacheprovider "$@"
if [ -f src/workflow_eventbus/cli/bench.py ]; then
  echo "== benchmark (short mode; ratios reported, not asserted)"
  $PY -m workflow_eventbus.cli.main bench --quick
  echo "== engine bench (short mode; reported, not asserted)"
  # With 127.0.0.1:4222 taken it skips the built-in rows and prints why.
  if [ -x "$WORKFLOW_ENGINE_BIN_DIR/server" ]; then
    $PY -m workflow_eventbus.cli.main bench --engine --quick ||
      echo "engine bench: a row broke (see above); reported, not asserted"
  else
    echo "engine bench skipped: no engine binaries in '$WORKFLOW_ENGINE_BIN_DIR' (interop/build.sh)"
  fi
fi
