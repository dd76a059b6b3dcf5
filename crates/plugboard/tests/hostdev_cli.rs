//! `plugboard hostdev …` run as a real binary against a fake kernel's tree and a temp
//! state dir: listing, a claim and release that need no sysfs write (a device already on
//! vfio-pci is adopted), the owner shown by `plugboard host ls/groups/show`, and one-line errors naming the device or file. Operations that
//! bind drivers are tested in plugboard-hostdev itself, where the fake kernel applies them.
//!
//! Every command gets `--sysfs-root`: nothing here may touch this machine's `/sys`.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failure here is a test failure"
)]

use std::path::Path;
use std::process::{Command, Output};

use plugboard_sysfs::fake::{FakeKernel, PciSpec};

fn kernel() -> FakeKernel {
    FakeKernel::builder()
        .pci(PciSpec::bridge("0000:00:1e.0").iommu_group(5))
        .pci(
            PciSpec::new("0000:02:00.0", 0x8086, 0x10d3)
                .class(0x02_0000)
                .iommu_group(7)
                .driver("vfio-pci"),
        )
        .pci(
            PciSpec::new("0000:03:00.0", 0x8086, 0x10d3)
                .class(0x02_0000)
                .iommu_group(8)
                .driver("e1000e"),
        )
        .build()
        .unwrap()
}

