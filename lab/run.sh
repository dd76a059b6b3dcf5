#!/usr/bin/env bash
# Boots the lab guest, runs one command in it as root, streams its output, and exits with
# the command's status. Builds what is missing first (the kernel: ~8 min once, then cached).
#
# Usage: lab/run.sh [OPTIONS] -- COMMAND...
#   --mem MIB            guest memory (default 1024)
#   --smp N              guest CPUs (default 1; two lose interrupts under TCG, see lab/README.md)
#   --timeout SECS       deadline for the command (default 600); the guest is killed after it
#   --file HOST[:GUEST]  put a host file or program (with its libraries) into the guest;
#                        without :GUEST it lands at its absolute host path
#   --qemu-arg ARG       an extra QEMU argument (repeat per argument)
#   --append ARG         an extra kernel command-line argument
#   --no-strip           keep debug info in packed programs
# A first COMMAND word that names a host program (contains a /) is packed automatically.
# Exit status: the command's; 124 if a deadline killed the guest; 125 if the lab failed.
#
# Examples:
#   lab/run.sh -- ls /sys/kernel/iommu_groups
#   lab/run.sh -- target/debug/plugboard host list
#   PLUGBOARD_LAB_KERNEL=/path/bzImage lab/run.sh --mem 2048 -- cat /proc/cmdline
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Relative paths in the command are the caller's, so stay in the caller's directory.
exec cargo run --quiet --manifest-path "$root/Cargo.toml" -p plugboard-lab --bin plugboard-lab -- run "$@"
