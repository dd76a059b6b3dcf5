//! QMP hotplug into the running guest: a virtio-blk disk hot-added into an empty root port
//! appears in the guest's `/sys/block`, and disappears again after `device_del`.

use std::process::Command;
use std::time::Duration;

use plugboard_lab::HOTPLUG_PORTS;
use serde_json::json;

use crate::{boot, sh};

#[test]
#[ignore = "boots the lab guest (lab/run-tests.sh)"]
fn virtio_blk_hot_add_and_remove_over_qmp() {
    let mut guest = boot();
    let before = sh(&mut guest, "ls /sys/block");
    assert!(
        !before.lines().any(|l| l.starts_with("vd")),
        "a disk before hot-add: {before}"
    );

    let image = guest.run_dir().join("disk.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg("64M")
        .status()
        .expect("qemu-img");
    assert!(made.success());

    let mut qmp = guest.qmp().expect("QMP");
    qmp.execute(
        "blockdev-add",
        json!({"driver": "qcow2", "node-name": "disk0",
               "file": {"driver": "file", "filename": image.display().to_string()}}),
    )
    .expect("blockdev-add");
    qmp.execute(
        "device_add",
        json!({"driver": "virtio-blk-pci", "id": "hd0", "drive": "disk0",
               "bus": HOTPLUG_PORTS[0], "serial": "plugboard-lab-hd0"}),
    )
    .expect("device_add");

    // Poll inside the guest (no sleeps on the host), then show what appeared.
    let seen = sh(
        &mut guest,
        "for i in $(seq 400); do ls /sys/block | grep -q '^vd' && break; sleep 0.05; done
         for d in /sys/block/vd*; do
           echo \"disk=${d##*/} serial=$(cat $d/serial) size=$(cat $d/size) path=$(readlink -f $d)\"
         done",
    );
    let line = seen
        .lines()
        .find(|l| l.starts_with("disk=vd"))
        .unwrap_or_else(|| panic!("no vd* disk:\n{seen}"));
    assert!(line.contains("serial=plugboard-lab-hd0"), "{line}");
    assert!(
        line.contains("size=131072"),
        "64 MiB is 131072 sectors: {line}"
    );
    // hp1 is the root port at 00:05.0; the disk sits below it.
    assert!(line.contains("/0000:00:05.0/"), "{line}");

    qmp.execute("device_del", json!({"id": "hd0"}))
        .expect("device_del");
    let ev = qmp
        .wait_event("DEVICE_DELETED", Duration::from_secs(60))
        .expect("DEVICE_DELETED");
    assert!(
        ev.to_string().contains("hd0") || ev.to_string().contains("/machine/peripheral"),
        "{ev}"
    );
    let after = sh(
        &mut guest,
        "for i in $(seq 400); do ls /sys/block | grep -q '^vd' || break; sleep 0.05; done; ls /sys/block",
    );
    assert!(
        !after.lines().any(|l| l.starts_with("vd")),
        "disk still there after device_del: {after}"
    );
    guest.shutdown().expect("poweroff");
}
