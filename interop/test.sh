#!/usr/bin/env bash
# Build (or reuse) the pinned workflow engine, then run the interop tests against it.
#   interop/test.sh [pytest args...]
# Needs the project venv (`make setup`) and a Go toolchain for the first build.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="$(bash "$repo/interop/build.sh" | tail -n 1)"
cd "$repo"
WORKFLOW_ENGINE_BIN_DIR="$bin_dir" exec "${PY:-.venv/bin/python}" -m pytest -q -m interop tests/interop "$@"
