//! plugboard-qemu against a real QEMU 10 with no guest OS (q35, TCG, paused).
//!
//! Fast enough for the normal suite (each test starts its own QEMU in well under a second).
//! Without a guest, PCI unplugs are never acknowledged; `system_reset` completes them, which
//! is also how the "guest never answers, retry later" path is shown. The tests that need a
//! guest to acknowledge hotplug live in `tests/guest.rs`.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failure to set up or query is the test's failure"
)]

mod support;

use std::time::Duration;

use plugboard_devices::test_util::vhost_user_spec;
use plugboard_devices::{
    BlockDriver, DeviceError, DeviceId, DeviceKind, DeviceManager, Hypervisor, HypervisorError,
    ImageFormat, ManagerConfig, PassedFd, PassedFileType, PlugMode, PlugRequest, VhostUserDevice,
};
use plugboard_qemu::qmp::QmpClient;
use plugboard_qemu::test_util::{BackendProcess, BareQemu, create_image};
use plugboard_qemu::{
    DeviceRole, Inspection, QemuConfig, QemuError, QemuHypervisor, QemuId, RemovalError,
};
use serde_json::{Value, json};
use support::{disk_spec, manager_over, new_disk, qemu_name};

const T: Duration = Duration::from_secs(10);

fn config() -> QemuConfig {
    QemuConfig {
        unplug_timeout: Duration::from_millis(500),
        ..QemuConfig::default()
    }
}

fn manager(qemu: &BareQemu) -> DeviceManager<QemuHypervisor> {
    manager_over(QemuHypervisor::connect(qemu.qmp_socket(), config()).unwrap())
}

fn query(hv: &QemuHypervisor, command: &str, args: Option<&Value>) -> Value {
    hv.with_client(|c| c.execute(command, args))
        .unwrap()
        .unwrap()
}

/// `node-name` → `ro` of every named block node.
fn nodes(hv: &QemuHypervisor) -> Vec<(String, bool)> {
    let list = query(hv, "query-named-block-nodes", Some(&json!({"flat": true})));
    let mut v: Vec<(String, bool)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node-name"].as_str().unwrap().to_owned(),
                n["ro"].as_bool().unwrap(),
            )
        })
        .filter(|(n, _)| !n.starts_with('#'))
        .collect();
    v.sort();
    v
}

fn peripherals(hv: &QemuHypervisor) -> Vec<String> {
    let list = query(
        hv,
        "qom-list",
        Some(&json!({"path": "/machine/peripheral"})),
    );
    let mut v: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"].as_str().unwrap().starts_with("child<"))
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

fn chardevs(hv: &QemuHypervisor) -> Vec<String> {
    let list = query(hv, "query-chardev", None);
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap().to_owned())
        .collect()
}

/// Detaches a vhost-user device from a VM with no guest to acknowledge: the first detach
/// times out, a reset completes it; then the device `name` and its chardev are gone.
fn detach_through_a_reset(m: &DeviceManager<QemuHypervisor>, id: DeviceId, name: &str) {
    let hv = m.hypervisor();
    m.detach(id).unwrap_err();
    query(hv, "system_reset", None);
    m.detach(id).unwrap();
    assert!(!peripherals(hv).iter().any(|p| p == name));
    assert!(!chardevs(hv).contains(&format!("{name}-chr")));
}

#[test]
fn the_client_talks_to_a_real_qemu() {
    let qemu = BareQemu::builder().start();
    let mut c = QmpClient::connect(qemu.qmp_socket(), T).unwrap();
    assert!(c.greeting().version.major >= 9, "{:?}", c.greeting());
    assert_eq!(
        c.execute("query-status", None).unwrap()["running"],
        json!(false)
    );
    // A reply of a few hundred kilobytes arrives in many reads and parses whole.
    let schema = c.execute("query-qmp-schema", None).unwrap();
    assert!(schema.as_array().unwrap().len() > 100);
    let err = c.execute("no-such-command", None).unwrap_err();
    assert_eq!(err.failure().unwrap().class, "CommandNotFound");
    c.execute("cont", None).unwrap();
    let ev = c.wait_event(T, |e| e.name == "RESUME").unwrap();
    assert!(ev.is_some());
    c.execute("system_reset", None).unwrap();
    assert!(c.wait_event(T, |e| e.name == "RESET").unwrap().is_some());
}

#[test]
fn getfd_passes_a_descriptor_qemu_can_close_by_name() {
    use std::os::fd::AsFd;
    let qemu = BareQemu::builder().start();
    let mut c = QmpClient::connect(qemu.qmp_socket(), T).unwrap();
    let file = std::fs::File::open("/dev/null").unwrap();
    c.send_fd("plugfd", file.as_fd()).unwrap();
    c.execute("closefd", Some(&json!({"fdname": "plugfd"})))
        .unwrap();
    let err = c
        .execute("closefd", Some(&json!({"fdname": "plugfd"})))
        .unwrap_err();
    assert!(err.failure().is_some(), "{err}");
}

