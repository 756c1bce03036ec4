#!/usr/bin/env bash
# Fetches the Prometheus server once per machine (Debian's `prometheus` package) and prints
# the path of its binary. The binary is cached outside the work tree, so tests and CI reuse it;
# `apt-get download` needs no root, but a machine with empty package lists needs `apt-get update`,
# which this does only when run as root.
set -euo pipefail
version=2.42.0
cache=${ORRERY_CACHE:-$HOME/.cache/orrery}
out="$cache/prometheus-$version/prometheus"
if [ ! -x "$out" ]; then
  if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    echo "fetch.sh: apt-get and dpkg-deb are needed to fetch Prometheus (a Debian machine);" \
      "or set ORRERY_PROMETHEUS to a prometheus $version binary" >&2
    exit 1
  fi
  echo "fetching Prometheus $version (Debian package prometheus) into $out" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # apt downloads as the unprivileged _apt user when it can write here; otherwise it warns.
  chmod 777 "$work"
  download() { (cd "$work" && apt-get download -q prometheus >&2); }
  if ! download; then
    if [ "$(id -u)" -eq 0 ]; then
      echo "apt-get download failed; updating the package lists and retrying" >&2
      if ! { apt-get update -q >&2 && download; }; then
        echo "fetch.sh: 'apt-get download prometheus' failed even after 'apt-get update';" \
          "or set ORRERY_PROMETHEUS to a prometheus $version binary" >&2
        exit 1
      fi
    else
      echo "fetch.sh: 'apt-get download prometheus' failed; run 'apt-get update' as root," \
        "or set ORRERY_PROMETHEUS to a prometheus $version binary" >&2
      exit 1
    fi
  fi
  deb=$(ls "$work"/prometheus_*.deb)
  got=$(dpkg-deb -f "$deb" Version)
  case "$got" in
    "$version"+*) ;;
    *)
      echo "fetch.sh: apt offers prometheus $got, expected $version; update 'version' in $0" >&2
      exit 1
      ;;
  esac
  dpkg-deb -x "$deb" "$work/root"
  mkdir -p "$(dirname "$out")"
  cp "$work/root/usr/bin/prometheus" "$out.tmp.$$"
  chmod 755 "$out.tmp.$$"
  mv "$out.tmp.$$" "$out"
  echo "cached $("$out" --version 2>&1 | head -n1)" >&2
fi
echo "$out"
