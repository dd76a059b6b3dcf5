//! `plugboard serve` against a real QEMU (paused, no guest): register, attach, restart
//! the daemon, and reconcile what QEMU holds with what was saved. SCSI disks unplug
//! without a guest; virtio-blk PCI disks would wait for a guest's acknowledgement, so
//! their detach is in the lab test (`serve_lab.rs`).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failure here is a test failure"
)]

mod serve_util;

use serde_json::{Value, json};
use serve_util::{Daemon, Qemu, empty_sysfs, image};

/// A device id as JSON answers give it: its 16 hex digits, as a string.
fn hex(id: &Value) -> String {
    let text = id.as_str().unwrap();
    assert_eq!(text.len(), 16, "{id}");
    text.to_owned()
}

#[test]
fn devices_survive_a_restart_and_are_reconciled_with_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let sysfs = empty_sysfs(dir.path());
    let state = dir.path().join("state");
    let qemu = Qemu::start(dir.path(), 2);
    let daemon = Daemon::start(dir.path(), &state, &sysfs, &[]);

    let (status, vm) = daemon.register_qemu("vm1", &qemu.qmp);
    assert_eq!(status, 201, "{vm}");
    assert_eq!(vm["root_ports"], json!(["hp1", "hp2"]));
    assert_eq!(vm["owner_uid"], 0);
    let (status, again) = daemon.register_qemu("vm2", &qemu.qmp);
    assert_eq!(status, 409, "one QEMU, one VM: {again}");
    assert!(
        again["message"]
            .as_str()
            .unwrap()
            .contains("already registered with"),
        "{again}"
    );

    let attach = |path: &str, driver: &str| {
        let body = json!({"kind": "disk", "path": image(&dir.path().join(path)), "driver": driver});
        let (status, answer) = daemon.request("POST", "/v1/vms/vm1/devices", Some(&body));
        assert_eq!(status, 201, "{answer}");
        answer["device"].clone()
    };
    let blk = attach("blk.img", "virtio-blk");
    let keep = attach("keep.img", "virtio-scsi");
    let gone = attach("gone.img", "virtio-scsi");
    assert_eq!(blk["guest"]["drive_name"], "vda");
    assert_eq!(blk["plugged"]["plug"]["port"], 0);
    assert_eq!(keep["guest"]["scsi_address"], json!({"id": 0, "lun": 1}));
    let (_, before) = daemon.request("GET", "/v1/vms/vm1/devices", None);
    assert!(daemon.stop().success());

    // QEMU opened none of the paths: each disk's file node is the descriptor the daemon
    // opened and checked, in an fd set of its own.
    let sets = qemu.execute("query-fdsets", None);
    assert_eq!(sets.as_array().unwrap().len(), 3, "{sets}");
    let nodes = qemu.execute("query-named-block-nodes", Some(&json!({"flat": true})));
    let files: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["drv"] == "file")
        .map(|n| n["file"].as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 3, "{nodes}");
    assert!(
        files.iter().all(|f| f.starts_with("/dev/fdset/")),
        "{files:?}"
    );

    // Behind the stopped daemon's back: one SCSI disk goes, and an object named like ours
    // that no saved device accounts for appears.
    let gone_id = format!("drive-{}", hex(&gone["id"]));
    assert!(qemu.device_ids().contains(&gone_id));
    qemu.execute("device_del", Some(&json!({"id": gone_id})));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        !qemu.device_ids().contains(&gone_id),
        "SCSI unplug needs no guest"
    );
    qemu.execute(
        "device_add",
        Some(&json!({"driver": "virtio-rng-pci", "id": "vfio-0-00000000000000ff", "bus": "hp2"})),
    );

    let daemon = Daemon::start(dir.path(), &state, &sysfs, &[]);
    let logs = daemon.logs();
    assert!(
        logs.contains("device saved as attached is not in the VM; dropped from the books"),
        "{logs}"
    );
    assert!(
        logs.contains("vfio-0-00000000000000ff"),
        "the stray is reported: {logs}"
    );
    let (status, after) = daemon.request("GET", "/v1/vms/vm1/devices", None);
    assert_eq!(status, 200);
    let ids = |v: &Value| -> Vec<Value> {
        v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].clone())
            .collect()
    };
    assert_eq!(
        ids(&before),
        vec![blk["id"].clone(), keep["id"].clone(), gone["id"].clone()]
    );
    assert_eq!(ids(&after), vec![blk["id"].clone(), keep["id"].clone()]);
    assert_eq!(
        after["devices"][0], before["devices"][0],
        "restored as saved"
    );
    let (_, vms) = daemon.request("GET", "/v1/vms", None);
    assert_eq!(vms["vms"][0]["connected"], true);
    assert_eq!(vms["vms"][0]["attached"], 2);

    // The books and QEMU agree: the kept disk detaches for real, and the freed SCSI
    // address of the dropped one is handed out again.
    let (status, answer) = daemon.request(
        "DELETE",
        &format!("/v1/vms/vm1/devices/{}", hex(&keep["id"])),
        None,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["unplugged"], true);
    assert!(
        daemon.stop().success(),
        "QEMU takes one QMP client at a time"
    );
    assert!(
        !qemu
            .device_ids()
            .contains(&format!("drive-{}", hex(&keep["id"])))
    );
    // Nothing is left of the disk removed behind the daemon's back: reconciliation deleted
    // its block nodes and closed its fd set; the detach closed the kept disk's. Only the
    // virtio-blk disk's file is still handed over.
    let sets = qemu.execute("query-fdsets", None);
    assert_eq!(sets.as_array().unwrap().len(), 1, "{sets}");
    let nodes = qemu.execute("query-named-block-nodes", Some(&json!({"flat": true})));
    assert!(!nodes.to_string().contains(&gone_id), "{nodes}");
    let daemon = Daemon::start(dir.path(), &state, &sysfs, &[]);
    let again = {
        let body =
            json!({"kind": "disk", "path": dir.path().join("gone.img"), "driver": "virtio-scsi"});
        let (status, answer) = daemon.request("POST", "/v1/vms/vm1/devices", Some(&body));
        assert_eq!(status, 201, "{answer}");
        answer["device"].clone()
    };
    assert_eq!(again["guest"]["scsi_address"], json!({"id": 0, "lun": 1}));
    let (_, metrics) = daemon.request("GET", "/metrics", None);
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("plugboard_devices{state=\"attached\"} 2\n"),
        "{metrics}"
    );
}

