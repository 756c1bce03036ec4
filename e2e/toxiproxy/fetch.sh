#!/usr/bin/env bash
# Builds Toxiproxy's server once per machine from the Go module proxy (it is a Go program) and
# prints its path: the fault proxy the chaos harness puts between the controllers and the API
# server. Cached outside the work tree by version, like the control plane.
exec bash "$(dirname "$0")/../go-tool.sh" toxiproxy v2.12.0 github.com/Shopify/toxiproxy/v2/cmd/server
