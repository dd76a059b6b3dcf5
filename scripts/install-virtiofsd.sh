#!/usr/bin/env bash
# Installs virtiofsd (the Rust vhost-user-fs backend) for plugboard-qemu's real-guest tests.
#
# Debian bookworm packages no virtiofsd that goes with QEMU 10, so we build it with
# `cargo install --locked virtiofsd`, after its Debian build dependencies (libseccomp and
# libcap-ng headers). Idempotent: does nothing when a virtiofsd is already on PATH or in
# cargo's bin directory.
#
# Usage: scripts/install-virtiofsd.sh        (root for apt-get; otherwise sudo is used)
set -euo pipefail

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
existing=$(command -v virtiofsd || true)
[ -z "$existing" ] && [ -x "$cargo_bin/virtiofsd" ] && existing="$cargo_bin/virtiofsd"
if [ -n "$existing" ]; then
  echo "install-virtiofsd: already installed: $existing ($("$existing" --version 2>/dev/null | head -n1))"
  exit 0
fi

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in libseccomp-dev libcap-ng-dev pkg-config; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cargo install --locked virtiofsd
echo "install-virtiofsd: installed $("$cargo_bin/virtiofsd" --version 2>/dev/null | head -n1)"
