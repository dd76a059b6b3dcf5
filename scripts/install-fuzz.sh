#!/usr/bin/env bash
# Installs cargo-fuzz, the driver of the coverage-guided fuzz targets under fuzz/.
#
# cargo-fuzz builds each target with libFuzzer and the sanitizer coverage flags
# (`-Zsanitizer`, `-Cpasses=sancov-module`). Those flags are unstable, and no nightly
# toolchain can be had on our machines, so scripts/fuzz.sh runs it on the stable toolchain
# with RUSTC_BOOTSTRAP=1 (see fuzz/README.md). cargo-fuzz itself builds on stable.
# Idempotent: does nothing when a cargo-fuzz is already on PATH or in cargo's bin directory.
# libFuzzer's C++ runtime is compiled by the libfuzzer-sys crate, so a C++ compiler is
# needed (g++, installed with apt-get when missing).
#
# Usage: scripts/install-fuzz.sh        (root for apt-get; otherwise sudo is used)
set -euo pipefail

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v c++ >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends g++ >/dev/null
fi

existing=$(command -v cargo-fuzz || true)
[ -z "$existing" ] && [ -x "$cargo_bin/cargo-fuzz" ] && existing="$cargo_bin/cargo-fuzz"
if [ -n "$existing" ]; then
  echo "install-fuzz: already installed: $existing ($("$existing" --version 2>/dev/null | head -n1))"
  exit 0
fi

cargo install --locked cargo-fuzz
echo "install-fuzz: installed $("$cargo_bin/cargo-fuzz" --version 2>/dev/null | head -n1)"
