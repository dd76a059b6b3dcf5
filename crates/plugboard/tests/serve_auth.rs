//! Authorization with real peers: the test runs as root and starts CLI clients as other
//! uids (`CommandExt::uid`/`gid`). A VM belongs to the uid that registered it; only that
//! uid or root changes its devices; only root touches host devices outside a VM; only
//! members of the socket's group can connect at all.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failure here is a test failure"
)]

mod serve_util;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use serve_util::{BIN, Daemon, Qemu, empty_sysfs, image};

const GROUP: u32 = 4242;
const ALICE: u32 = 1000;
const BOB: u32 = 1001;
const EVE: u32 = 1002;

/// `plugboard vm ARGS` as `uid` with primary group `gid`.
fn vm_as(uid: u32, gid: u32, socket: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("vm")
        .args(args)
        .arg("--socket")
        .arg(socket)
        .uid(uid)
        .gid(gid)
        .env_remove("PLUGBOARD_SOCKET")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected a refusal, got {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains(needle), "{stderr:?} lacks {needle:?}");
}

fn owned_by(path: &Path, uid: u32) -> String {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
    path.display().to_string()
}

#[test]
fn vms_belong_to_their_registrar_and_host_devices_to_root() {
    assert!(
        running_as_root(),
        "this test runs as root (it starts clients as other uids)"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sysfs = empty_sysfs(dir.path());
    let daemon = Daemon::start(
        dir.path(),
        &dir.path().join("state"),
        &sysfs,
        &["--socket-group", &GROUP.to_string()],
    );
    let sock = &daemon.socket;
    let root_qemu = Qemu::start(dir.path(), 1);
    let alice_qemu = Qemu::start(dir.path(), 1);
    let alice_qmp = owned_by(&alice_qemu.qmp, ALICE);

    // Registering: the QMP socket must be the caller's.
    refused(
        &vm_as(
            ALICE,
            GROUP,
            sock,
            &[
                "register",
                "rootvm",
                "--qmp",
                root_qemu.qmp.to_str().unwrap(),
            ],
        ),
        "(403): uid 1000 may not register VM \"rootvm\" with",
    );
    ok(&vm_as(
        0,
        0,
        sock,
        &[
            "register",
            "rootvm",
            "--qmp",
            root_qemu.qmp.to_str().unwrap(),
        ],
    ));
    let out = ok(&vm_as(
        ALICE,
        GROUP,
        sock,
        &["register", "alicevm", "--qmp", &alice_qmp],
    ));
    assert!(out.contains("owner uid 1000"), "{out}");

    // Attaching: the owner (with a disk of her own) or root; nobody else.
    let alice_disk = owned_by(&image(&dir.path().join("alice.img")), ALICE);
    let bob_disk = owned_by(&image(&dir.path().join("bob.img")), BOB);
    let root_disk = image(&dir.path().join("root.img")).display().to_string();
    let attach = |uid: u32, vm: &str, disk: &str| {
        vm_as(
            uid,
            GROUP,
            sock,
            &["attach", vm, "--disk", disk, "--driver", "virtio-scsi"],
        )
    };
    refused(
        &attach(BOB, "alicevm", &bob_disk),
        "(403): uid 1001 may not attach a device to VM \"alicevm\": the VM belongs to uid 1000",
    );
    refused(
        &attach(ALICE, "alicevm", &root_disk),
        "the file belongs to uid 0, not to the caller",
    );
    refused(
        &attach(ALICE, "rootvm", &alice_disk),
        "the VM belongs to uid 0",
    );
    let out = ok(&attach(ALICE, "alicevm", &alice_disk));
    let id = out.split_whitespace().next().unwrap().to_owned();
    assert_eq!(id.len(), 16, "{out}");

    // Reading is open to every member of the socket's group.
    let listing = ok(&vm_as(BOB, GROUP, sock, &["ls"]));
    assert!(
        listing.contains("alicevm") && listing.contains("1000"),
        "{listing}"
    );
    let devices = ok(&vm_as(BOB, GROUP, sock, &["devices", "alicevm"]));
    assert!(devices.contains(&id), "{devices}");

    // Detaching and unregistering: the owner or root.
    refused(
        &vm_as(BOB, GROUP, sock, &["detach", "alicevm", &id]),
        "(403)",
    );
    refused(
        &vm_as(BOB, GROUP, sock, &["unregister", "alicevm"]),
        "(403)",
    );
    ok(&vm_as(0, 0, sock, &["detach", "alicevm", &id]));
    ok(&vm_as(ALICE, GROUP, sock, &["unregister", "alicevm"]));

    // Host devices outside a VM: root only, whoever asks.
    let curl = |uid: u32, path: &str| {
        let out = Command::new("curl")
            .args(["-s", "-X", "POST", "--unix-socket", sock.to_str().unwrap()])
            .arg(format!("http://plugboard{path}"))
            .uid(uid)
            .gid(GROUP)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for op in ["detach", "reattach", "reset"] {
        let body = curl(ALICE, &format!("/v1/hostdevs/0000:00:02.0/{op}"));
        assert!(body.contains("\"error\":\"forbidden\""), "{body}");
        assert!(
            body.contains("only root may change host devices outside a VM"),
            "{body}"
        );
    }
    let body = curl(ALICE, "/v1/hostdevs/recover");
    assert!(body.contains("\"error\":\"forbidden\""), "{body}");
    let body = curl(0, "/v1/hostdevs/recover");
    assert!(body.contains("\"recovered\":[]"), "{body}");

    // Not in the socket's group: no connection at all.
    refused(&vm_as(EVE, EVE, sock, &["ls"]), "cannot reach the daemon");
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
}
