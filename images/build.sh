#!/usr/bin/env bash
# Builds one image per controller without a container daemon or a registry: static binaries
# (glibc, linked statically: no shared library in the image), each written as a docker-archive
# tar (what `docker save` writes) by images/archive.sh, under target/images/<controller>.tar,
# tagged orrery/<controller>:<version>. Pass controller names to build only those.
#   images/build.sh [controller...]
# Load one with: ctr -n k8s.io image import target/images/task-workflow.tar
#            or: docker load -i target/images/task-workflow.tar
# images/Dockerfile describes the same image for builders that have a daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
source images/archive.sh
controllers=("$@")
if [ ${#controllers[@]} -eq 0 ]; then
  controllers=(ignitor-scheduler task-workflow staged-binding hierarchy-executor policy-runner lambda-executor)
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
target=x86_64-unknown-linux-gnu
for tool in readelf sha256sum tar; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install binutils coreutils tar" >&2; exit 1; }
done
packages=()
for c in "${controllers[@]}"; do packages+=(-p "$c"); done
# The cargo profile: `release` (fat LTO, size-optimised: what you ship) unless
# ORRERY_IMAGE_PROFILE says otherwise; CI builds `dev` images, the same code linked the same
# way without the optimiser's half hour on two cores.
profile=${ORRERY_IMAGE_PROFILE:-release}
case "$profile" in
  release) dir=release ;;
  dev) dir=debug ;;
  *) echo "ORRERY_IMAGE_PROFILE must be release or dev, not $profile" >&2; exit 1 ;;
esac
start=$(date +%s)
# With --target, RUSTFLAGS reach the controllers only, not build scripts run on this machine.
RUSTFLAGS='-C target-feature=+crt-static' cargo build --profile "$profile" --locked --target "$target" "${packages[@]}"
echo "controllers built ($profile) in $(( $(date +%s) - start ))s" >&2

bin="target/$target/$dir"
out=target/images
mkdir -p "$out"
for c in "${controllers[@]}"; do
  if readelf -d "$bin/$c" | grep -q NEEDED; then
    echo "$bin/$c needs shared libraries; the image has none" >&2
    exit 1
  fi
  root=$(mktemp -d)
  cp "$bin/$c" "$root/controller"
  write_image "$out/$c.tar" "orrery/$c:$version" "$root" \
    '{"Entrypoint":["/controller"],"User":"65532:65532","ExposedPorts":{"8080/tcp":{}}}'
  rm -rf "$root"
  echo "$c: $out/$c.tar, orrery/$c:$version ($(du -h "$bin/$c" | cut -f1) binary)"
done
echo "images written in $(( $(date +%s) - start ))s" >&2
