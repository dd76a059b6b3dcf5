//! `plugboard host …` run as a real binary against fake kernels: snapshot tests of tables
//! and JSON, filters, and one-line errors.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failure here is a test failure"
)]

use std::path::Path;
use std::process::{Command, Output};

use plugboard_sysfs::fake::{DriverSpec, FakeKernel, NodeSpec, PciSpec};

/// A small pci.ids with the vendors and classes the fixture uses.
const PCI_IDS: &str = "\
# fixture
1af4  Red Hat, Inc.
\t1041  Virtio 1.0 network device
8086  Intel Corporation
\t10d3  82574L Gigabit Network Connection
\t\t8086 a01f  Gigabit CT Desktop Adapter
\t244e  82801 PCI Bridge
\t29c0  82G33/G31/P35/P31 Express DRAM Controller
10de  NVIDIA Corporation
\t2330  GH100 [H100 SXM5 80GB]
C 02  Network controller
\t00  Ethernet controller
C 03  Display controller
\t02  3D controller
C 06  Bridge
\t00  Host bridge
\t04  PCI bridge
";

struct Fixture {
    kernel: FakeKernel,
    pci_ids: tempfile::NamedTempFile,
    /// An empty state dir, so no owners from the machine's real registry leak in.
    state: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let e1000e = |a: &str| {
        PciSpec::new(a, 0x8086, 0x10d3)
            .class(0x020000)
            .subsystem(0x8086, 0xa01f)
            .driver("e1000e")
            .bar(0, 0xfe80_0000, 128 << 10)
    };
    let kernel = FakeKernel::builder()
        .driver(DriverSpec::new("nvidia"))
        .pci(
            PciSpec::new("0000:00:00.0", 0x8086, 0x29c0)
                .class(0x060000)
                .iommu_group(0)
                .no_reset(),
        )
        .pci(PciSpec::bridge("0000:00:1e.0").iommu_group(5))
        .pci(e1000e("0000:01:01.0").parent("0000:00:1e.0").iommu_group(5))
        .pci(e1000e("0000:01:02.0").parent("0000:00:1e.0").iommu_group(5))
        .pci(e1000e("0000:02:00.0").iommu_group(7).numa_node(0))
        .pci(
            PciSpec::new("0000:3b:00.0", 0x10de, 0x2330)
                .class(0x030200)
                .revision(0xa1)
                .iommu_group(8)
                .numa_node(1)
                .bar(0, 0xfb00_0000, 16 << 20)
                .bar(2, 0x3800_0000_0000, 128 << 30)
                .driver_override("vfio-pci")
                .reset_methods(&["flr", "bus"]),
        )
        .pci(
            PciSpec::new("0000:04:00.0", 0x1af4, 0x1041)
                .class(0x020000)
                .revision(1)
                .unbound(),
        )
        .node(NodeSpec::block("loop0", 7, 0).loop_backing_file("/img/a.raw"))
        .node(NodeSpec::block("broken", 7, 1).uevent("not a uevent\n"))
        .build()
        .unwrap();
    let mut pci_ids = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut pci_ids, PCI_IDS.as_bytes()).unwrap();
    let state = tempfile::tempdir().unwrap();
    Fixture {
        kernel,
        pci_ids,
        state,
    }
}

