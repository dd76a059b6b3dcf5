//! plugboard-qemu against a real QEMU 10 running the lab guest, which acknowledges hotplug.
//!
//! Each test boots the lab kernel (`plugboard-lab`, see `lab/README.md`), attaches a device
//! through the device manager, looks for it from inside the guest, detaches it and checks
//! that QEMU reported `DEVICE_DELETED` and that the guest no longer sees it. Slow (a TCG boot
//! each) and they need the lab kernel, so they are ignored by default; run them with
//!
//! ```sh
//! cargo test -p plugboard-qemu --test guest -- --ignored --test-threads=1
//! ```
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failure to set up or query is the test's failure"
)]

mod support;

use std::path::Path;
use std::time::Duration;

use plugboard_devices::test_util::vhost_user_spec;
use plugboard_devices::{
    BlockDriver, DeviceId, DeviceManager, FsCache, ImageFormat, VhostUserDevice,
};
use plugboard_lab::{BootOptions, Guest, Initramfs};
use plugboard_qemu::test_util::{BackendProcess, create_image};
use plugboard_qemu::{Departure, DeviceRole, QemuConfig, QemuHypervisor};
use serde_json::{Value, json};
use support::{manager_over, new_disk, qemu_name};

fn boot(extra_qemu_args: &[&str]) -> Guest {
    let mut opts = BootOptions::default();
    opts.machine.memory_mib = 512;
    opts.machine.extra_qemu_args = extra_qemu_args.iter().map(|s| (*s).to_owned()).collect();
    Guest::boot(&opts, &Initramfs::new().unwrap()).unwrap()
}

fn manager(guest: &Guest) -> DeviceManager<QemuHypervisor> {
    let config = QemuConfig {
        unplug_timeout: Duration::from_secs(30),
        ..QemuConfig::default()
    };
    let hv = QemuHypervisor::connect(guest.qmp_socket(), config).unwrap();
    // The pool is the lab's empty hotplug ports; the guinea pigs' ports are taken.
    let pool = hv.port_pool();
    assert!(
        !pool.is_empty()
            && pool
                .iter()
                .all(|p| plugboard_lab::HOTPLUG_PORTS.contains(&p.as_str())),
        "{pool:?}"
    );
    assert_eq!(hv.memory_shared(), Some(true));
    manager_over(hv)
}

fn image(dir: &Path, name: &str, format: &str, size: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    create_image(&path, format, size).unwrap();
    path
}

/// Runs `script` in the guest and returns its output; panics with it when it fails.
fn sh(guest: &mut Guest, script: &str) -> String {
    let out = guest.exec(script).unwrap();
    assert!(
        out.success(),
        "guest script failed ({}):\n{script}\n{}",
        out.status,
        out.output
    );
    out.output
}

/// Waits (at most 20 s) in the guest until `path` exists (or, with `gone`, no longer does).
fn wait_path(guest: &mut Guest, path: &str, gone: bool) {
    let test = if gone {
        format!("[ ! -e {path} ]")
    } else {
        format!("[ -e {path} ]")
    };
    sh(
        guest,
        &format!(
            "for i in $(seq 200); do {test} && exit 0; sleep 0.1; done; echo 'timed out: {test}'; ls /sys/block; exit 1"
        ),
    );
}

fn expect_event_departure(m: &DeviceManager<QemuHypervisor>, id: DeviceId, role: DeviceRole) {
    let (name, how) = m.hypervisor().last_departure().unwrap();
    assert_eq!(name, qemu_name(id, role));
    assert_eq!(
        how,
        Departure::Event,
        "QEMU's DEVICE_DELETED was not what ended the wait"
    );
}

fn peripherals(m: &DeviceManager<QemuHypervisor>) -> Value {
    m.hypervisor()
        .with_client(|c| c.execute("qom-list", Some(&json!({"path": "/machine/peripheral"}))))
        .unwrap()
        .unwrap()
}

