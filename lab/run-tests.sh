#!/usr/bin/env bash
# The lab's CI stage (scripts/test-all.sh calls it): runs every real-kernel test.
#
#  1. guest tests: every package's `lab` integration test binary (crates/*/tests/lab.rs,
#     tests marked #[ignore]) and the `plugboard` binary are built, packed into one
#     initramfs, and run in one lab guest as root, each test alone with its own deadline
#     (PLUGBOARD_LAB_TEST_TIMEOUT, 300 s); a missed deadline prints the guest's blocked
#     tasks and stacks, kills the guest, and the next test gets a fresh one;
#  2. host tests: plugboard-lab's own tests that boot guests from the host (QMP hot-add,
#     topology smoke test), `cargo test -p plugboard-lab --test host -- --ignored`.
# Both always run; the exit status is non-zero if either failed. Each stage's time is
# printed (deps, kernel build or cache hit, build, initramfs, boot, tests).
#
# Environment: PLUGBOARD_LAB_KERNEL (prebuilt bzImage), PLUGBOARD_LAB_ACCEL (auto|kvm|tcg),
# PLUGBOARD_LAB_CACHE, PLUGBOARD_LAB_BOOT_TIMEOUT, PLUGBOARD_LAB_LIFETIME,
# PLUGBOARD_LAB_TEST_TIMEOUT (seconds). CARGO_TARGET_DIR is honoured (cargo metadata).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

stages=()
failed=()
stage() {
  local name=$1
  shift
  echo "==> lab-ci stage '$name': $*" >&2
  local start=$SECONDS rc=0
  "$@" || rc=$?
  local took=$((SECONDS - start))
  stages+=("$(printf '%-12s %5ss  exit %s' "$name" "$took" "$rc")")
  echo "==> lab-ci stage '$name' took ${took}s (exit $rc)" >&2
  [ "$rc" = 0 ] || failed+=("$name")
  return "$rc"
}
summary() {
  echo "==> lab-ci stage times" >&2
  printf '    %s\n' "${stages[@]}" >&2
}
trap summary EXIT

deps() {
  local missing=()
  for tool in qemu-system-x86_64 qemu-img busybox strip ldd; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  [ -f /usr/src/linux-source-6.12.tar.xz ] || [ -n "${PLUGBOARD_LAB_KERNEL:-}" ] || missing+=(linux-source-6.12)
  if [ "${#missing[@]}" = 0 ]; then
    echo "lab-ci: dependencies present (no apt needed)" >&2
    return 0
  fi
  echo "lab-ci: missing ${missing[*]}; running lab/install-deps.sh" >&2
  if [ "$(id -u)" -eq 0 ]; then lab/install-deps.sh; else sudo lab/install-deps.sh; fi
}

stage deps deps || exit 1
stage kernel lab/build-kernel.sh >/dev/null || exit 1
stage harness cargo build --quiet -p plugboard-lab --bin plugboard-lab || exit 1
lab_bin=$(cargo metadata --no-deps --format-version 1 \
  | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug/plugboard-lab
stage guest-tests "$lab_bin" test
stage host-tests cargo test -p plugboard-lab --test host -- --ignored --test-threads=1

if [ "${#failed[@]}" -gt 0 ]; then
  echo "==> lab-ci FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "==> lab-ci passed" >&2
