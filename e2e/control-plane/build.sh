#!/usr/bin/env bash
# Builds the control-plane binary once per machine and prints its path.
# The build is cached outside the work tree, keyed by the hash of the Go sources and go.sum,
# so tests, the demo and CI reuse it until the control plane itself changes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${ORRERY_CACHE:-$HOME/.cache/orrery}
key=$(cat "$here"/go.mod "$here"/go.sum "$here"/*.go | sha256sum | cut -c1-16)
out="$cache/control-plane-$key/control-plane"
if [ ! -x "$out" ]; then
  echo "building the control plane (kube-apiserver, etcd, kube-controller-manager; kubelet, kube-scheduler, kube-proxy for the real node) into $out" >&2
  mkdir -p "$(dirname "$out")"
  start=$(date +%s)
  (cd "$here" && go build -trimpath -ldflags='-s -w' -o "$out.tmp" .)
  mv "$out.tmp" "$out"
  echo "control plane built in $(( $(date +%s) - start ))s" >&2
fi
echo "$out"