#[test]
#[ignore = "boots the lab guest (lab/run-tests.sh)"]
fn a_qcow2_disk_appears_in_the_guest_and_goes_away() {
    let mut guest = boot(&[]);
    let m = manager(&guest);
    let dir = tempfile::tempdir().unwrap();
    let rw = image(dir.path(), "rw.qcow2", "qcow2", "32M");
    let ro = image(dir.path(), "ro.qcow2", "qcow2", "16M");

    let a = new_disk(&m, &rw, BlockDriver::VirtioBlk, ImageFormat::Qcow2, false);
    let b = new_disk(&m, &ro, BlockDriver::VirtioBlk, ImageFormat::Qcow2, true);
    // One at a time, as the manager's name prediction assumes (the guest names disks in
    // probe order; two hot-adds in flight at once may be probed in either order).
    m.attach(a).unwrap();
    let name_a = m.device(a).unwrap().guest.unwrap().drive_name.unwrap();
    assert_eq!(name_a.as_str(), "vda");
    wait_path(&mut guest, "/sys/block/vda", false);
    m.attach(b).unwrap();
    let name_b = m.device(b).unwrap().guest.unwrap().drive_name.unwrap();
    assert_eq!(name_b.as_str(), "vdb");
    wait_path(&mut guest, "/sys/block/vdb", false);
    // 32 MiB and 16 MiB in 512-byte sectors; the read-only one is read-only in the guest.
    let out = sh(
        &mut guest,
        "cat /sys/block/vda/size /sys/block/vda/ro /sys/block/vdb/size /sys/block/vdb/ro",
    );
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["65536", "0", "32768", "1"],
        "{out}"
    );
    // The guest PCI paths the manager was told are where the guest found the disks.
    for (id, disk) in [(a, "vda"), (b, "vdb")] {
        let path = m.device(id).unwrap().guest.unwrap().pci_paths[0].to_string();
        let slot = path.split('/').next().unwrap().to_owned();
        let dev = sh(&mut guest, &format!("readlink -f /sys/block/{disk}/device"));
        assert!(
            dev.contains(&format!("0000:00:{slot}.0/")),
            "PCI path {path}, guest device {dev}"
        );
    }

    m.detach(a).unwrap();
    expect_event_departure(&m, a, DeviceRole::Disk);
    wait_path(&mut guest, "/sys/block/vda", true);
    m.detach(b).unwrap();
    expect_event_departure(&m, b, DeviceRole::Disk);
    wait_path(&mut guest, "/sys/block/vdb", true);
    assert!(!peripherals(&m).to_string().contains("drive-"));
    assert_eq!(m.allocations().root_ports, []);

    // Attach again: the freed index and port are reused and the disk is back as vda.
    m.attach(a).unwrap();
    wait_path(&mut guest, "/sys/block/vda", false);
    m.detach(a).unwrap();
    wait_path(&mut guest, "/sys/block/vda", true);

    // Detach right after attach, while the guest is still handling the hot-add: a guest can
    // miss that unplug request; the removal asks again and still completes.
    for _ in 0..3 {
        m.attach(a).unwrap();
        m.detach(a).unwrap();
    }
    wait_path(&mut guest, "/sys/block/vda", true);
    assert!(!peripherals(&m).to_string().contains("drive-"));
    guest.shutdown().unwrap();
}

#[test]
#[ignore = "boots the lab guest (lab/run-tests.sh)"]
fn a_scsi_disk_goes_to_its_id_and_lun_and_leaves() {
    let mut guest = boot(&["-device", "virtio-scsi-pci,id=scsi0,bus=hp4"]);
    let m = manager(&guest);
    assert!(!m.hypervisor().port_pool().contains(&"hp4".to_owned()));
    let dir = tempfile::tempdir().unwrap();
    let raw = image(dir.path(), "s.raw", "raw", "8M");
    let id = new_disk(&m, &raw, BlockDriver::VirtioScsi, ImageFormat::Raw, false);
    m.attach(id).unwrap();
    let scsi = m.device(id).unwrap().guest.unwrap().scsi_address.unwrap();
    let name = qemu_name(id, DeviceRole::Disk);
    let get = |p: &str| {
        m.hypervisor()
            .with_client(|c| {
                c.execute(
                    "qom-get",
                    Some(&json!({"path": format!("/machine/peripheral/{name}"), "property": p})),
                )
            })
            .unwrap()
            .unwrap()
    };
    assert_eq!(
        (get("scsi-id"), get("lun")),
        (json!(scsi.id()), json!(scsi.lun()))
    );
    // The guest sees the controller (virtio 1af4:1048) on hp4's bus, and the disk at
    // host:channel:id:lun.
    let ctrl = sh(&mut guest, "grep -l 0x1048 /sys/bus/pci/devices/*/device");
    assert!(
        !ctrl.trim().is_empty(),
        "no virtio-scsi controller in the guest"
    );
    // The lab kernel builds in SCSI (lab/kernel/lab.config), so the disk itself is checked,
    // never only QEMU's side of it.
    assert!(
        guest.exec("[ -d /sys/bus/scsi ]").unwrap().success(),
        "the lab kernel has no SCSI: rebuild it from lab/kernel/lab.config (CONFIG_SCSI_VIRTIO)"
    );
    let hctl = format!(
        "/sys/bus/scsi/devices/*:0:{}:{}/block",
        scsi.id(),
        scsi.lun()
    );
    // The disk at the manager's id:lun, 8 MiB.
    let out = sh(
        &mut guest,
        &format!(
            "for i in $(seq 200); do ls {hctl} 2>/dev/null && exit 0; sleep 0.1; done; exit 1"
        ),
    );
    let disk = out.split_whitespace().last().unwrap().to_owned();
    assert!(disk.starts_with("sd"), "{out}");
    assert_eq!(
        sh(&mut guest, &format!("cat /sys/block/{disk}/size")).trim(),
        "16384"
    );
    eprintln!(
        "scsi-hd {}:{} is /dev/{disk} in the guest",
        scsi.id(),
        scsi.lun()
    );
    m.detach(id).unwrap();
    expect_event_departure(&m, id, DeviceRole::Disk);
    sh(
        &mut guest,
        &format!(
            "for i in $(seq 200); do ls -d {hctl} 2>/dev/null || exit 0; sleep 0.1; done; exit 1"
        ),
    );
    assert!(!peripherals(&m).to_string().contains(&name));
    guest.shutdown().unwrap();
}