fn run(f: &Fixture, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_plugboard"))
        .arg("--sysfs-root")
        .arg(f.kernel.sysfs_root())
        .arg("--dev-root")
        .arg(f.kernel.dev_root())
        .arg("--state-dir")
        .arg(f.state.path())
        .args(args)
        .env("PLUGBOARD_PCI_IDS", f.pci_ids.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stdout(f: &Fixture, args: &[&str]) -> String {
    let out = run(f, args);
    assert!(
        out.status.success(),
        "plugboard {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn stderr_of_failure(f: &Fixture, args: &[&str]) -> String {
    let out = run(f, args);
    assert!(!out.status.success(), "plugboard {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

fn json(f: &Fixture, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&stdout(f, &all)).unwrap()
}

fn scrub(text: &str, root: &Path) -> String {
    text.replace(&root.display().to_string(), "<root>")
}

#[test]
fn ls_table() {
    let f = fixture();
    insta::assert_snapshot!(stdout(&f, &["host", "ls"]));
}

#[test]
fn ls_json() {
    let f = fixture();
    insta::assert_snapshot!(stdout(&f, &["--json", "host", "ls"]));
}

#[test]
fn ls_filters() {
    let f = fixture();
    let addresses = |args: &[&str]| -> Vec<String> {
        json(&f, args)["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["address"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        addresses(&["host", "ls", "--class", "0200", "--driver", "e1000e"]),
        ["0000:01:01.0", "0000:01:02.0", "0000:02:00.0"]
    );
    assert_eq!(
        addresses(&["host", "ls", "--class", "bridge"]),
        ["0000:00:00.0", "0000:00:1e.0"]
    );
    assert_eq!(
        addresses(&["host", "ls", "--driver", "none"]),
        ["0000:00:00.0", "0000:04:00.0"]
    );
    assert_eq!(
        addresses(&["host", "ls", "--driver", "vfio"]),
        ["0000:3b:00.0"]
    );
    assert_eq!(
        addresses(&["host", "ls", "--class", "0x0302"]),
        ["0000:3b:00.0"]
    );
    assert!(addresses(&["host", "ls", "--class", "ffff"]).is_empty());
}

#[test]
fn ls_without_names_database() {
    let f = fixture();
    let out = Command::new(env!("CARGO_BIN_EXE_plugboard"))
        .arg("--sysfs-root")
        .arg(f.kernel.sysfs_root())
        .args(["host", "ls", "--pci-ids", "/nonexistent/pci.ids"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    insta::assert_snapshot!(String::from_utf8(out.stdout).unwrap());
}

#[test]
fn groups_table_and_json() {
    let f = fixture();
    insta::assert_snapshot!("groups_table", stdout(&f, &["host", "groups"]));
    insta::assert_snapshot!("groups_json", stdout(&f, &["--json", "host", "groups"]));
    let v = json(&f, &["host", "groups"]);
    let g5 = &v["groups"][1];
    assert_eq!(g5["number"], 5);
    assert_eq!(g5["viable"], false);
    assert_eq!(
        g5["blockers"],
        serde_json::json!(["0000:01:01.0", "0000:01:02.0"])
    );
}

#[test]
fn groups_follow_binding() {
    let f = fixture();
    let nic = f
        .kernel
        .sysfs()
        .pci_device("01:01.0".parse().unwrap())
        .unwrap();
    nic.bind("vfio-pci").unwrap();
    let v = json(&f, &["host", "groups"]);
    assert_eq!(
        v["groups"][1]["blockers"],
        serde_json::json!(["0000:01:02.0"])
    );
    let table = stdout(&f, &["host", "groups"]);
    assert!(
        table.contains("IOMMU group 5: not viable: blocked by 0000:01:02.0 on e1000e"),
        "{table}"
    );
}

#[test]
fn no_iommu_groups_is_said_plainly() {
    let kernel = FakeKernel::builder()
        .pci(
            PciSpec::new("0000:00:03.0", 0x1af4, 0x1041)
                .class(0x020000)
                .driver("virtio-pci"),
        )
        .build()
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_plugboard"))
        .arg("--sysfs-root")
        .arg(kernel.sysfs_root())
        .args(["host", "groups"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("no IOMMU groups: the IOMMU is off or absent"),
        "{text}"
    );
}

#[test]
fn show_table_and_json() {
    let f = fixture();
    insta::assert_snapshot!("show_gpu_table", stdout(&f, &["host", "show", "3b:00.0"]));
    insta::assert_snapshot!(
        "show_nic_json",
        stdout(&f, &["--json", "host", "show", "0000:01:02.0"])
    );
}

#[test]
fn resolve_nodes() {
    let f = fixture();
    let root = f.kernel.root();
    assert_eq!(
        scrub(&stdout(&f, &["host", "resolve", "b", "7:0"]), root),
        "<root>/dev/loop0\n"
    );
    assert_eq!(
        scrub(&stdout(&f, &["host", "resolve", "c", "10:196"]), root),
        "<root>/dev/vfio/vfio\n"
    );
    insta::assert_snapshot!(
        "resolve_json",
        scrub(
            &stdout(&f, &["--json", "host", "resolve", "block", "7:0"]),
            root
        )
    );
}

#[test]
fn errors_are_one_line_and_name_the_object() {
    let f = fixture();
    let root = f.kernel.root();
    let err = scrub(
        &stderr_of_failure(&f, &["host", "show", "0000:09:00.0"]),
        root,
    );
    assert_eq!(
        err,
        "plugboard: error: cannot read PCI device 0000:09:00.0\n  caused by: PCI device 0000:09:00.0 not found: no <root>/sys/bus/pci/devices/0000:09:00.0\n"
    );
    let err = scrub(
        &stderr_of_failure(&f, &["host", "resolve", "b", "7:9"]),
        root,
    );
    assert_eq!(
        err,
        "plugboard: error: no block device 7:9: <root>/sys/dev/block/7:9 does not exist\n"
    );
    let err = scrub(
        &stderr_of_failure(&f, &["host", "resolve", "b", "7:1"]),
        root,
    );
    assert!(err.starts_with("plugboard: error: malformed uevent file <root>/sys/dev/block/7:1/uevent\n  caused by: uevent line 0"), "{err}");
    // Bad input is rejected by the parser, naming the input, never panicking.
    for bad in [
        "../../etc",
        "0000:00:20.0",
        "",
        "0000:00:00.0/../x",
        "\u{1F600}",
    ] {
        let err = stderr_of_failure(&f, &["host", "show", bad]);
        assert!(
            err.contains("is not a PCI address") || err.contains("above the maximum"),
            "{bad:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    for bad in ["8", "../8:0", "x:y", "1:-1"] {
        let err = stderr_of_failure(&f, &["host", "resolve", "c", bad]);
        assert!(err.contains("is not a device number"), "{bad:?}: {err}");
    }
    let err = stderr_of_failure(&f, &["host", "resolve", "x", "8:0"]);
    assert!(err.contains("is not a device kind"), "{err}");
    // A mistyped root is an error, not an empty host.
    let out = Command::new(env!("CARGO_BIN_EXE_plugboard"))
        .args(["--sysfs-root", "/nonexistent/sys", "host", "ls"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("sysfs root not found: no /nonexistent/sys"),
        "{err}"
    );
}

#[test]
fn broken_device_is_reported_not_fatal() {
    let f = fixture();
    let dir =
        std::fs::canonicalize(f.kernel.sysfs_root().join("bus/pci/devices/0000:04:00.0")).unwrap();
    // The IDs are read from `uevent` first and from the attributes when it cannot be
    // read: break both, so the device's identity is unreadable.
    for name in ["uevent", "vendor"] {
        std::fs::remove_file(dir.join(name)).unwrap();
        std::os::unix::fs::symlink(name, dir.join(name)).unwrap();
    }
    let out = run(&f, &["host", "ls"]);
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("0000:04:00.0") && stderr.contains("vendor"),
        "{stderr}"
    );
    let v = json(&f, &["host", "ls"]);
    assert_eq!(v["problems"][0]["address"], "0000:04:00.0");
    assert_eq!(v["devices"].as_array().unwrap().len(), 6);
}