#[test]
fn qemu_killed_mid_call_is_a_clear_error() {
    let mut qemu = BareQemu::builder().start();
    let mut c = QmpClient::connect(qemu.qmp_socket(), T).unwrap();
    qemu.kill();
    let err = c.execute("query-status", None).unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    assert!(err.to_string().contains("QEMU went away"), "{err}");
}

#[test]
fn ports_and_memory_are_discovered_at_attach() {
    let qemu = BareQemu::builder()
        .args(["-device", "virtio-rng-pci,id=rng0,bus=hp2"])
        .start();
    let hv = QemuHypervisor::connect(qemu.qmp_socket(), config()).unwrap();
    assert_eq!(
        hv.port_pool(),
        ["hp1", "hp3", "hp4"],
        "the taken port is not in the pool"
    );
    let ports = hv.root_ports();
    assert_eq!(ports.len(), 4);
    assert_eq!(
        ports[1].occupant.as_deref(),
        Some("/machine/peripheral/rng0")
    );
    assert!(ports.iter().all(|p| p.slot.is_some()));
    assert_eq!(hv.memory_shared(), Some(false));
    let shared = BareQemu::builder().shared_memory(true).start();
    let hv = QemuHypervisor::connect(shared.qmp_socket(), config()).unwrap();
    assert_eq!(hv.memory_shared(), Some(true));
}

#[test]
fn a_read_only_qcow2_disk_goes_in_and_a_silent_guest_leaves_a_retryable_removal() {
    let qemu = BareQemu::builder().start();
    let image = qemu.image("d.qcow2", "qcow2", "16M");
    let m = manager(&qemu);
    let id = new_disk(&m, &image, BlockDriver::VirtioBlk, ImageFormat::Qcow2, true);
    m.attach(id).unwrap();
    let hv = m.hypervisor();
    let name = qemu_name(id, DeviceRole::Disk);
    assert!(peripherals(hv).contains(&name));
    let ours: Vec<_> = nodes(hv)
        .into_iter()
        .filter(|(n, _)| n.starts_with(&name))
        .collect();
    assert_eq!(
        ours,
        [
            (format!("{name}-file"), true),
            (format!("{name}-fmt"), true)
        ]
    );
    assert_eq!(
        query(
            hv,
            "qom-get",
            Some(&json!({"path": format!("/machine/peripheral/{name}"), "property": "parent_bus"}))
        ),
        json!("/machine/peripheral/hp1/hp1")
    );

    // No guest: the unplug request times out, the device stays attached, nodes stay.
    let err = m.detach(id).unwrap_err();
    assert!(m.is_attached(id), "{err}");
    let chain = format!("{err:?}");
    assert!(chain.contains("GuestTimeout"), "{chain}");
    assert_eq!(
        nodes(hv)
            .iter()
            .filter(|(n, _)| n.starts_with(&name))
            .count(),
        2
    );

    // A reset completes the pending unplug; the retry finishes the job.
    query(hv, "system_reset", None);
    m.detach(id).unwrap();
    assert!(!m.is_attached(id));
    assert!(!peripherals(hv).contains(&name));
    assert!(
        nodes(hv).iter().all(|(n, _)| !n.starts_with(&name)),
        "{:?}",
        nodes(hv)
    );
    assert_eq!(m.allocations().root_ports, []);
}

#[test]
fn inspect_sees_what_the_vm_really_holds() {
    let qemu = BareQemu::builder().start();
    let image = qemu.image("i.raw", "raw", "4M");
    let m = manager(&qemu);
    let id = new_disk(&m, &image, BlockDriver::VirtioBlk, ImageFormat::Raw, false);
    m.attach(id).unwrap();
    let hv = m.hypervisor();
    let saved = m.save();
    let plugged: Vec<&PlugRequest> = saved
        .devices
        .iter()
        .filter_map(|d| d.plugged.as_ref())
        .collect();
    assert_eq!(plugged.len(), 1);
    assert_eq!(
        hv.inspect(&plugged).unwrap(),
        Inspection {
            held: vec![true],
            strays: vec![]
        }
    );

    // Behind the manager's back: the disk goes (a reset completes the unplug, there is no
    // guest), and a device named like ours that no request accounts for appears.
    let name = qemu_name(id, DeviceRole::Disk);
    query(hv, "device_del", Some(&json!({ "id": name })));
    query(hv, "system_reset", None);
    for _ in 0..100 {
        if !peripherals(hv).contains(&name) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!peripherals(hv).contains(&name), "{:?}", peripherals(hv));
    let stray = QemuId::for_device(DeviceId::from_raw(0xff), DeviceRole::VfioFunction(0));
    query(
        hv,
        "device_add",
        Some(&json!({"driver": "virtio-rng-pci", "id": stray.as_str(), "bus": "hp4"})),
    );
    query(
        hv,
        "device_add",
        Some(&json!({"driver": "virtio-rng-pci", "id": "rng0", "bus": "hp3"})),
    );
    assert_eq!(
        hv.inspect(&plugged).unwrap(),
        Inspection {
            held: vec![false],
            strays: vec![stray.to_string()]
        }
    );
    assert!(m.is_attached(id), "inspecting repairs nothing");
}

