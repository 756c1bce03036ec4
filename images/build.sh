#!/usr/bin/env bash
# Builds one image per controller without a container daemon: static musl binaries, then
# images/Dockerfile with buildah (vfs storage, nothing to pull: the base is scratch), saved as
# an OCI layout under target/images/<controller>. Pass controller names to build only those.
#   images/build.sh [controller...]
# Push one with: skopeo copy oci:target/images/oci:task-workflow docker://REGISTRY/task-workflow:TAG
set -euo pipefail
cd "$(dirname "$0")/.."
controllers=("$@")
if [ ${#controllers[@]} -eq 0 ]; then
  controllers=(ignitor-scheduler task-workflow staged-binding hierarchy-executor policy-runner)
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
target=x86_64-unknown-linux-musl
for tool in musl-gcc buildah; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install musl-tools buildah" >&2; exit 1; }
done
rustup target add "$target" >/dev/null
packages=()
for c in "${controllers[@]}"; do packages+=(-p "$c"); done
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked --target "$target" "${packages[@]}"

bin="target/$target/release"
out=target/images
mkdir -p "$out"
storage=(--storage-driver vfs --root "$out/storage" --runroot "$out/run")
for c in "${controllers[@]}"; do
  if readelf -d "$bin/$c" | grep -q NEEDED; then
    echo "$bin/$c needs shared libraries; the image has none" >&2
    exit 1
  fi
  buildah "${storage[@]}" bud --quiet --isolation chroot -f images/Dockerfile \
    --build-arg CONTROLLER="$c" -t "orrery/$c:$version" "$bin" >/dev/null
  buildah "${storage[@]}" push --quiet "orrery/$c:$version" "oci:$out/oci:$c"
  echo "$c: oci:$out/oci:$c ($(du -h "$bin/$c" | cut -f1) binary)"
done
