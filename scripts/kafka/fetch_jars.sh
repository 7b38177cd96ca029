#!/usr/bin/env bash
# Fetch the Kafka broker jars named in scripts/kafka/pom.xml from Maven Central
# into the cache dir devservers/kafka.py looks in (kafka_libs_dir()), once per
# pom: quiet when the cache already matches. Prints nothing on success.
#   EVENTBUS_KAFKA_LIBS  use this dir instead (then nothing is fetched)
set -euo pipefail
cd "$(dirname "$0")"

[ -n "${EVENTBUS_KAFKA_LIBS:-}" ] && exit 0
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' pom.xml)
libs="${XDG_CACHE_HOME:-$HOME/.cache}/workflow-eventbus/kafka-$version/libs"
stamp="$libs/.pom.sha256"
want=$(sha256sum pom.xml | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
for tool in java mvn; do
  if ! command -v "$tool" >/dev/null; then
    echo "kafka: '$tool' not found; install Java 17+ and Maven (Debian: apt-get install openjdk-17-jre-headless maven)" >&2
    exit 1
  fi
done
echo "fetching Kafka $version broker jars (Maven Central) into $libs" >&2
mkdir -p "$(dirname "$libs")"
tmp="$libs.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp" "$tmp.log"' EXIT
if ! mvn -q -B -Dstyle.color=never dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$tmp" >"$tmp.log" 2>&1; then
  cat "$tmp.log" >&2
  rm -f "$tmp.log"
  exit 1
fi
rm -f "$tmp.log"
rm -rf "$libs"
mv "$tmp" "$libs"
echo "$want" >"$stamp"