#[test]
fn scsi_hd_goes_to_the_managers_id_and_lun_and_leaves_at_once() {
    let qemu = BareQemu::builder()
        .args(["-device", "virtio-scsi-pci,id=scsi0,bus=hp4"])
        .start();
    let image = qemu.image("s.raw", "raw", "8M");
    let m = manager(&qemu);
    assert_eq!(m.hypervisor().port_pool(), ["hp1", "hp2", "hp3"]);
    let id = new_disk(&m, &image, BlockDriver::VirtioScsi, ImageFormat::Raw, false);
    m.attach(id).unwrap();
    let hv = m.hypervisor();
    let name = qemu_name(id, DeviceRole::Disk);
    let path = format!("/machine/peripheral/{name}");
    let get = |p: &str| query(hv, "qom-get", Some(&json!({"path": path, "property": p})));
    assert_eq!(
        get("parent_bus"),
        json!("/machine/peripheral/scsi0/virtio-backend/scsi0.0")
    );
    assert_eq!((get("scsi-id"), get("lun")), (json!(0), json!(0)));
    assert_eq!(
        m.allocations().root_ports,
        [],
        "a SCSI disk takes no root port"
    );
    m.detach(id).unwrap();
    assert!(!peripherals(hv).contains(&name));
    assert!(nodes(hv).iter().all(|(n, _)| !n.starts_with(&name)));
}

/// The `(st_dev, st_ino)` of every file QEMU (`pid`) has open.
fn open_inodes(pid: u32) -> Vec<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::metadata(e.unwrap().path()).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}

fn inode(path: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.dev(), m.ino())
}

/// The bytes QEMU reads from the block node `node`: a full `blockdev-backup` of it into a
/// fresh file `copy`, of `size` bytes (block jobs run in a paused VM too).
fn read_through_qemu(
    hv: &QemuHypervisor,
    node: &str,
    copy: &std::path::Path,
    size: usize,
) -> Vec<u8> {
    std::fs::write(copy, vec![0_u8; size]).unwrap();
    let target = json!({"driver": "file", "node-name": "copy", "filename": copy});
    query(hv, "blockdev-add", Some(&target));
    let job = json!({"job-id": "copy", "device": node, "target": "copy", "sync": "full"});
    query(hv, "blockdev-backup", Some(&job));
    let done = hv
        .with_client(|c| c.wait_event(T, |e| e.name == "BLOCK_JOB_COMPLETED"))
        .unwrap()
        .unwrap();
    assert!(done.is_some(), "the copy job did not finish");
    query(hv, "blockdev-del", Some(&json!({"node-name": "copy"})));
    std::fs::read(copy).unwrap()
}

#[test]
fn a_disk_passed_by_descriptor_is_the_file_that_was_opened_whatever_the_path_names_later() {
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;
    let qemu = BareQemu::builder()
        .args(["-device", "virtio-scsi-pci,id=scsi0,bus=hp4"])
        .start();
    let dir = qemu.dir();
    let checked = dir.join("checked.raw");
    let other = dir.join("other.raw");
    std::fs::write(&checked, vec![0xaa_u8; 1 << 20]).unwrap();
    std::fs::write(&other, vec![0xbb_u8; 1 << 20]).unwrap();
    let original = inode(&checked);
    // Opened once, as the service does, read-write like the disk.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits().cast_signed())
        .open(&checked)
        .unwrap();
    let m = manager(&qemu);
    let hv = m.hypervisor();
    let fdset = hv.add_fd(file.as_fd(), "disk checked.raw").unwrap();
    drop(file);
    let mut spec = disk_spec(&checked, BlockDriver::VirtioScsi, ImageFormat::Raw, false);
    let DeviceKind::Block(block) = &mut spec.kind else {
        unreachable!()
    };
    block.passed_fd = Some(PassedFd {
        fdset,
        file_type: PassedFileType::File,
    });
    // The path is swapped before the plug: a symlink to another file now stands there.
    std::fs::rename(&checked, dir.join("checked.raw.moved")).unwrap();
    std::os::unix::fs::symlink(&other, &checked).unwrap();
    let id = m.new_device(spec).unwrap().id();
    m.attach(id).unwrap();
    let name = qemu_name(id, DeviceRole::Disk);
    let list = query(hv, "query-named-block-nodes", Some(&json!({"flat": true})));
    let file_node = list
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == format!("{name}-file"))
        .unwrap();
    assert_eq!(file_node["file"], format!("/dev/fdset/{fdset}"));
    // QEMU holds the original inode, and not the file the path names now.
    let held = open_inodes(qemu.pid());
    assert!(held.contains(&original), "{held:?}");
    assert!(!held.contains(&inode(&other)), "{held:?}");
    // And reads the original's bytes through the guest's disk node.
    let data = read_through_qemu(hv, &format!("{name}-fmt"), &dir.join("copy.raw"), 1 << 20);
    assert!(data.iter().all(|&b| b == 0xaa), "QEMU read another file");
    // The removal closes the fd set: QEMU holds neither it nor the file any more.
    let sets = query(hv, "query-fdsets", None);
    assert_eq!(sets.as_array().unwrap().len(), 1, "{sets}");
    m.detach(id).unwrap();
    let sets = query(hv, "query-fdsets", None);
    assert_eq!(sets, json!([]), "the fd set is closed");
    assert!(!open_inodes(qemu.pid()).contains(&original));
}

