#!/usr/bin/env bash
# Builds helm once per machine from the Go module proxy (helm is a Go program) and prints its
# path. Cached outside the work tree by version, like the control plane.
exec bash "$(dirname "$0")/../go-tool.sh" helm v3.22.0 helm.sh/helm/v3/cmd/helm
