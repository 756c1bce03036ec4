#!/usr/bin/env bash
# Installs what the real node of the e2e harness needs, from the machine's Debian packages:
# containerd and runc (the container runtime), the CNI plugins (pod networking), iptables
# (Services through kube-proxy), a static busybox (the test image) and curl (tests fetch
# Services from the node). Run once per machine, as root; running it again changes nothing.
# The kubelet, kube-scheduler and kube-proxy are not packages: they are subcommands of the
# control-plane binary (e2e/control-plane).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: the real node needs root (containerd, network namespaces, iptables, cgroups);" >&2
  echo "run it as root, e.g. sudo $0" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "setup.sh: no apt-get here; install containerd (1.6 or later), runc, the CNI plugins" >&2
  echo "(bridge, host-local, loopback), iptables and a static busybox with this system's tools" >&2
  exit 1
fi

packages=(containerd runc containernetworking-plugins iptables busybox-static curl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || true
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The harness runs its own containerd per node (own socket, root and state directories);
# the packaged service is not needed and is left as the package installed it.
for tool in containerd containerd-shim-runc-v2 runc ctr iptables nsenter ip curl; do
  command -v "$tool" >/dev/null || { echo "setup.sh: $tool is missing after installation" >&2; exit 1; }
done
for plugin in bridge host-local loopback; do
  [ -x "/usr/lib/cni/$plugin" ] || { echo "setup.sh: the CNI plugin /usr/lib/cni/$plugin is missing" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "setup.sh: /bin/busybox (busybox-static) is missing" >&2; exit 1; }
echo "setup.sh: the real node's packages are installed" >&2