#[test]
#[ignore = "boots the lab guest (lab/run-tests.sh)"]
fn vhost_user_blk_against_qemu_storage_daemon() {
    let mut guest = boot(&[]);
    let m = manager(&guest);
    let backend = BackendProcess::storage_daemon("24M").unwrap();
    let spec = vhost_user_spec(
        backend.socket().to_str().unwrap(),
        VhostUserDevice::Blk {
            driver: BlockDriver::VirtioBlk,
        },
    );
    let id = m.new_device(spec).unwrap().id();
    m.attach(id).unwrap();
    assert_eq!(
        m.device(id)
            .unwrap()
            .guest
            .unwrap()
            .drive_name
            .unwrap()
            .as_str(),
        "vda"
    );
    wait_path(&mut guest, "/sys/block/vda", false);
    assert_eq!(sh(&mut guest, "cat /sys/block/vda/size").trim(), "49152");
    // The guest can write through the backend and read it back.
    sh(
        &mut guest,
        "echo plugboard-vhost-user | dd of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null && sync && dd if=/dev/vda bs=512 count=1 2>/dev/null | grep -q plugboard-vhost-user",
    );
    m.detach(id).unwrap();
    expect_event_departure(&m, id, DeviceRole::VhostUserBlk);
    wait_path(&mut guest, "/sys/block/vda", true);
    let chardevs = m
        .hypervisor()
        .with_client(|c| c.execute("query-chardev", None))
        .unwrap()
        .unwrap();
    assert!(
        !chardevs
            .to_string()
            .contains(&qemu_name(id, DeviceRole::VhostUserBlk)),
        "{chardevs}"
    );
    guest.shutdown().unwrap();
}

#[test]
#[ignore = "boots the lab guest (lab/run-tests.sh)"]
fn vhost_user_fs_against_virtiofsd() {
    let mut guest = boot(&[]);
    let m = manager(&guest);
    let backend = BackendProcess::virtiofsd().unwrap();
    std::fs::write(
        backend.shared_dir().join("hello.txt"),
        "hello from the host\n",
    )
    .unwrap();
    let spec = vhost_user_spec(
        backend.socket().to_str().unwrap(),
        VhostUserDevice::Fs {
            tag: "plugfs".into(),
            cache: FsCache::Never,
        },
    );
    let id = m.new_device(spec).unwrap().id();
    m.attach(id).unwrap();
    let out = sh(
        &mut guest,
        "mkdir -p /mnt/fs && for i in $(seq 100); do mount -t virtiofs plugfs /mnt/fs 2>/dev/null && break; sleep 0.1; done; cat /mnt/fs/hello.txt && echo from-guest > /mnt/fs/back.txt && umount /mnt/fs",
    );
    assert!(out.contains("hello from the host"), "{out}");
    assert_eq!(
        std::fs::read_to_string(backend.shared_dir().join("back.txt")).unwrap(),
        "from-guest\n"
    );
    m.detach(id).unwrap();
    expect_event_departure(&m, id, DeviceRole::VhostUserFs);
    assert!(
        !peripherals(&m)
            .to_string()
            .contains(&qemu_name(id, DeviceRole::VhostUserFs))
    );
    guest.shutdown().unwrap();
}

