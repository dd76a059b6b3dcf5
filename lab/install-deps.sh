#!/usr/bin/env bash
# Installs, from Debian, everything Plugboard's tests and its lab need on a fresh machine.
#
# QEMU 10 comes from bookworm-backports: the machine image already ships backports'
# qemu-utils, but not the backports suite itself, so a plain install of qemu-system-x86
# conflicts. We add the suite using the mirror URI that the machine's own apt sources
# already name (no host name is written in this repository).
#
# Usage: lab/install-deps.sh [--no-kernel-build-deps]
set -euo pipefail

want_kernel_deps=1
[ "${1:-}" = "--no-kernel-build-deps" ] && want_kernel_deps=0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: must run as root (apt-get)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
backports_list=/etc/apt/sources.list.d/plugboard-backports.sources

mirror_uri() {
  # The first URI of the main Debian archive in the machine's deb822 sources, or in a
  # one-line sources.list, skipping the security archive.
  local uri=""
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    uri=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}' /etc/apt/sources.list.d/*.sources \
      | grep -v -- '-security' | head -n1 || true)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" {print $2}' /etc/apt/sources.list | grep -v -- '-security' | head -n1 || true)
  fi
  echo "$uri"
}

if ! grep -rqs "${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  uri=$(mirror_uri)
  if [ -z "$uri" ]; then
    echo "install-deps: no Debian mirror URI found in the apt sources" >&2
    exit 1
  fi
  cat >"$backports_list" <<SRC
Types: deb
URIs: $uri
Suites: ${codename}-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  echo "install-deps: added ${codename}-backports from the machine's mirror"
fi

apt-get update -qq
apt-get install -y -qq --no-install-recommends -t "${codename}-backports" \
  qemu-system-x86 qemu-utils >/dev/null
pkgs=(busybox-static cpio kmod xz-utils socat pciutils pci.ids binutils)
if [ "$want_kernel_deps" = 1 ]; then
  pkgs+=(linux-source-6.12 bc bison flex libelf-dev libssl-dev make gcc)
fi
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
echo "install-deps: $(qemu-system-x86_64 --version | head -n1)"
