#!/usr/bin/env bash
# Runs Plugboard's coverage-guided fuzz targets (fuzz/, cargo-fuzz and libFuzzer), each for a
# bounded time, and prints executions, seconds and crashes per target.
#
#   scripts/fuzz.sh [--seconds N] [--runs N] [--asan] [target...]
#
#   --seconds N   stop each target after N seconds (libFuzzer -max_total_time; default 15)
#   --runs N      ... or after N executions, whichever comes first (-runs; default: no limit)
#   --build-only  build the targets, run none
#   --asan        build with AddressSanitizer (needs RUSTC_BOOTSTRAP=1, set here; see
#                 fuzz/README.md); the default is no sanitizer, which stable Rust builds
#   target...     the targets to run (default: all, in `cargo fuzz list` order)
#
# Each target starts from its committed seeds (fuzz/corpus/<target>/, read only) and a
# working corpus that it grows ($PLUGBOARD_FUZZ_DIR/corpus/<target>, kept between runs;
# PLUGBOARD_FUZZ_DIR defaults to fuzz-work in the build directory).
# A crashing input is saved as $PLUGBOARD_FUZZ_DIR/artifacts/<target>/crash-*, and the
# script exits 1 after running every target. Fuzz builds go to $PLUGBOARD_FUZZ_TARGET_DIR
# (default fuzz/target). Installs cargo-fuzz first (scripts/install-fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

seconds=15
runs=-1
sanitizer=none
build_only=0
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --asan) sanitizer=address; shift ;;
    --build-only) build_only=1; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { print }' "$0"; exit 0 ;;
    -*) echo "fuzz: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done

scripts/install-fuzz.sh >/dev/null
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
target_dir=${PLUGBOARD_FUZZ_TARGET_DIR:-$root/fuzz/target}
work=${PLUGBOARD_FUZZ_DIR:-$target_dir/fuzz-work}
cd fuzz
all=0
if [ "${#targets[@]}" -eq 0 ]; then
  all=1
  mapfile -t targets < <(cargo fuzz list)
fi

# cargo-fuzz's coverage flags (-Cpasses=sancov-module, -Cllvm-args=...) are stable;
# -Zsanitizer is not, so an ASan build needs the bootstrap switch on the stable toolchain.
if [ "$sanitizer" = address ]; then export RUSTC_BOOTSTRAP=1; fi
if [ "$all" = 1 ]; then
  cargo fuzz build --sanitizer "$sanitizer" --target-dir "$target_dir"
else
  for t in "${targets[@]}"; do
    cargo fuzz build --sanitizer "$sanitizer" --target-dir "$target_dir" "$t"
  done
fi
bin_dir="$target_dir/$(rustc -vV | sed -n 's/^host: //p')/release"
[ "$build_only" = 0 ] || exit 0

failed=0
report=()
for t in "${targets[@]}"; do
  corpus="$work/corpus/$t"
  artifacts="$work/artifacts/$t"
  mkdir -p "$corpus" "$artifacts" "corpus/$t"
  log="$work/$t.log"
  echo "==> fuzz $t (up to ${seconds}s$([ "$runs" -ge 0 ] && echo ", $runs runs"))"
  found() { find "$artifacts" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) | sort; }
  before=$(found)
  start=$SECONDS
  rc=0
  "$bin_dir/$t" "$corpus" "corpus/$t" -max_total_time="$seconds" -runs="$runs" \
    -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1 || rc=$?
  took=$((SECONDS - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  new=$(comm -13 <(echo "$before") <(found) | sed '/^$/d')
  crashes=$(echo -n "$new" | grep -c . || true)
  if [ "$rc" -ne 0 ]; then
    failed=1
    [ "$crashes" -gt 0 ] || crashes=1
    grep -m1 -A12 -E "panicked at|ERROR: libFuzzer|==ERROR" "$log" || tail -n 20 "$log"
    echo "    input: ${new:-(none saved; see $log)}"
  fi
  line=$(printf '%-16s %12s execs %6ss %3s crash(es)' "$t" "${execs:-?}" "$took" "$crashes")
  echo "    $line"
  report+=("$line")
done
echo "==> fuzz summary (log files under $work)"
printf '    %s\n' "${report[@]}"
exit "$failed"