/// A lab guest with QEMU, its BIOS and the `nested_vfio` probe in it.
fn nested_guest() -> Guest {
    let root = plugboard_lab::workspace_root();
    let probe =
        plugboard_lab::cargo::build_example(&root, "plugboard-qemu", "nested_vfio").unwrap();
    let mut initramfs = Initramfs::new().unwrap();
    initramfs
        .add_qemu(&plugboard_qemu::test_util::qemu_binary())
        .unwrap()
        .add_binary(&probe, "/usr/bin/nested_vfio")
        .unwrap();
    let mut opts = BootOptions::default();
    opts.machine.memory_mib = 1536;
    Guest::boot(&opts, &initramfs).unwrap()
}

/// A shell function the guest scripts bind a function with: `on_vfio DDDD:BB:SS.F` moves
/// it to vfio-pci (override, unbind, probe) and fails unless vfio-pci took it.
const ON_VFIO: &str = r#"
    on_vfio() {
        echo vfio-pci > /sys/bus/pci/devices/$1/driver_override
        [ ! -e /sys/bus/pci/devices/$1/driver ] || echo $1 > /sys/bus/pci/devices/$1/driver/unbind
        echo $1 > /sys/bus/pci/drivers_probe
        [ -e /sys/bus/pci/drivers/vfio-pci/$1 ]
    }
"#;

/// Runs `script` (with [`ON_VFIO`] defined) in the guest (15 minutes at most) and expects
/// `NESTED-VFIO-OK` from each of its `nested_vfio` runs.
fn nested(guest: &mut Guest, script: &str, runs: usize) {
    let out = guest
        .exec_with(
            &format!("{ON_VFIO}{script}"),
            Duration::from_secs(900),
            &mut |line| {
                eprintln!("guest: {line}");
            },
        )
        .unwrap();
    assert!(
        out.success() && out.output.matches("NESTED-VFIO-OK").count() == runs,
        "{}",
        out.output
    );
}

