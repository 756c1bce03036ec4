#!/usr/bin/env bash
# Builds helm once per machine from the Go module proxy (helm is a Go program) and prints its
# path. Cached outside the work tree by version, like the control plane.
set -euo pipefail
version=v3.22.0
cache=${ORRERY_CACHE:-$HOME/.cache/orrery}
out="$cache/helm-$version/helm"
if [ ! -x "$out" ]; then
  echo "building helm $version into $out" >&2
  start=$(date +%s)
  GOBIN="$(dirname "$out")" GOFLAGS=-trimpath go install -ldflags='-s -w' "helm.sh/helm/v3/cmd/helm@$version"
  echo "helm built in $(( $(date +%s) - start ))s" >&2
fi
echo "$out"
