//! End to end with a real guest: the lab kernel under QEMU (plugboard-lab), driven only
//! through `plugboard serve`. Start the daemon, register the VM, attach a disk (the guest
//! sees it), restart the daemon, list (state restored and reconciled, nothing to repair),
//! detach (the guest loses it).
//!
//! ```sh
//! cargo test -p plugboard --test serve_lab -- --ignored --test-threads=1
//! ```

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failure here is a test failure"
)]

mod serve_util;

use std::time::{Duration, Instant};

use plugboard_lab::Guest;
use serde_json::json;
use serve_util::{Daemon, empty_sysfs, image};

/// Runs `script` in the guest until its output satisfies `done` (or 60 s pass).
fn wait_for(guest: &mut Guest, script: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = guest.exec(script).unwrap();
        if done(&out.output) {
            return out.output;
        }
        assert!(
            Instant::now() < deadline,
            "guest never showed {what}: {}",
            out.output
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
#[ignore = "boots the lab guest (lab/run-tests.sh)"]
fn a_disk_attached_through_the_daemon_reaches_the_guest_and_survives_a_restart() {
    let mut guest = Guest::boot_default().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sysfs = empty_sysfs(dir.path());
    let state = dir.path().join("state");
    let daemon = Daemon::start(dir.path(), &state, &sysfs, &[]);

    let (status, vm) = daemon.request(
        "POST",
        "/v1/vms",
        Some(
            &json!({"name": "lab", "endpoint": {"kind": "qemu", "qmp_socket": guest.qmp_socket()}}),
        ),
    );
    assert_eq!(status, 201, "{vm}");
    assert_eq!(
        vm["root_ports"],
        json!(["hp1", "hp2", "hp3", "hp4"]),
        "{vm}"
    );
    let before = guest.exec("ls /sys/block").unwrap().output;
    assert!(!before.contains("vda"), "{before}");

    let disk = image(&dir.path().join("disk.img"));
    let (status, attached) = daemon.request(
        "POST",
        "/v1/vms/lab/devices",
        Some(&json!({"kind": "disk", "path": disk})),
    );
    assert_eq!(status, 201, "{attached}");
    let device = attached["device"].clone();
    assert_eq!(device["guest"]["drive_name"], "vda");
    // 16 MiB = 32768 sectors of 512 bytes.
    wait_for(
        &mut guest,
        "cat /sys/block/vda/size 2>/dev/null",
        "vda",
        |o| o.trim() == "32768",
    );

    let stopped = daemon.stop();
    assert!(stopped.success(), "{stopped}");
    let daemon = Daemon::start(dir.path(), &state, &sysfs, &[]);
    let logs = daemon.logs();
    assert!(logs.contains("repairs=0"), "nothing to repair: {logs}");
    let (status, listed) = daemon.request("GET", "/v1/vms/lab/devices", None);
    assert_eq!(status, 200);
    assert_eq!(listed["devices"], json!([device]), "restored as saved");
    let (_, vms) = daemon.request("GET", "/v1/vms", None);
    assert_eq!(vms["vms"][0]["connected"], true, "{vms}");

    let id = device["id"].as_str().unwrap();
    let (status, detached) = daemon.request("DELETE", &format!("/v1/vms/lab/devices/{id}"), None);
    assert_eq!(status, 200, "{detached}");
    assert_eq!(detached["unplugged"], true);
    wait_for(&mut guest, "ls /sys/block", "vda gone", |o| {
        !o.contains("vda")
    });
    let (_, listed) = daemon.request("GET", "/v1/vms/lab/devices", None);
    assert_eq!(listed["devices"], json!([]));
    assert!(daemon.stop().success());
    guest.shutdown().unwrap();
}

#[test]
#[ignore = "boots the lab guest (lab/run-tests.sh)"]
fn vfio_through_the_daemon_into_a_nested_qemu_by_descriptor_and_by_group() {
    let root = plugboard_lab::workspace_root();
    let probe =
        plugboard_lab::cargo::build_example(&root, "plugboard", "nested_daemon_vfio").unwrap();
    let mut initramfs = plugboard_lab::Initramfs::new().unwrap();
    initramfs
        .add_binary(
            std::path::Path::new(env!("CARGO_BIN_EXE_plugboard")),
            "/usr/bin/plugboard",
        )
        .unwrap()
        .add_qemu(&plugboard_qemu::test_util::qemu_binary())
        .unwrap()
        .add_binary(&probe, "/usr/bin/nested_daemon_vfio")
        .unwrap();
    let mut opts = plugboard_lab::BootOptions::default();
    opts.machine.memory_mib = 1536;
    let mut guest = Guest::boot(&opts, &initramfs).unwrap();
    // A single-device-group e1000e on its host driver: the daemon takes it (managed).
    let script = r#"
        set -e
        bdf=""
        for d in /sys/bus/pci/devices/*; do
          [ "$(cat $d/vendor):$(cat $d/device)" = "0x8086:0x10d3" ] || continue
          [ "$(ls $d/iommu_group/devices | wc -l)" = 1 ] || continue
          bdf=$(basename $d); break
        done
        [ -n "$bdf" ] || { echo "no single-device e1000e"; exit 1; }
        [ "$(basename $(readlink /sys/bus/pci/devices/$bdf/driver))" = e1000e ]
        ls -l /dev/iommu /dev/vfio
        PLUGBOARD_QEMU=/usr/bin/qemu-system-x86_64 /usr/bin/nested_daemon_vfio $bdf auto legacy
    "#;
    let out = guest
        .exec_with(script, Duration::from_secs(900), &mut |line| {
            eprintln!("guest: {line}");
        })
        .unwrap();
    assert!(
        out.success() && out.output.contains("NESTED-DAEMON-VFIO-OK"),
        "{}",
        out.output
    );
    // auto took the cdev with iommufd on the lab kernel; QEMU ran as nobody.
    assert!(
        out.output
            .lines()
            .any(|l| l.starts_with("auto: backend") && l.contains(r#""type":"cdev""#)),
        "{}",
        out.output
    );
    guest.shutdown().unwrap();
}