#[test]
#[ignore = "boots the lab guest (lab/run-tests.sh)"]
fn vfio_pci_into_a_nested_qemu_in_the_lab_guest() {
    let mut guest = nested_guest();
    // A single-device-group e1000e guinea pig, bound to vfio-pci inside the guest.
    let script = r#"
        set -e
        bdf=""
        for d in /sys/bus/pci/devices/*; do
          [ "$(cat $d/vendor):$(cat $d/device)" = "0x8086:0x10d3" ] || continue
          [ "$(ls $d/iommu_group/devices | wc -l)" = 1 ] || continue
          bdf=$(basename $d); break
        done
        [ -n "$bdf" ] || { echo "no single-device e1000e"; exit 1; }
        on_vfio $bdf
        PLUGBOARD_QEMU=/usr/bin/qemu-system-x86_64 /usr/bin/nested_vfio $bdf
    "#;
    nested(&mut guest, script, 1);
    guest.shutdown().unwrap();
}

/// The lab machine's other kinds into the nested QEMU: the NVMe controller (vfio-pci, both
/// interfaces, hot and cold) and an mdev of the kernel's `mtty` sample (`sysfsdev=`,
/// legacy, hot and cold: like every VFIO function it gets a root port of its own, issue 17
/// item 2).
#[test]
#[ignore = "boots the lab guest (lab/run-tests.sh)"]
fn nvme_and_an_mdev_into_a_nested_qemu_in_the_lab_guest() {
    let mut guest = nested_guest();
    let script = r#"
        set -e
        bdf=""
        for d in /sys/bus/pci/devices/*; do
          [ "$(cat $d/vendor):$(cat $d/device)" = "0x1b36:0x0010" ] && bdf=$(basename $d)
        done
        [ -n "$bdf" ] || { echo "no NVMe controller"; exit 1; }
        on_vfio $bdf
        PLUGBOARD_QEMU=/usr/bin/qemu-system-x86_64 /usr/bin/nested_vfio $bdf
        uuid=83b8f4f2-509f-382f-3c1e-e6bfe0fa1002
        echo $uuid > /sys/devices/virtual/mtty/mtty/mdev_supported_types/mtty-1/create
        PLUGBOARD_QEMU=/usr/bin/qemu-system-x86_64 /usr/bin/nested_vfio mdev:$uuid
        echo 1 > /sys/bus/mdev/devices/$uuid/remove
    "#;
    nested(&mut guest, script, 2);
    guest.shutdown().unwrap();
}

/// Issue 17, items 2 and 4, with real VFIO: the lab's NICs behind its pcie-pci-bridge show
/// a 256-byte config space (conventional PCI) and share one IOMMU group. Named by each
/// function's cdev and by the group node, the group is one device, plugged once (before,
/// each cdev was a device of its own holding every function); it goes into a nested QEMU,
/// each function on a root port of its own (before, the conventional functions got no port
/// and QEMU's backend refused the plug, `NoPort`).
#[test]
#[ignore = "boots the lab guest (lab/run-tests.sh)"]
fn a_group_of_conventional_pci_functions_into_a_nested_qemu_in_the_lab_guest() {
    let mut guest = nested_guest();
    let script = r#"
        set -e
        bdf=""
        for d in /sys/bus/pci/devices/*; do
          [ "$(cat $d/vendor):$(cat $d/device)" = "0x8086:0x10d3" ] || continue
          [ "$(stat -c %s $d/config)" = 256 ] || continue
          bdf=$(basename $d); break
        done
        [ -n "$bdf" ] || { echo "no conventional e1000e"; exit 1; }
        for m in /sys/bus/pci/devices/$bdf/iommu_group/devices/*; do
          m=$(basename $m)
          case "$(cat /sys/bus/pci/devices/$m/class)" in 0x0604*|0x0600*) continue;; esac
          on_vfio $m
          echo "$m on vfio-pci, config $(stat -c %s /sys/bus/pci/devices/$m/config) bytes"
        done
        PLUGBOARD_QEMU=/usr/bin/qemu-system-x86_64 /usr/bin/nested_vfio --group $bdf
    "#;
    let out = guest
        .exec_with(
            &format!("{ON_VFIO}{script}"),
            Duration::from_secs(600),
            &mut |line| {
                eprintln!("guest: {line}");
            },
        )
        .unwrap();
    assert!(
        out.success()
            && out
                .output
                .contains("one device for the group node and every cdev")
            && out.output.contains("NESTED-VFIO-GROUP-OK"),
        "{}",
        out.output
    );
    guest.shutdown().unwrap();
}

#[test]
#[ignore = "boots the lab guest (lab/run-tests.sh)"]
fn vhost_user_net_nic_with_its_mac() {
    let mut guest = boot(&[]);
    let m = manager(&guest);
    // No vhost-user net backend is packaged here: a minimal one that speaks the control
    // protocol (and moves no packets) stands in for it.
    let backend = plugboard_qemu::fake_vhost_user::FakeVhostUserNet::start();
    // Not 52:54:00:12:34:56: QEMU gives that default MAC to the lab's first e1000e.
    let mac: plugboard_devices::MacAddress = "52:54:00:ab:cd:ef".parse().unwrap();
    let spec = vhost_user_spec(
        backend.socket().to_str().unwrap(),
        VhostUserDevice::Net { mac },
    );
    let id = m.new_device(spec).unwrap().id();
    m.attach(id).unwrap();
    let find = "for i in $(seq 200); do f=$(grep -l 52:54:00:ab:cd:ef /sys/class/net/*/address 2>/dev/null) && [ -n \"$f\" ] && { echo $f; exit 0; }; sleep 0.1; done; exit 1";
    let out = sh(&mut guest, find);
    let iface = out
        .trim()
        .trim_start_matches("/sys/class/net/")
        .trim_end_matches("/address")
        .to_owned();
    let driver = sh(
        &mut guest,
        &format!("basename $(readlink /sys/class/net/{iface}/device/driver)"),
    );
    assert_eq!(driver.trim(), "virtio_net", "{iface}");
    // The driver started the device: QEMU handed the backend the memory table (5).
    assert!(backend.requests().contains(&5), "{:?}", backend.requests());
    m.detach(id).unwrap();
    expect_event_departure(&m, id, DeviceRole::VhostUserNet);
    sh(
        &mut guest,
        &format!(
            "for i in $(seq 200); do [ ! -e /sys/class/net/{iface} ] && exit 0; sleep 0.1; done; exit 1"
        ),
    );
    guest.shutdown().unwrap();
}