#[test]
fn sigterm_lets_an_in_flight_operation_finish_and_answer() {
    let dir = tempfile::tempdir().unwrap();
    let sysfs = empty_sysfs(dir.path());
    let state = dir.path().join("state");
    let qemu = Qemu::start(dir.path(), 1);
    // No guest acknowledges a PCI unplug here, so a detach waits the whole timeout: an
    // operation that is still running when SIGTERM comes.
    let daemon = Daemon::start(dir.path(), &state, &sysfs, &["--unplug-timeout", "2"]);
    let (status, _) = daemon.register_qemu("vm1", &qemu.qmp);
    assert_eq!(status, 201);
    let body = json!({"kind": "disk", "path": image(&dir.path().join("d.img"))});
    let (status, attached) = daemon.request("POST", "/v1/vms/vm1/devices", Some(&body));
    assert_eq!(status, 201, "{attached}");
    let id = hex(&attached["device"]["id"]);

    let client = daemon.client();
    let path = format!("/v1/vms/vm1/devices/{id}");
    let detach = std::thread::spawn(move || client.send("DELETE", &path, None).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(500));
    daemon.terminate();
    let answer = detach.join().unwrap();
    assert_eq!(
        answer.status, 502,
        "the in-flight detach got its answer: {}",
        answer.body
    );
    assert!(answer.body.contains("guest"), "{}", answer.body);
    let logs = daemon.logs();
    let status = daemon.wait();
    assert!(status.success(), "{status}: {logs}");
    let sigterm = logs.find("SIGTERM").unwrap();
    let refused = logs.find("request failed").unwrap();
    assert!(
        sigterm < refused,
        "the operation finished after SIGTERM: {logs}"
    );

    // Nothing half-written: the device is still attached, as QEMU still holds it.
    let daemon = Daemon::start(dir.path(), &state, &sysfs, &[]);
    assert!(daemon.logs().contains("repairs=0"), "{}", daemon.logs());
    let (_, listed) = daemon.request("GET", "/v1/vms/vm1/devices", None);
    assert_eq!(listed["devices"][0]["attachments"], 1, "{listed}");
}

#[test]
fn a_vm_whose_qemu_comes_back_is_reconnected_and_reconciled() {
    let dir = tempfile::tempdir().unwrap();
    let sysfs = empty_sysfs(dir.path());
    let state = dir.path().join("state");
    let qmp = dir.path().join("vm.qmp");
    let qemu = Qemu::start_at(&qmp, 1);
    let daemon = Daemon::start(dir.path(), &state, &sysfs, &[]);
    let (status, _) = daemon.register_qemu("vm1", &qmp);
    assert_eq!(status, 201);
    let body =
        json!({"kind": "disk", "path": image(&dir.path().join("d.img")), "driver": "virtio-scsi"});
    let (status, _) = daemon.request("POST", "/v1/vms/vm1/devices", Some(&body));
    assert_eq!(status, 201);
    assert!(daemon.stop().success());
    drop(qemu);
    let _ = std::fs::remove_file(&qmp);

    let daemon = Daemon::start(dir.path(), &state, &sysfs, &[]);
    let (_, vm) = daemon.request("GET", "/v1/vms/vm1", None);
    assert_eq!(vm["connected"], false, "{vm}");
    assert!(vm["reason"].as_str().unwrap().contains("vm.qmp"), "{vm}");
    let (status, answer) = daemon.request("POST", "/v1/vms/vm1/devices", Some(&body));
    assert_eq!(status, 409, "{answer}");
    let (status, answer) = daemon.request("POST", "/v1/vms/vm1/reconnect", None);
    assert_eq!(status, 409, "QEMU is still gone: {answer}");

    // QEMU is back (a fresh one: the disk is not in it any more).
    let _qemu = Qemu::start_at(&qmp, 1);
    let (status, answer) = daemon.request("POST", "/v1/vms/vm1/reconnect", None);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["vm"]["connected"], true);
    assert_eq!(answer["repairs"][0]["kind"], "forgotten", "{answer}");
    let (status, answer) = daemon.request("POST", "/v1/vms/vm1/reconnect", None);
    assert_eq!(status, 409, "connected already: {answer}");
    let (status, answer) = daemon.request("POST", "/v1/vms/vm1/devices", Some(&body));
    assert_eq!(status, 201, "{answer}");
}
