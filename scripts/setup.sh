#!/usr/bin/env bash
# Idempotent setup for a fresh machine: the project venv with pinned packages,
# and (as root, with apt) the PostgreSQL server package the pgchannel tests use,
# the Prometheus server package the metrics scrape test uses, and the Kafka
# broker jars (Maven Central; Java and Maven from Debian when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import workflow_eventbus, grpc_tools, pytest" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  touch .venv/.installed
fi

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing PostgreSQL (Debian package)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
  else
    echo "warning: PostgreSQL server binaries not found; pgchannel tests need them" >&2
  fi
fi

if [ ! -x /usr/bin/prometheus ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Prometheus (Debian package; the metrics test scrapes the plugin with it)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "warning: /usr/bin/prometheus not found; the Prometheus scrape test needs it" >&2
  fi
fi

# Kafka: the broker jars from Maven Central (needs java and mvn) into a cache dir.
if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Java 17 and Maven (Debian packages; the Kafka tests run a real broker)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless maven >/dev/null
  fi
fi
bash scripts/kafka/fetch_jars.sh
