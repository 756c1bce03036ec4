#!/usr/bin/env bash
# Builds the real node's two images, as docker-archive tars, and prints the directory holding
# them (cached under ~/.cache/orrery, keyed by these sources and the busybox binary):
#   pause.tar    orrery-test/pause:1    the pod sandbox: a static Go program waiting for SIGTERM
#   busybox.tar  orrery-test/busybox:1  Debian's static busybox with every applet linked in /bin
#                                       (sh, httpd, sleep, wget, ...); also tagged :latest
# Pods name orrery-test/busybox:1 (a tag other than latest: pulled only if not present).
# Nothing is pulled: the harness imports them into its containerd.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../../images/archive.sh"
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "images.sh: $busybox is missing: run e2e/node/setup.sh (busybox-static)" >&2; exit 1; }
if readelf -d "$busybox" 2>/dev/null | grep -q NEEDED; then
  echo "images.sh: $busybox is not static (install busybox-static)" >&2
  exit 1
fi
cache=${ORRERY_CACHE:-$HOME/.cache/orrery}
key=$(cat "$0" "$here/../../images/archive.sh" "$here"/pause/* "$busybox" | sha256sum | cut -c1-16)
out="$cache/node-images-$key"
if [ ! -d "$out" ]; then
  start=$(date +%s)
  # Written aside and renamed into place: two test runs may build at once.
  mkdir -p "$cache"
  partial=$(mktemp -d "$out.partial.XXXXXX")
  work=$(mktemp -d)
  trap 'rm -rf "$work" "$partial"' EXIT

  mkdir -p "$work/pause"
  (cd "$here/pause" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$work/pause/pause" .)
  write_image "$partial/pause.tar" orrery-test/pause:1 "$work/pause" '{"Entrypoint":["/pause"]}'

  root="$work/busybox"
  mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/var/www" "$root/root"
  chmod 1777 "$root/tmp"
  cp "$busybox" "$root/bin/busybox"
  for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' >"$root/etc/group"
  config='{"Env":["PATH=/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/"}'
  write_image "$partial/busybox.tar" "orrery-test/busybox:1 orrery-test/busybox:latest" "$root" "$config"
  chmod 755 "$partial"
  mv -T "$partial" "$out" 2>/dev/null || true
  echo "node images (pause, busybox) built in $(( $(date +%s) - start ))s into $out" >&2
fi
echo "$out"
