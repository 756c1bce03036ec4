#!/usr/bin/env bash
# Builds Toxiproxy's server once per machine from the Go module proxy (it is a Go program) and
# prints its path: the fault proxy the chaos harness puts between the controllers and the API
# server. Cached outside the work tree by version, like the control plane.
set -euo pipefail
version=v2.12.0
cache=${ORRERY_CACHE:-$HOME/.cache/orrery}
out="$cache/toxiproxy-$version/server"
if [ ! -x "$out" ]; then
  echo "building toxiproxy $version into $out" >&2
  start=$(date +%s)
  GOBIN="$(dirname "$out")" GOFLAGS=-trimpath go install -ldflags='-s -w' \
    "github.com/Shopify/toxiproxy/v2/cmd/server@$version"
  echo "toxiproxy built in $(( $(date +%s) - start ))s" >&2
fi
echo "$out"
