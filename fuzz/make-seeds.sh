#!/usr/bin/env bash
# Writes the seed corpus of every fuzz target (fuzz/corpus/<target>/) from the inputs the
# crates' own tests use. The `saved_state` seed is a golden file that plugboard-devices'
# test `the_saved_state_fuzz_seed_is_a_busy_managers_state` checks (and rewrites with
# PLUGBOARD_WRITE_FUZZ_SEEDS=1). Re-run after changing an input here; commit the result.
#
# Usage: fuzz/make-seeds.sh
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p corpus
cd corpus

# seed TARGET NAME FORMAT [ARG...]: one file, written by printf (\n, \x03 and so on).
seed() {
  local target=$1 name=$2
  shift 2
  mkdir -p "$target"
  # shellcheck disable=SC2059 # the seed is the format
  printf "$@" >"$target/$name"
}

# PCI addresses (crates/sysfs/src/address.rs tests).
seed pci_address full '0000:01:00.0'
seed pci_address short '01:00.0'
seed pci_address upper 'ABCD:FF:1F.7\n'
seed pci_address slot-range '0000:00:20.0'
seed pci_address function-range '0000:00:00.8'
seed pci_address long-domain '10000:00:00.0'
seed pci_address not-hex 'zz:00.0'

# uevent files (crates/sysfs/src/devnode.rs tests).
seed uevent disk 'MAJOR=8\nMINOR=0\nDEVNAME=sda\nDEVTYPE=disk\nDISKSEQ=1\n'
seed uevent vfio 'MAJOR=10\nMINOR=196\nDEVNAME=vfio/vfio\nDEVMODE=0666\n'
seed uevent garbage 'MAJOR=8\ngarbage\n'
seed uevent lower 'lower=x\n'

# resource files (crates/sysfs/src/resource.rs tests).
seed sysfs_resource virtio '0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000fe800000 0x00000000fe800fff 0x0000000000040200
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x000000fc00000000 0x000000fdffffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000fe840000 0x00000000fe87ffff 0x0000000000046200
'
seed sysfs_resource full-range '0x0000000000000000 0xffffffffffffffff 0x200\n'
seed sysfs_resource inverted '0x10 0x1 0x200\n'

# /proc/net/unix (crates/qemu/src/backend_socket.rs tests).
seed proc_net_unix table 'Num       RefCount Protocol Flags    Type St Inode Path
000000002284cc38: 00000002 00000000 00010000 0001 01 31352 /tmp/vf/fs.sock
000000002284cc38: 00000003 00000000 00000000 0001 03 31353 /tmp/vf/fs.sock
000000002284cc38: 00000002 00000000 00010000 0002 01 31352 /tmp/vf/fs.sock
0000000000000000: 00000002 00000000 00010000 0001 01  4242 /run/a b.sock
0000000000000000: 00000002 00000000 00010000 0001 01  4242
'

# QMP: a cut position, then lines as QEMU sends them (crates/qemu/src/qmp/wire.rs tests).
seed qmp session '\x40{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}, "capabilities": ["oob"]}}\r\n{"return": {}, "id": 7}\n\n{"error": {"class": "GenericError", "desc": "Duplicate device ID %sx%s"}, "id": 8}\n{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "DEVICE_DELETED", "data": {"device": "vb0", "path": "/machine/peripheral/vb0"}}\n{"event": "DEVICE_UNPLUG_GUEST_ERROR", "data": {"path": "/machine/peripheral/vb0"}}\n{"return": [{"name": "vb0", "type": "child<virtio-blk-pci>"}, 1.5, -3, null], "id": 9}\n{"b"' "'" "'"

