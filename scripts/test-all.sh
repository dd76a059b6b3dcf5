#!/usr/bin/env bash
# Runs every Plugboard test on a fresh machine, and prints how long each stage took.
#
#   scripts/test-all.sh           everything: install deps, fmt, clippy, tests, a short fuzz
#                                 run of every fuzz target, the lab
#   scripts/test-all.sh --fast    no installs, no fuzzing and no lab: fmt, clippy and cargo
#                                 tests only
#
# The installs need root (they use apt-get); as another user the script uses sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

fast=0
[ "${1:-}" = "--fast" ] && fast=1

stages=()
stage() {
  local name=$1
  shift
  echo "==> stage '$name': $*"
  local start=$SECONDS
  "$@"
  local took=$((SECONDS - start))
  stages+=("$(printf '%-14s %5ss' "$name" "$took")")
  echo "==> stage '$name' took ${took}s"
}
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
summary() {
  echo "==> stage times"
  printf '    %s\n' "${stages[@]}"
}
trap summary EXIT

if [ "$fast" = 0 ]; then
  stage install as_root lab/install-deps.sh
  stage virtiofsd scripts/install-virtiofsd.sh
  stage fuzz-install scripts/install-fuzz.sh
fi
stage fmt cargo fmt --all --check
stage clippy cargo clippy --workspace --all-targets --locked -- -D warnings
stage test cargo test --workspace --locked
if [ "$fast" = 0 ]; then
  # Coverage-guided fuzzing of the parsers of outside input (fuzz/README.md): the build of
  # the instrumented targets, then 15 s per target, from the committed seeds.
  stage fuzz-build scripts/fuzz.sh --build-only
  stage fuzz scripts/fuzz.sh --seconds 15
  # Real-kernel tests inside the lab guest, then host-side tests that boot it.
  stage lab lab/run-tests.sh
  # A real QEMU 10 hot-plugging into the lab guest through the device manager.
  stage qemu-guest cargo test -p plugboard-qemu --locked --test guest -- --ignored --test-threads=1
  # The daemon end to end: register the lab VM, attach a disk the guest sees, restart, detach.
  stage serve-lab cargo test -p plugboard --locked --test serve_lab -- --ignored --test-threads=1
fi