#[test]
fn nvdimm_goes_in_and_detach_is_refused_clearly() {
    let qemu = BareQemu::builder()
        .args(["-machine", "nvdimm=on", "-m", "128M,slots=2,maxmem=1G"])
        .start();
    let file = qemu.dir().join("pmem.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let m = manager(&qemu);
    let id = new_disk(&m, &file, BlockDriver::Nvdimm, ImageFormat::Raw, false);
    m.attach(id).unwrap();
    let hv = m.hypervisor();
    let mem = query(hv, "query-memory-devices", None);
    assert_eq!(mem[0]["type"], "nvdimm", "{mem}");
    let err = m.detach(id).unwrap_err();
    assert!(
        matches!(
            err,
            DeviceError::Unplug {
                source: HypervisorError::NotRemovable { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(m.is_attached(id));
    assert!(peripherals(hv).contains(&qemu_name(id, DeviceRole::Disk)));
}

#[test]
fn vhost_user_is_refused_before_qemu_is_touched() {
    let qemu = BareQemu::builder().shared_memory(true).start();
    let m = manager(&qemu);
    let before = chardevs(m.hypervisor());
    // No socket at all.
    let missing = qemu.dir().join("missing.sock");
    let spec = vhost_user_spec(
        missing.to_str().unwrap(),
        VhostUserDevice::Blk {
            driver: BlockDriver::VirtioBlk,
        },
    );
    let id = m.new_device(spec).unwrap().id();
    let err = m.attach(id).unwrap_err();
    assert!(format!("{err:?}").contains("Missing"), "{err:?}");
    // A stale socket file nobody listens on.
    let stale = qemu.dir().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let spec = vhost_user_spec(stale.to_str().unwrap(), VhostUserDevice::Scsi);
    let id2 = m.new_device(spec).unwrap().id();
    assert!(format!("{:?}", m.attach(id2).unwrap_err()).contains("NotListening"));
    assert_eq!(chardevs(m.hypervisor()), before);
    assert_eq!(m.allocations().root_ports, []);

    // A live backend, but the VM's memory is private.
    let private = BareQemu::builder().start();
    let backend = BackendProcess::storage_daemon("8M").unwrap();
    let m = manager(&private);
    let spec = vhost_user_spec(
        backend.socket().to_str().unwrap(),
        VhostUserDevice::Blk {
            driver: BlockDriver::VirtioBlk,
        },
    );
    let id = m.new_device(spec).unwrap().id();
    let err = m.attach(id).unwrap_err();
    assert!(format!("{err:?}").contains("MemoryNotShared"), "{err:?}");
    assert_eq!(chardevs(m.hypervisor()), before);
}

#[test]
fn vhost_user_blk_against_qemu_storage_daemon() {
    let qemu = BareQemu::builder().shared_memory(true).start();
    let backend = BackendProcess::storage_daemon("8M").unwrap();
    let m = manager(&qemu);
    let spec = vhost_user_spec(
        backend.socket().to_str().unwrap(),
        VhostUserDevice::Blk {
            driver: BlockDriver::VirtioBlk,
        },
    );
    let id = m.new_device(spec).unwrap().id();
    m.attach(id).unwrap();
    let hv = m.hypervisor();
    let name = qemu_name(id, DeviceRole::VhostUserBlk);
    assert!(peripherals(hv).contains(&name));
    assert!(chardevs(hv).contains(&format!("{name}-chr")));
    detach_through_a_reset(&m, id, &name);
}

#[test]
fn vhost_user_fs_against_virtiofsd() {
    let qemu = BareQemu::builder().shared_memory(true).start();
    let backend = BackendProcess::virtiofsd().unwrap();
    let m = manager(&qemu);
    let spec = vhost_user_spec(
        backend.socket().to_str().unwrap(),
        VhostUserDevice::Fs {
            tag: "plugfs".into(),
            cache: plugboard_devices::FsCache::Never,
        },
    );
    let id = m.new_device(spec).unwrap().id();
    m.attach(id).unwrap();
    let hv = m.hypervisor();
    let name = qemu_name(id, DeviceRole::VhostUserFs);
    let tag = query(
        hv,
        "qom-get",
        Some(&json!({"path": format!("/machine/peripheral/{name}"), "property": "tag"})),
    );
    assert_eq!(tag, json!("plugfs"));
    detach_through_a_reset(&m, id, &name);
}

#[test]
fn vhost_user_net_with_its_mac_against_a_minimal_backend() {
    let qemu = BareQemu::builder().shared_memory(true).start();
    let backend = plugboard_qemu::fake_vhost_user::FakeVhostUserNet::start();
    let m = manager(&qemu);
    let mac: plugboard_devices::MacAddress = "52:54:00:12:34:56".parse().unwrap();
    let spec = vhost_user_spec(
        backend.socket().to_str().unwrap(),
        VhostUserDevice::Net { mac },
    );
    let id = m.new_device(spec).unwrap().id();
    if let Err(e) = m.attach(id) {
        let seen = backend.requests();
        panic!("{e:?}; the backend saw {:?}", &seen[..seen.len().min(40)]);
    }
    let hv = m.hypervisor();
    let name = qemu_name(id, DeviceRole::VhostUserNet);
    let path = format!("/machine/peripheral/{name}");
    assert_eq!(
        query(
            hv,
            "qom-get",
            Some(&json!({"path": path, "property": "mac"}))
        ),
        json!("52:54:00:12:34:56")
    );
    assert_eq!(
        query(
            hv,
            "qom-get",
            Some(&json!({"path": path, "property": "netdev"}))
        ),
        json!(format!("{name}-net"))
    );
    assert!(
        backend.requests().contains(&1),
        "QEMU asked the backend for its features"
    );
    detach_through_a_reset(&m, id, &name);
}

#[test]
fn a_duplicate_qemu_id_is_refused_and_the_first_device_is_left_alone() {
    let qemu = BareQemu::builder().start();
    let a = qemu.image("a.raw", "raw", "4M");
    let b = qemu.image("b.raw", "raw", "4M");
    let m = manager(&qemu);
    let id = new_disk(&m, &a, BlockDriver::VirtioBlk, ImageFormat::Raw, false);
    m.attach(id).unwrap();
    let hv = m.hypervisor();
    // Another request under the same QEMU names (what a crashed, reloaded manager might send).
    let DeviceKind::Block(spec) =
        disk_spec(&b, BlockDriver::VirtioBlk, ImageFormat::Raw, false).kind
    else {
        unreachable!()
    };
    let before = (nodes(hv), peripherals(hv));
    let request = plugboard_devices::PlugRequest {
        device: id,
        mode: PlugMode::Hot,
        plug: plugboard_devices::Plug::Block(plugboard_devices::BlockPlug {
            name_id: id.name_id("drive"),
            spec,
            index: plugboard_devices::BlockIndex::try_from(1).unwrap(),
            drive_name: None,
            scsi_address: None,
            port: Some(plugboard_devices::RootPort::new(1)),
        }),
    };
    let err = hv.hotplug_add(&request).unwrap_err();
    assert!(
        matches!(err, HypervisorError::AlreadyPlugged { .. }),
        "{err:?}"
    );
    assert_eq!((nodes(hv), peripherals(hv)), before, "nothing changed");
    assert!(m.is_attached(id));
}

#[test]
fn qemu_killed_mid_hotplug_rolls_the_manager_back() {
    let mut qemu = BareQemu::builder().start();
    let image = qemu.image("k.raw", "raw", "4M");
    let m = manager(&qemu);
    let id = new_disk(&m, &image, BlockDriver::VirtioBlk, ImageFormat::Raw, false);
    let pid = rustix::process::Pid::from_raw(i32::try_from(qemu.pid()).unwrap()).unwrap();
    // Freeze QEMU so the attach is surely in flight, then kill it.
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    let err = std::thread::scope(|s| {
        let attach = s.spawn(|| m.attach(id));
        std::thread::sleep(Duration::from_millis(300));
        qemu.kill();
        attach.join().unwrap()
    })
    .unwrap_err();
    let chain = format!("{err:?}");
    assert!(chain.contains("Disconnected"), "{chain}");
    assert!(
        chain.contains("blockdev-add"),
        "the first step was in flight: {chain}"
    );
    assert!(!m.is_attached(id));
    assert_eq!(m.allocations().root_ports, []);
    assert_eq!(m.allocations().block_indexes, []);
}

#[test]
fn a_full_port_pool_is_refused_before_qemu_is_touched() {
    let qemu = BareQemu::builder().ports(&["hp1"]).start();
    let a = qemu.image("a.raw", "raw", "4M");
    let b = qemu.image("b.raw", "raw", "4M");
    let m = manager(&qemu);
    assert_eq!(m.config().root_ports, 1);
    let ida = new_disk(&m, &a, BlockDriver::VirtioBlk, ImageFormat::Raw, false);
    m.attach(ida).unwrap();
    let before = nodes(m.hypervisor());
    let idb = new_disk(&m, &b, BlockDriver::VirtioBlk, ImageFormat::Raw, false);
    let err = m.attach(idb).unwrap_err();
    assert!(matches!(err, DeviceError::RootPort { .. }), "{err:?}");
    assert_eq!(nodes(m.hypervisor()), before);
    assert!(!m.is_attached(idb));
}

#[test]
fn vfio_pci_with_a_missing_host_function_is_a_clean_error_in_both_modes() {
    // Bus 0xfe does not exist here: QEMU fails on sysfs before it would open /dev/vfio.
    let qemu = BareQemu::builder().start();
    let m = manager(&qemu);
    for (group, cdev) in [(0xfe, false), (0xfd, true)] {
        let mut spec = plugboard_devices::test_util::vfio_spec(group, &[true]);
        if cdev && let DeviceKind::Vfio(v) = &mut spec.kind {
            v.backend = plugboard_devices::VfioBackend::Cdev { index: 0 };
        }
        let id = m.new_device(spec).unwrap().id();
        let err = m.attach(id).unwrap_err();
        let chain = format!("{err:?}");
        assert!(chain.contains("no such host device"), "{chain}");
        let objects = query(
            m.hypervisor(),
            "qom-list",
            Some(&json!({"path": "/objects"})),
        );
        assert!(
            !objects.to_string().contains("-iofd"),
            "iommufd object left behind: {objects}"
        );
    }
    assert_eq!(m.allocations().root_ports, []);
}

#[test]
fn coldplugged_devices_render_as_arguments_qemu_accepts() {
    let hv = QemuHypervisor::new(QemuConfig {
        root_ports: vec!["hp1".into(), "hp2".into(), "hp3".into()],
        scsi_controller: Some("scsi0".into()),
        ..config()
    });
    let dir = tempfile::tempdir().unwrap();
    let qcow = dir.path().join("c.qcow2");
    let raw = dir.path().join("c.raw");
    for (p, f) in [(&qcow, "qcow2"), (&raw, "raw")] {
        create_image(p, f, "8M").unwrap();
    }
    let m = DeviceManager::new(
        hv,
        ManagerConfig {
            root_ports: 3,
            name_offset: 0,
        },
    );
    let mut blk = disk_spec(&qcow, BlockDriver::VirtioBlk, ImageFormat::Qcow2, false);
    blk.mode = PlugMode::Cold;
    let mut scsi = disk_spec(&raw, BlockDriver::VirtioScsi, ImageFormat::Raw, true);
    scsi.mode = PlugMode::Cold;
    let blk = m.new_device(blk).unwrap().id();
    let scsi = m.new_device(scsi).unwrap().id();
    m.attach(blk).unwrap();
    m.attach(scsi).unwrap();
    let args = m.hypervisor().boot_args();
    assert_eq!(
        args.iter().filter(|a| *a == "-device").count(),
        2,
        "{args:?}"
    );
    let qemu = BareQemu::builder()
        .args(["-device", "virtio-scsi-pci,id=scsi0,bus=hp4"])
        .args(args)
        .start();
    m.hypervisor().attach(qemu.qmp_socket()).unwrap();
    let hv = m.hypervisor();
    let present = peripherals(hv);
    assert!(
        present.contains(&qemu_name(blk, DeviceRole::Disk))
            && present.contains(&qemu_name(scsi, DeviceRole::Disk)),
        "{present:?}"
    );
    assert!(nodes(hv).contains(&(format!("{}-fmt", qemu_name(scsi, DeviceRole::Disk)), true)));
    // A cold-plugged SCSI disk can be removed from the running VM like a hot-plugged one.
    m.detach(scsi).unwrap();
    assert!(!peripherals(hv).contains(&qemu_name(scsi, DeviceRole::Disk)));
}

#[test]
fn a_failed_device_add_rolls_back_nodes_and_chardevs_in_qemu() {
    let qemu = BareQemu::builder().shared_memory(true).start();
    let hv = QemuHypervisor::connect(qemu.qmp_socket(), config()).unwrap();
    let image = qemu.image("r.qcow2", "qcow2", "4M");
    let disk = plugboard_qemu::block::Disk::new(
        plugboard_qemu::block::DiskSource::File(image),
        plugboard_qemu::block::DiskFormat::Qcow2,
    );
    let (nodes_before, chardevs_before) = (nodes(&hv), chardevs(&hv));
    let plan = plugboard_qemu::block::virtio_blk(
        "rb0".parse().unwrap(),
        &disk,
        Some("no-such-port"),
        None,
    );
    let err = hv.plug(&plan).unwrap_err();
    let QemuError::Hotplug(plugboard_qemu::HotplugError::Step { step, rollback, .. }) = &err else {
        panic!("{err}")
    };
    assert_eq!(step, "device_add rb0");
    assert_eq!(rollback.undone, ["rb0-fmt", "rb0-file"]);
    assert_eq!(nodes(&hv), nodes_before);

    let backend = BackendProcess::storage_daemon("4M").unwrap();
    let dev = plugboard_qemu::vhost_user::VhostUser {
        socket: backend.socket().to_owned(),
        kind: plugboard_qemu::vhost_user::VhostUserKind::Blk { queues: Some(1) },
    };
    let plan =
        plugboard_qemu::vhost_user::vhost_user("rv0".parse().unwrap(), &dev, Some("no-such-port"));
    let err = hv.plug(&plan).unwrap_err();
    assert!(err.to_string().contains("rolled back"), "{err}");
    assert_eq!(chardevs(&hv), chardevs_before);
    assert!(peripherals(&hv).iter().all(|p| p != "rb0" && p != "rv0"));
}

#[test]
fn removal_of_something_already_gone_finishes_cleanly() {
    let qemu = BareQemu::builder().start();
    let hv = QemuHypervisor::connect(qemu.qmp_socket(), config()).unwrap();
    let image = qemu.image("g.raw", "raw", "4M");
    let disk = plugboard_qemu::block::Disk::new(
        plugboard_qemu::block::DiskSource::File(image),
        plugboard_qemu::block::DiskFormat::Raw,
    );
    let plan =
        plugboard_qemu::block::virtio_blk("gone0".parse().unwrap(), &disk, Some("hp1"), None);
    hv.plug(&plan).unwrap();
    let err = hv.unplug(&plan).unwrap_err();
    assert!(
        matches!(err, QemuError::Removal(RemovalError::GuestTimeout { .. })),
        "{err}"
    );
    query(&hv, "system_reset", None);
    hv.unplug(&plan).unwrap();
    // Again, with everything gone: device_del says DeviceNotFound, the nodes are missing.
    assert_eq!(
        hv.unplug(&plan).unwrap(),
        plugboard_qemu::Departure::AlreadyGone
    );
}

/// A stand-in for `vfio-pci` on a host where nothing may be opened for VFIO: each
/// function of the manager's VFIO request keeps the bus and slot plugboard-qemu gave it,
/// with an emulated NIC of the same kind in its place: function 0 `e1000e` (PCI Express),
/// function 1 `e1000` (conventional PCI), or for `broken_function_1`, something QEMU refuses
/// (a bus that does not exist).
fn emulated_functions(hv: QemuHypervisor, broken_function_1: bool) -> QemuHypervisor {
    hv.with_stand_in(move |plan| {
        let device = plan.device.as_object_mut().unwrap();
        if device.get("driver") != Some(&json!("vfio-pci")) {
            return;
        }
        let host = device.remove("host").unwrap();
        let function_1 = host.as_str().unwrap().ends_with(".1");
        let nic = if function_1 { "e1000" } else { "e1000e" };
        device.insert("driver".into(), json!(nic));
        if function_1 && broken_function_1 {
            device.insert("bus".into(), json!("no-such-port"));
        }
    })
}

/// Issue 17, item 2, against a real QEMU: a group with a conventional PCI function (a
/// GPU's audio function: 256-byte config space) used to get no root port for it, and
/// QEMU refuses a PCI hotplug without one (q35's root bus has no hotplug). Each function now
/// takes a port, and QEMU takes a conventional PCI endpoint on a root port.
#[test]
fn a_group_with_a_conventional_pci_function_is_hot_plugged_one_root_port_each() {
    let qemu = BareQemu::builder().start();
    // Through the real backend, the plan gets past the ports: what stops it is QEMU's
    // vfio-pci finding no such host function here (bus 0xfc), not a missing port.
    let m = manager(&qemu);
    let id = m
        .new_device(plugboard_devices::test_util::vfio_spec(
            0xfc,
            &[true, false],
        ))
        .unwrap()
        .id();
    let chain = format!("{:?}", m.attach(id).unwrap_err());
    assert!(!chain.contains("NoPort"), "{chain}");
    assert!(chain.contains("no such host device"), "{chain}");
    assert_eq!(m.allocations().root_ports, []);
    drop(m);

    // The same placement with emulated functions in place of vfio-pci.
    let hv = QemuHypervisor::connect(qemu.qmp_socket(), config()).unwrap();
    let m = manager_over(emulated_functions(hv, false));
    let id = m
        .new_device(plugboard_devices::test_util::vfio_spec(
            0xfb,
            &[true, false],
        ))
        .unwrap()
        .id();
    m.attach(id).unwrap();
    let hv = m.hypervisor();
    for (n, (port, nic)) in [("hp1", "e1000e"), ("hp2", "e1000")]
        .into_iter()
        .enumerate()
    {
        let name = qemu_name(id, DeviceRole::VfioFunction(u8::try_from(n).unwrap()));
        let path = format!("/machine/peripheral/{name}");
        let kind = query(
            hv,
            "qom-get",
            Some(&json!({"path": path, "property": "type"})),
        );
        assert_eq!(kind, json!(nic));
        let bus = query(
            hv,
            "qom-get",
            Some(&json!({"path": path, "property": "parent_bus"})),
        );
        assert_eq!(bus, json!(format!("/machine/peripheral/{port}/{port}")));
    }
    assert_eq!(m.allocations().root_ports.len(), 2);
    let paths = m.device(id).unwrap().guest.unwrap().pci_paths;
    assert_eq!(paths.len(), 2, "a guest PCI path for each function");
}

/// Issue 17, item 1, against a real QEMU: the second function of a group fails, and the
/// guest (none here) never acknowledges the `device_del` of the first. That used to be
/// booked as a clean rollback (ports free, "not attached") while QEMU still held function 0
/// on its port. Now the device is recorded as needing cleanup with its ports taken, and
/// the cleanup finishes once the VM lets go.
#[test]
fn a_rollback_the_guest_does_not_acknowledge_leaves_the_device_needing_cleanup() {
    let qemu = BareQemu::builder().start();
    let hv = QemuHypervisor::connect(qemu.qmp_socket(), config()).unwrap();
    let m = manager_over(emulated_functions(hv, true));
    let id = m
        .new_device(plugboard_devices::test_util::vfio_spec(
            0xfa,
            &[true, false],
        ))
        .unwrap()
        .id();
    let err = m.attach(id).unwrap_err();
    assert!(matches!(err, DeviceError::PlugIncomplete { .. }), "{err:?}");
    let chain = format!("{err:?}");
    assert!(chain.contains("RollbackIncomplete"), "{chain}");
    let function_0 = qemu_name(id, DeviceRole::VfioFunction(0));
    let hv = m.hypervisor();
    assert!(
        peripherals(hv).contains(&function_0),
        "QEMU still holds function 0"
    );
    assert!(!m.is_attached(id));
    let leftover = m.device(id).unwrap().needs_cleanup.unwrap();
    assert_eq!(
        m.allocations().root_ports,
        leftover.request.ports(),
        "the ports stay taken"
    );
    assert_eq!(m.allocations().root_ports.len(), 2);
    // While the guest still holds it, the cleanup fails and changes nothing.
    assert!(matches!(m.clean_up(id), Err(DeviceError::Cleanup { .. })));
    assert_eq!(m.needing_cleanup(), [id]);
    // A reset completes the pending unplug; the cleanup then finishes the job.
    query(hv, "system_reset", None);
    assert!(m.clean_up(id).unwrap());
    assert!(!peripherals(hv).contains(&function_0));
    assert_eq!(m.allocations().root_ports, []);
    assert_eq!(m.needing_cleanup(), []);
}

/// Issue 17, item 3, against a real QEMU: a device cold-plugged on the root bus (no root
/// port) cannot leave a running q35 VM, whose root bus has no hotplug. Its last detach used
/// to `device_del` it, fail, and leave it attached for good. Now (Kata's rule) the detach
/// only counts down: the device stays in the VM until it stops, its allocations taken, and
/// attaching it again only counts. Once the VM runs, its guest PCI path is read from QEMU.
#[test]
fn a_cold_plugged_device_on_the_root_bus_is_detached_by_count_and_gets_its_pci_path() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("cold.raw");
    create_image(&raw, "raw", "4M").unwrap();
    // No root ports configured: cold devices go on the root bus.
    let m = DeviceManager::new(
        QemuHypervisor::new(config()),
        ManagerConfig {
            root_ports: 0,
            name_offset: 0,
        },
    );
    let mut spec = disk_spec(&raw, BlockDriver::VirtioBlk, ImageFormat::Raw, false);
    spec.mode = PlugMode::Cold;
    let id = m.new_device(spec).unwrap().id();
    m.attach(id).unwrap();
    assert_eq!(m.device(id).unwrap().guest.unwrap().pci_paths, []);
    let qemu = BareQemu::builder().args(m.hypervisor().boot_args()).start();
    m.hypervisor().attach(qemu.qmp_socket()).unwrap();
    let hv = m.hypervisor();
    let name = qemu_name(id, DeviceRole::Disk);
    // The guest path is the device's own slot on the root bus, as QEMU placed it.
    m.refresh_guest_views().unwrap();
    let devfn = query(
        hv,
        "qom-get",
        Some(&json!({"path": format!("/machine/peripheral/{name}"), "property": "addr"})),
    );
    let slot = devfn.as_u64().unwrap() >> 3;
    let paths: Vec<String> = m
        .device(id)
        .unwrap()
        .guest
        .unwrap()
        .pci_paths
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(paths, [format!("{slot:02x}")]);

    assert_eq!(m.detach(id).unwrap(), plugboard_devices::Released::Last);
    assert!(peripherals(hv).contains(&name), "it stays in the VM");
    let state = m.device(id).unwrap();
    assert!(state.attachments.is_zero());
    assert!(state.resident, "booked as staying until the VM stops");
    assert_eq!(
        m.allocations().block_indexes.len(),
        1,
        "its index stays taken"
    );
    assert!(matches!(
        m.remove_device(id),
        Err(DeviceError::StaysInVm { .. })
    ));
    // Attaching it again only counts; QEMU is not asked.
    assert_eq!(m.attach(id).unwrap(), plugboard_devices::Acquired::Again);
    assert!(m.is_attached(id));
    assert!(!m.device(id).unwrap().resident);
}
