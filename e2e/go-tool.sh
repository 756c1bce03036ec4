#!/usr/bin/env bash
# Builds a Go program once per machine from the Go module proxy and prints its path, cached
# outside the work tree by name and version: go-tool.sh NAME VERSION PACKAGE prints
# $ORRERY_CACHE/NAME-VERSION/<the package's binary>.
set -euo pipefail
name=$1 version=$2 package=$3
cache=${ORRERY_CACHE:-$HOME/.cache/orrery}
out="$cache/$name-$version/$(basename "$package")"
if [ ! -x "$out" ]; then
  echo "building $name $version into $out" >&2
  start=$(date +%s)
  GOBIN="$(dirname "$out")" GOFLAGS=-trimpath go install -ldflags='-s -w' "$package@$version"
  echo "$name built in $(( $(date +%s) - start ))s" >&2
fi
echo "$out"