# API bodies: the type byte (0 RegisterVm, 1 AttachRequest, 2 HostdevRequest, 3 DeviceQuery,
# 4 NamesQuery, 5 VfioQuery), then the body (crates/service tests, docs/openapi.json).
seed api_json register '\x00{"name": "vm1", "endpoint": {"kind": "qemu", "qmp_socket": "/run/vm1.qmp"}, "name_offset": 1}'
seed api_json attach-disk '\x01{"kind": "disk", "path": "/var/lib/img/d.qcow2", "driver": "virtio-scsi", "format": "qcow2", "read_only": true}'
seed api_json attach-pci '\x01{"kind": "pci", "address": "0000:3b:00.1", "whole_group": true}'
seed api_json attach-spec-vfio '\x01{"kind": "spec", "spec": {"identity": {"node": {"node_type": "char", "major": 511, "minor": 7}}, "mode": "hot", "kind": {"kind": "vfio", "backend": {"type": "group", "group": 7}, "functions": [{"host": {"pci": "0000:07:00.0"}, "sysfs_path": "/sys/bus/pci/devices/0000:07:00.0", "class": 131072, "is_pcie": true, "large_bar": false}]}}}'
seed api_json attach-spec-vhost '\x01{"kind": "spec", "spec": {"identity": {"path": "/run/net.sock"}, "mode": "hot", "kind": {"kind": "vhost-user", "socket": "/run/net.sock", "device": {"type": "net", "mac": "02:00:00:00:00:09"}}}}'
seed api_json hostdev '\x02{"owner": "plugboard/vm1", "devices": ["0000:01:00.0", "usb:1/4", "usb:046d:c52b", "scsi:0:0:1:0", "mdev:c4a9a4d2-1b2c-4d5e-8f90-0123456789ab", "nvme:0000:06:00.0/1"], "managed": false, "whole_group": true, "shareable": true}'
seed api_json device-query '\x03class=02&driver=vfio&names=false'
seed api_json names-query '\x04names=false'
seed api_json vfio-query '\x05mode=iommufd'

# API path parameters and hostdev names (crates/plugboard/src/serve/handlers.rs).
seed api_path address '0000:3b:00.1'
seed api_path kind 'char'
seed api_path number '259:3'
seed api_path device-id '000000000000002a'
seed api_path device-id-decimal '42'
seed api_path vm-name 'web.prod_2'
seed api_path usb-bus 'usb:1/4'
seed api_path usb-ids 'usb:046d:c52b'
seed api_path scsi 'scsi:0:0:1:0'
seed api_path mdev 'mdev:c4a9a4d2-1b2c-4d5e-8f90-0123456789ab'
seed api_path nvme 'nvme:0000:06:00.0/1'
seed api_path owner 'qemu/vm-1'

# Registry rows: the table byte (0 pci_devices, 1 intents, 2 claims, 3 a stored VM record),
# then the row's columns split by tabs, \N for NULL (crates/hostdev/src/registry tests).
seed registry_rows pci-active '\x000000:01:00.0\tactive\tqemu\tvm1\t1\te1000e\t7'
seed registry_rows pci-inactive '\x000000:02:00.0\tinactive\t\\N\t\\N\t0\t\\N\t\\N'
seed registry_rows intent '\x013\tprepare\t0000:01:00.0\tnvme\tkata\tsandbox/1\t1\t1\t12\tbinding\t4242\t-5'
seed registry_rows claim '\x02scsi\t0:0:1:0\tplugboard\tvm1\t1\tQEMU HARDDISK'
seed registry_rows vm-record '\x03{"name":"vm1","owner_uid":1000,"endpoint":{"kind":"qemu","qmp_socket":"/run/q"},"root_ports":["rp0","rp1"],"name_offset":1}'
echo "make-seeds: wrote $(find . -type f | wc -l) seed files under fuzz/corpus"

# The DRA plugin's inputs (crates/dra/tests): a selector byte, then the kubelet's protobuf
# requests (0: prepare, 1: unprepare), a ResourceClaim as the API server answers it (2),
# or a device name (3).
seed dra_inputs prepare '\x00\x0a\x11\x0a\x03vms\x12\x05uid-1\x1a\x03nic'
seed dra_inputs unprepare-walking-uid '\x01\x0a\x10\x0a\x03vms\x12\x04../x\x1a\x03nic'
seed dra_inputs claim '\x02{"apiVersion":"resource.k8s.io/v1","kind":"ResourceClaim","metadata":{"name":"nic","namespace":"vms","uid":"uid-1"},"spec":{"devices":{"requests":[{"name":"nic","exactly":{"deviceClassName":"vfio.plugboard.dev"}}]}},"status":{"allocation":{"devices":{"results":[{"request":"nic","driver":"vfio.plugboard.dev","pool":"node-a","device":"pci-0000-02-00-0"},{"request":"gpu","driver":"gpu.example.com","pool":"node-a","device":"gpu-0"}]}}}}'
seed dra_inputs function-name '\x03pci-0000-02-00-0'
seed dra_inputs group-name '\x03iommu-group-5'
# Non-canonical spellings of group 5 (a regression: they parsed as group 5).
seed dra_inputs group-name-plus '\x03iommu-group-+5'
seed dra_inputs group-name-zero '\x03iommu-group-05'