fn plugboard(kernel: &FakeKernel, state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_plugboard"))
        .arg("--sysfs-root")
        .arg(kernel.sysfs_root())
        .arg("--dev-root")
        .arg(kernel.dev_root())
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn claim_list_and_release_an_adopted_device() {
    let k = kernel();
    let state = tempfile::tempdir().unwrap();
    let s = state.path();
    let out = plugboard(&k, s, &["hostdev", "ls"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).lines().count(),
        1,
        "header only: {}",
        stdout(&out)
    );

    let out = plugboard(
        &k,
        s,
        &["hostdev", "prepare", "--owner", "qemu/vm1", "02:00.0"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("prepared for qemu/vm1: 0000:02:00.0"));

    let out = plugboard(&k, s, &["hostdev", "ls", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["pci"][0]["address"], "0000:02:00.0");
    assert_eq!(json["pci"][0]["list"], "active");
    assert_eq!(json["pci"][0]["owner"]["driver"], "qemu");
    assert_eq!(json["pci"][0]["owner"]["domain"], "vm1");
    let table = stdout(&plugboard(&k, s, &["hostdev", "ls"]));
    assert!(table.contains("0000:02:00.0  active  qemu/vm1"), "{table}");

    // `plugboard host ls`, `host groups` and `host show` name the owner.
    let host = stdout(&plugboard(&k, s, &["host", "ls", "--no-names"]));
    let line = host
        .lines()
        .find(|l| l.starts_with("0000:02:00.0"))
        .unwrap();
    assert!(host.lines().next().unwrap().ends_with("OWNER"), "{host}");
    assert!(line.ends_with("qemu/vm1"), "{host}");
    let groups = stdout(&plugboard(&k, s, &["host", "groups", "--no-names"]));
    assert!(groups.contains("owner qemu/vm1"), "{groups}");
    let show = plugboard(
        &k,
        s,
        &["host", "show", "--no-names", "--json", "0000:02:00.0"],
    );
    let json: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(json["device"]["owner"], "qemu/vm1", "{json}");

    // Same owner again: refused, naming the device and its owner.
    let out = plugboard(
        &k,
        s,
        &["hostdev", "prepare", "--owner", "qemu/vm1", "02:00.0"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("PCI device 0000:02:00.0 is in use by qemu/vm1"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("is in use by qemu/vm1 (already yours)"),
        "{}",
        stderr(&out)
    );
    // Another owner is told whose it is, not that it is theirs.
    let out = plugboard(
        &k,
        s,
        &["hostdev", "prepare", "--owner", "qemu/vm2", "02:00.0"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("PCI device 0000:02:00.0 is in use by qemu/vm1")
            && !stderr(&out).contains("already yours"),
        "{}",
        stderr(&out)
    );

    let out = plugboard(
        &k,
        s,
        &["hostdev", "release", "--owner", "qemu/vm1", "0000:02:00.0"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("0000:02:00.0  inactive"),
        "{}",
        stdout(&out)
    );
    let out = plugboard(&k, s, &["hostdev", "ls", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["pci"][0]["list"], "inactive");
    assert!(json["pci"][0]["owner"].is_null());
}

#[test]
fn a_reattach_that_leaves_the_device_driverless_fails_and_says_so() {
    // An unbound device no host driver knows (the binary writes the fake tree as plain
    // files, so the probe binds nothing, as the kernel would for 1234:5678).
    let k = FakeKernel::builder()
        .pci(
            PciSpec::new("0000:08:00.0", 0x1234, 0x5678)
                .class(0x02_0000)
                .iommu_group(8)
                .unbound(),
        )
        .build()
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let s = state.path();
    let out = plugboard(&k, s, &["hostdev", "reattach", "0000:08:00.0"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert_eq!(
        stdout(&out).trim(),
        "0000:08:00.0: left with no driver: no host driver took it"
    );
    assert!(
        stderr(&out).contains("PCI device 0000:08:00.0 was left with no driver"),
        "{}",
        stderr(&out)
    );
    let out = plugboard(&k, s, &["hostdev", "reattach", "--json", "0000:08:00.0"]);
    assert!(!out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["op"], "reattach");
    assert_eq!(json["result"]["outcome"], "driverless", "{json}");
    // The probe was asked for (libvirt probes an unbound device too).
    let probe = std::fs::read_to_string(k.sysfs_root().join("bus/pci/drivers_probe")).unwrap();
    assert_eq!(probe.trim(), "0000:08:00.0");
}

#[test]
fn bad_input_gives_one_clear_line_and_changes_nothing() {
    let k = kernel();
    let state = tempfile::tempdir().unwrap();
    let s = state.path();
    let cases: &[(&[&str], &str)] = &[
        (
            &["hostdev", "prepare", "--owner", "qemu/vm1", "0000:02:00"],
            "0000:02:00",
        ),
        (
            &["hostdev", "prepare", "--owner", "qemu/vm1", "usb:x/1"],
            "usb:x/1",
        ),
        (
            &["hostdev", "prepare", "--owner", "qemu", "02:00.0"],
            "qemu",
        ),
        (
            &["hostdev", "prepare", "--owner", "qemu/vm1", "0000:7f:00.0"],
            "PCI device 0000:7f:00.0 not found",
        ),
        (
            &[
                "hostdev",
                "prepare",
                "--owner",
                "qemu/vm1",
                "--managed",
                "0000:00:1e.0",
            ],
            "PCI device 0000:00:1e.0 is not an endpoint",
        ),
        (
            &["hostdev", "prepare", "--owner", "qemu/vm1", "0000:03:00.0"],
            "unmanaged PCI device 0000:03:00.0 must be detached from the host first",
        ),
        (&["hostdev", "reset", "0000:7f:00.0"], "0000:7f:00.0"),
    ];
    for (args, needle) in cases {
        let out = plugboard(&k, s, args);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    let out = plugboard(&k, s, &["hostdev", "ls", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["pci"].as_array().unwrap().len(), 0);
    assert_eq!(json["pending"].as_array().unwrap().len(), 0);
}

#[test]
fn a_corrupt_registry_is_named_and_left_alone() {
    let k = kernel();
    let state = tempfile::tempdir().unwrap();
    let db = state.path().join("hostdev.db");
    let junk = b"not a database\n".repeat(200);
    std::fs::write(&db, &junk).unwrap();
    let out = plugboard(&k, state.path(), &["hostdev", "ls"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("the registry {} is corrupt", db.display())),
        "{err}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), junk);
}
