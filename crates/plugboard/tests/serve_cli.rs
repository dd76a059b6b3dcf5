//! `host`, `hostdev` and `vfio` use the daemon when its socket is there and it serves the
//! same host (sysfs root, dev root, state dir), and work locally otherwise. The proof is
//! what only the daemon can do for a non-root member of its socket group: read the
//! root-only registry, and refuse host-device changes with its own policy.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failure here is a test failure"
)]

mod serve_util;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use plugboard_sysfs::fake::{FakeKernel, PciSpec};
use serve_util::{BIN, Daemon};

const GROUP: u32 = 4243;
const ALICE: u32 = 1000;

struct Setup {
    _dir: tempfile::TempDir,
    kernel: FakeKernel,
    state: std::path::PathBuf,
    daemon: Daemon,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(dir.path().join("kernel")).unwrap();
    let kernel = FakeKernel::builder()
        .pci(
            PciSpec::new("0000:02:00.0", 0x8086, 0x10d3)
                .class(0x02_0000)
                .iommu_group(7)
                .driver("e1000e"),
        )
        .in_dir(&dir.path().join("kernel"))
        .build()
        .unwrap();
    let state = dir.path().join("state");
    let daemon = Daemon::start(
        dir.path(),
        &state,
        &kernel.sysfs_root(),
        &[
            "--dev-root",
            kernel.dev_root().to_str().unwrap(),
            "--socket-group",
            &GROUP.to_string(),
        ],
    );
    Setup {
        _dir: dir,
        kernel,
        state,
        daemon,
    }
}

/// `plugboard ARGS` as `uid` (group GROUP) on the setup's host, daemon socket in the env.
fn plugboard(s: &Setup, uid: u32, local: bool, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--sysfs-root")
        .arg(s.kernel.sysfs_root())
        .arg("--dev-root")
        .arg(s.kernel.dev_root())
        .arg("--state-dir")
        .arg(&s.state)
        .env("PLUGBOARD_SOCKET", &s.daemon.socket)
        .env("NO_COLOR", "1")
        .uid(uid)
        .gid(GROUP);
    if local {
        cmd.env("PLUGBOARD_LOCAL", "1");
    }
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn hostdev_and_host_use_the_daemon_when_it_serves_this_host() {
    let s = setup();
    // Only root can open the registry files (the state directory is created 0700); the
    // daemon reads them for the group.
    let ls = plugboard(&s, ALICE, false, &["hostdev", "ls"]);
    assert!(stdout(&ls).contains("DEVICE"), "{}", stdout(&ls));
    let json = stdout(&plugboard(&s, ALICE, false, &["hostdev", "ls", "--json"]));
    let listing: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(listing["pci"], serde_json::json!([]));
    let local = plugboard(&s, ALICE, true, &["hostdev", "ls"]);
    assert!(
        stderr(&local).contains("registry"),
        "local work cannot read it"
    );

    // Host-device changes outside a VM: the daemon's policy answers, not the kernel.
    let err = stderr(&plugboard(
        &s,
        ALICE,
        false,
        &["hostdev", "detach", "0000:02:00.0"],
    ));
    assert!(
        err.contains("(403)") && err.contains("only root may change host devices"),
        "{err}"
    );
    let err = stderr(&plugboard(
        &s,
        ALICE,
        true,
        &["hostdev", "detach", "0000:02:00.0"],
    ));
    assert!(
        !err.contains("(403)"),
        "PLUGBOARD_LOCAL=1 works locally: {err}"
    );
    let err = stderr(&plugboard(
        &s,
        ALICE,
        false,
        &[
            "hostdev",
            "prepare",
            "--owner",
            "qemu/x",
            "--managed",
            "0000:02:00.0",
        ],
    ));
    assert!(err.contains("(403)"), "{err}");

    // host ls and show through the daemon: the same devices as locally.
    let remote = stdout(&plugboard(&s, ALICE, false, &["host", "ls", "--json"]));
    let local = stdout(&plugboard(&s, ALICE, true, &["host", "ls", "--json"]));
    let ids = |t: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(t).unwrap();
        v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["address"].to_string())
            .collect()
    };
    assert_eq!(ids(&remote), ids(&local));
    assert_eq!(ids(&remote), vec!["\"0000:02:00.0\"".to_owned()]);
    let table = stdout(&plugboard(&s, ALICE, false, &["host", "ls"]));
    assert!(
        table.contains("0000:02:00.0") && table.contains("e1000e"),
        "{table}"
    );
    let show = stdout(&plugboard(
        &s,
        ALICE,
        false,
        &["host", "show", "02:00.0", "--json"],
    ));
    assert!(show.contains("\"iommu_group\": 7"), "{show}");
    let groups = stdout(&plugboard(&s, ALICE, false, &["host", "groups"]));
    assert!(groups.contains("IOMMU group 7"), "{groups}");
}

#[test]
fn another_host_or_state_means_local_work() {
    let s = setup();
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["hostdev", "ls", "--json", "--state-dir"])
        .arg(other.path())
        .arg("--sysfs-root")
        .arg(s.kernel.sysfs_root())
        .arg("--dev-root")
        .arg(s.kernel.dev_root())
        .env("PLUGBOARD_SOCKET", &s.daemon.socket)
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("looks at another host or state; working locally"),
        "{log}"
    );
    assert!(
        other.path().join("hostdev.db").exists(),
        "the local registry was used"
    );
}

#[test]
fn vfio_info_leaves_a_device_a_vm_holds_alone() {
    let s = setup();
    // Prepare the NIC for a VM in-process, where the fake kernel applies its semantics; the
    // daemon shares the registry.
    let mut hostdev = plugboard_hostdev::HostdevManager::open(s.kernel.sysfs(), &s.state).unwrap();
    hostdev
        .prepare(
            &"qemu/vm9".parse().unwrap(),
            &["0000:02:00.0".parse().unwrap()],
            plugboard_hostdev::BatchOptions {
                managed: true,
                whole_group: false,
                shareable: false,
            },
        )
        .unwrap();
    // Refused through the daemon and locally alike: the guard is the core's.
    for local in [false, true] {
        let err = stderr(&plugboard(&s, 0, local, &["vfio", "info", "0000:02:00.0"]));
        assert!(
            err.contains(
                "PCI device 0000:02:00.0 is in use by qemu/vm9 (the hostdev registry); not opening it"
            ),
            "local={local}: {err}"
        );
        assert_eq!(err.contains("the daemon refused"), !local, "{err}");
    }
    let ls = stdout(&plugboard(&s, ALICE, false, &["hostdev", "ls"]));
    assert!(
        ls.contains("0000:02:00.0") && ls.contains("active") && ls.contains("qemu/vm9"),
        "{ls}"
    );
    let host = stdout(&plugboard(&s, ALICE, false, &["host", "ls"]));
    assert!(
        host.contains("qemu/vm9") && host.contains("vfio-pci"),
        "{host}"
    );
}
