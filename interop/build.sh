#!/usr/bin/env bash
# Build the GoCodeAlone workflow engine (cmd/server and cmd/wfctl) at the version
# pinned in interop/go.mod, from the Go module proxy only, into a cache directory
# keyed by that version. A rerun with both binaries present does nothing.
#
# Prints the directory that holds `server` and `wfctl` as the last line of stdout.
#
# Environment:
#   GO                       go command to use (default: `go` on PATH, else /usr/local/go/bin/go)
#   WORKFLOW_INTEROP_CACHE   cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/workflow-eventbus-interop)
#   WORKFLOW_INTEROP_REBUILD set to 1 to rebuild even when the binaries exist
#   WORKFLOW_ENGINE_VERSION  build another engine release (e.g. v0.57.0) instead of the
#                            pinned one: resolved with `go get` in a scratch module
#                            (checksums from the Go checksum database, not go.sum)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
module_path="github.com/GoCodeAlone/workflow"

pinned="$(awk -v m="$module_path" '$1 == m { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$here/go.mod")"
if [[ -z "$pinned" ]]; then
    echo "build.sh: no '$module_path' requirement in $here/go.mod" >&2
    exit 2
fi
version="${WORKFLOW_ENGINE_VERSION:-$pinned}"

cache_root="${WORKFLOW_INTEROP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/workflow-eventbus-interop}"
out="$cache_root/$version"

have_binaries() {
    [[ -x "$out/server" && -x "$out/wfctl" ]]
}

if have_binaries && [[ "${WORKFLOW_INTEROP_REBUILD:-0}" != "1" ]]; then
    echo "$out"
    exit 0
fi

go_cmd="${GO:-}"
if [[ -z "$go_cmd" ]]; then
    if command -v go >/dev/null 2>&1; then
        go_cmd="go"
    elif [[ -x /usr/local/go/bin/go ]]; then
        go_cmd=/usr/local/go/bin/go
    else
        echo "build.sh: no Go toolchain found (set GO=/path/to/go)" >&2
        exit 2
    fi
fi

mkdir -p "$out"

# Serialise concurrent builds of the same version (two test sessions, CI retries).
exec 9>"$out/.build.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi
if have_binaries && [[ "${WORKFLOW_INTEROP_REBUILD:-0}" != "1" ]]; then
    echo "$out"
    exit 0
fi

staging="$(mktemp -d "$out/.staging.XXXXXX")"
trap 'rm -rf "$staging"' EXIT

echo "build.sh: building workflow $version (cmd/server, cmd/wfctl) with $("$go_cmd" version)" >&2
start=$(date +%s)
moddir="$here"
if [[ "$version" != "$pinned" ]]; then
    moddir="$staging/module"
    mkdir -p "$moddir"
    # A fresh module, not a copy of ours: minimal version selection would otherwise
    # keep our (newer) dependency versions, which an older engine may not compile with.
    (
        cd "$moddir"
        "$go_cmd" mod init workflow-eventbus-interop-scratch >/dev/null 2>&1
        # Start from the engine's own go.sum: the checksums its release was built
        # with (the checksum database does not answer for every old dependency).
        engine_dir="$("$go_cmd" mod download -json "$module_path@$version" |
            sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
        if [[ -f "$engine_dir/go.sum" ]]; then
            cp "$engine_dir/go.sum" go.sum
            chmod u+w go.sum
        fi
        "$go_cmd" get -tool "$module_path/cmd/server@$version" "$module_path/cmd/wfctl@$version"
    )
fi
(
    cd "$moddir"
    # For the pinned version go.sum is committed: -mod=readonly makes a missing or
    # changed checksum an error instead of a silent update. Only the module proxy
    # (GOPROXY) is contacted.
    CGO_ENABLED=0 "$go_cmd" build -mod=readonly -trimpath -o "$staging/" \
        "$module_path/cmd/server" "$module_path/cmd/wfctl"
)
mv -f "$staging/server" "$out/server"
mv -f "$staging/wfctl" "$out/wfctl"
echo "$version" > "$out/VERSION"
echo "build.sh: built in $(( $(date +%s) - start ))s into $out" >&2
echo "$out"
