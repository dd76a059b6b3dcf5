#!/usr/bin/env bash
# Builds (or finds) the lab guest kernel and prints the path of its bzImage on stdout.
#
# The kernel is Debian's linux-source-6.12 with `make defconfig kvm_guest.config` and the
# fragment lab/kernel/lab.config merged on top (no modules; pciehp + ACPI hotplug,
# intel-iommu with IRQ remapping, virtio-iommu, VFIO legacy container and cdev + iommufd,
# vfio-pci, e1000e, virtio, devtmpfs, serial console). The result is cached under
#   ${XDG_CACHE_HOME:-$HOME/.cache}/plugboard/lab/kernel-<key>/bzImage
# where <key> hashes the fragment, the source package version, the compiler and RECIPE below.
#
# Environment:
#   PLUGBOARD_LAB_KERNEL      a prebuilt bzImage to use instead (printed as is, not checked)
#   PLUGBOARD_LAB_CACHE       cache directory (default ${XDG_CACHE_HOME:-$HOME/.cache}/plugboard/lab)
#   PLUGBOARD_LAB_LINUX_TAR   kernel source tarball (default /usr/src/linux-source-6.12.tar.xz)
#   PLUGBOARD_LAB_JOBS        make -j (default: nproc)
#
# Usage: lab/build-kernel.sh [--print-key]
# Progress goes to stderr; the build log is kept next to the cached kernel.
set -euo pipefail

# Bump when the build steps below change in a way that changes the kernel.
RECIPE=1

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fragment="$here/kernel/lab.config"

if [ -n "${PLUGBOARD_LAB_KERNEL:-}" ]; then
  if [ ! -f "$PLUGBOARD_LAB_KERNEL" ]; then
    echo "build-kernel: PLUGBOARD_LAB_KERNEL=$PLUGBOARD_LAB_KERNEL is not a file" >&2
    exit 1
  fi
  echo "build-kernel: using prebuilt kernel $PLUGBOARD_LAB_KERNEL (PLUGBOARD_LAB_KERNEL)" >&2
  echo "$PLUGBOARD_LAB_KERNEL"
  exit 0
fi

cache=${PLUGBOARD_LAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/plugboard/lab}
tarball=${PLUGBOARD_LAB_LINUX_TAR:-/usr/src/linux-source-6.12.tar.xz}
jobs=${PLUGBOARD_LAB_JOBS:-$(nproc)}

if [ ! -f "$tarball" ]; then
  echo "build-kernel: no kernel source at $tarball (run lab/install-deps.sh as root," \
    "or set PLUGBOARD_LAB_KERNEL to a prebuilt bzImage)" >&2
  exit 1
fi

# The source version: the Debian package's version when the tarball is the packaged one,
# else the tarball's size and mtime.
srcver=""
if [ "$tarball" = /usr/src/linux-source-6.12.tar.xz ]; then
  srcver=$(dpkg-query -W -f '${Version}' linux-source-6.12 2>/dev/null || true)
fi
[ -n "$srcver" ] || srcver="$(basename "$tarball")-$(stat -c '%s-%Y' "$tarball")"
cc_version=$(${CC:-gcc} --version 2>/dev/null | head -n1 || echo unknown)

key=$( { echo "recipe=$RECIPE"; echo "src=$srcver"; echo "cc=$cc_version"; cat "$fragment"; } \
  | sha256sum | cut -c1-16)
if [ "${1:-}" = "--print-key" ]; then
  echo "$key"
  exit 0
fi

out="$cache/kernel-$key"
if [ -f "$out/bzImage" ]; then
  echo "build-kernel: cache hit $out/bzImage" >&2
  echo "$out/bzImage"
  exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/kernel.lock"
echo "build-kernel: waiting for the kernel build lock $cache/kernel.lock" >&2
flock 9
# Another process may have built it while we waited.
if [ -f "$out/bzImage" ]; then
  echo "build-kernel: cache hit $out/bzImage" >&2
  echo "$out/bzImage"
  exit 0
fi

start=$(date +%s)
safe_srcver=$(echo "$srcver" | tr -c 'A-Za-z0-9._-' '_')
src="$cache/src-$safe_srcver"
if [ ! -f "$src/.extracted" ]; then
  echo "build-kernel: extracting $tarball" >&2
  rm -rf "$src.tmp"
  mkdir -p "$src.tmp"
  nice -n 19 tar -xf "$tarball" -C "$src.tmp" --strip-components=1
  touch "$src.tmp/.extracted"
  rm -rf "$src"
  mv "$src.tmp" "$src"
fi

# One build directory per source version: a changed fragment rebuilds incrementally.
build="$cache/build-$safe_srcver"
mkdir -p "$build"
log="$cache/build-$key.log"
echo "build-kernel: building key $key in $build (log: $log, -j$jobs, nice 19)" >&2

kmake() { nice -n 19 make -C "$src" O="$build" -j"$jobs" "$@"; }
{
  kmake defconfig
  kmake kvm_guest.config
  "$src/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$fragment"
  kmake olddefconfig
} >"$log" 2>&1 || { tail -n 40 "$log" >&2; echo "build-kernel: configuration failed" >&2; exit 1; }

# Every option the fragment asks for must have survived olddefconfig.
missing=0
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*)
      if ! grep -qx -- "$line" "$build/.config"; then
        echo "build-kernel: $line did not survive (got: $(grep -- "^${line%%=*}=" "$build/.config" || echo 'not set'))" >&2
        missing=1
      fi
      ;;
    "# CONFIG_"*" is not set")
      opt=${line#\# }
      opt=${opt%% *}
      if grep -q -- "^$opt=" "$build/.config"; then
        echo "build-kernel: $opt should be off but is $(grep -- "^$opt=" "$build/.config")" >&2
        missing=1
      fi
      ;;
  esac
done <"$fragment"
if [ "$missing" = 1 ]; then
  echo "build-kernel: the fragment does not hold; fix lab/kernel/lab.config" >&2
  exit 1
fi

if ! kmake bzImage >>"$log" 2>&1; then
  grep -E 'error|Error' "$log" | head -n 20 >&2 || true
  tail -n 20 "$log" >&2
  echo "build-kernel: make bzImage failed (log: $log)" >&2
  exit 1
fi

rm -rf "$out.tmp"
mkdir -p "$out.tmp"
cp "$build/arch/x86/boot/bzImage" "$out.tmp/bzImage"
cp "$build/.config" "$out.tmp/config"
cp "$fragment" "$out.tmp/lab.config"
echo "$srcver" >"$out.tmp/source-version"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "build-kernel: built $out/bzImage in $(( $(date +%s) - start )) s" >&2
echo "$out/bzImage"
