#!/usr/bin/env bash
# Builds the Prometheus server once per machine from the Go module proxy (Prometheus is a Go
# program) and prints the path of its binary, cached outside the work tree by version, like
# helm. Not Debian's package: it leaves out Kubernetes service discovery, with which the tests
# of the chart on the real node find the controllers' pods. Of the service discoveries only
# Kubernetes' is built in (besides static and file targets), which keeps the cloud providers'
# SDKs out of the build; the first build still takes minutes.
set -euo pipefail
version=v0.316.0 # the module version of Prometheus 3.16.0
cache=${ORRERY_CACHE:-$HOME/.cache/orrery}
out="$cache/prometheus-$version-kubernetes-sd/prometheus"
if [ ! -x "$out" ]; then
  if ! command -v go >/dev/null; then
    echo "fetch.sh: Go 1.26.7 or newer is needed to build Prometheus;" \
      "or set ORRERY_PROMETHEUS to a prometheus 3.16 binary" >&2
    exit 1
  fi
  echo "building Prometheus $version (3.16.0) into $out" >&2
  start=$(date +%s)
  mkdir -p "$(dirname "$out")"
  # Built aside and renamed into place: two test runs may build at once.
  work=$(mktemp -d "$(dirname "$out")/partial.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  GOBIN="$work" CGO_ENABLED=0 GOFLAGS=-trimpath \
    go install -tags remove_all_sd,enable_kubernetes_sd -ldflags='-s -w' \
    "github.com/prometheus/prometheus/cmd/prometheus@$version"
  mv "$work/prometheus" "$out"
  echo "Prometheus built in $(( $(date +%s) - start ))s" >&2
fi
echo "$out"
