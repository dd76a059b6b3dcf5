//! Service tests against the fake kernel and the in-memory hypervisor: registration,
//! authorization, persistence across a restart, and reconciliation.

use plugboard_devices::DeviceId;
use plugboard_sysfs::fake::{FakeKernel, PciSpec};

use crate::backend::Endpoint;
use crate::error::ErrorClass;
use crate::{
    AttachRequest, Caller, DeviceQuery, HostConfig, HostService, HostdevRequest, NamesQuery,
    RegisterVm, Repair, Service, ServiceConfig,
};

struct Fixture {
    kernel: FakeKernel,
    state: tempfile::TempDir,
    config: ServiceConfig,
}

fn fixture() -> Fixture {
    fixture_over(
        FakeKernel::builder()
            .pci(e1000e("0000:02:00.0", 7))
            .build()
            .unwrap(),
    )
}

/// An e1000e NIC on its host driver, in IOMMU group `group`.
fn e1000e(address: &str, group: u32) -> PciSpec {
    PciSpec::new(address, 0x8086, 0x10d3)
        .class(0x02_0000)
        .iommu_group(group)
        .driver("e1000e")
}

/// A fixture over `kernel`.
fn fixture_over(kernel: FakeKernel) -> Fixture {
    let state = tempfile::tempdir().unwrap();
    let config = ServiceConfig {
        host: HostConfig {
            state_dir: state.path().join("state"),
            sysfs_root: kernel.sysfs_root(),
            dev_root: kernel.dev_root(),
            pci_ids: None,
        },
        unplug_timeout: plugboard_qemu::DEFAULT_UNPLUG_TIMEOUT,
        vfio_mode: plugboard_vfio::Mode::Auto,
    };
    Fixture {
        kernel,
        state,
        config,
    }
}

impl Fixture {
    /// The service over the fixture's fake kernel (whose writes get the kernel's
    /// semantics) and state.
    fn open(&self) -> (Service, crate::StartReport) {
        let host = HostService::with_sysfs(self.config.host.clone(), self.kernel.sysfs());
        Service::open_with(self.config.clone(), host).unwrap()
    }

    /// The fixture NIC's driver now.
    fn nic_driver(&self) -> Option<String> {
        self.kernel
            .sysfs()
            .pci_device(nic())
            .unwrap()
            .driver()
            .unwrap()
    }
}

/// The fixture's one PCI device, a NIC alone in IOMMU group 7.
fn nic() -> plugboard_sysfs::PciAddress {
    "0000:02:00.0".parse().unwrap()
}

/// Passing the fixture's NIC through, without its group.
fn nic_passthrough() -> AttachRequest {
    AttachRequest::Pci {
        address: nic(),
        whole_group: false,
    }
}

/// The service over the fixture with VM `a` registered by uid 1000.
fn service_with_vm_a(f: &Fixture) -> Service {
    let (svc, _) = f.open();
    svc.register_vm(Caller::new(1000), memory_vm("a")).unwrap();
    svc
}

fn memory_vm(name: &str) -> RegisterVm {
    RegisterVm {
        name: name.into(),
        endpoint: Endpoint::Memory,
        name_offset: 0,
    }
}

fn disk(f: &Fixture, name: &str) -> AttachRequest {
    let path = f.state.path().join(name);
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    AttachRequest::Disk {
        path,
        driver: None,
        format: plugboard_devices::ImageFormat::Raw,
        read_only: false,
    }
}

#[test]
fn register_attach_detach_unregister() {
    let f = fixture();
    let (svc, report) = f.open();
    assert_eq!(report.vms, 0);
    let info = svc.register_vm(Caller::new(1000), memory_vm("a")).unwrap();
    assert_eq!(info.record.owner_uid, 1000);
    assert!(info.connected);
    let err = svc
        .register_vm(Caller::new(1000), memory_vm("a"))
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Conflict);

    let req = disk(&f, "d0.img");
    let attached = svc.attach(Caller::ROOT, "a", &req).unwrap();
    assert!(attached.plugged);
    let again = svc.attach(Caller::ROOT, "a", &req).unwrap();
    assert!(!again.plugged, "a second attach only counts");
    assert_eq!(svc.devices("a").unwrap().devices.len(), 1);

    let err = svc.unregister_vm(Caller::ROOT, "a").unwrap_err();
    assert_eq!(err.class(), ErrorClass::Conflict);
    let id = attached.device.id;
    assert!(!svc.detach(Caller::ROOT, "a", id).unwrap().unplugged);
    assert!(svc.detach(Caller::ROOT, "a", id).unwrap().unplugged);
    assert!(svc.devices("a").unwrap().devices.is_empty());
    let err = svc.detach(Caller::ROOT, "a", id).unwrap_err();
    assert_eq!(err.class(), ErrorClass::NotFound);
    svc.unregister_vm(Caller::new(1000), "a").unwrap();
    assert!(svc.vms().vms.is_empty());
    assert_eq!(svc.devices("a").unwrap_err().class(), ErrorClass::NotFound);
}

#[test]
fn only_the_owner_or_root_changes_a_vm() {
    let f = fixture();
    let svc = service_with_vm_a(&f);
    let req = disk(&f, "d0.img");
    let err = svc.attach(Caller::new(1001), "a", &req).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Forbidden);
    assert!(err.to_string().contains("belongs to uid 1000"), "{err}");
    // The owner may not attach a file that is not theirs (it is root's here).
    let err = svc.attach(Caller::new(1000), "a", &req).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Forbidden);
    assert!(
        err.to_string().contains("the file belongs to uid 0"),
        "{err}"
    );
    let id = svc.attach(Caller::ROOT, "a", &req).unwrap().device.id;
    let err = svc.detach(Caller::new(1001), "a", id).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Forbidden);
    let err = svc.unregister_vm(Caller::new(1001), "a").unwrap_err();
    assert_eq!(err.class(), ErrorClass::Forbidden);
    // Host devices outside a VM: root only.
    let nic = nic();
    let err = svc
        .host()
        .hostdev_detach(Caller::new(1000), nic)
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Forbidden);
    let err = svc
        .host()
        .hostdev_reattach(Caller::new(1000), nic)
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Forbidden);
    // Preparing for another owner than the caller's own VMs: refused.
    let other = HostdevRequest {
        owner: "qemu/someone-else".into(),
        devices: vec!["0000:02:00.0".into()],
        managed: true,
        whole_group: false,
        shareable: false,
    };
    let err = svc
        .host()
        .hostdev_prepare(Caller::new(1000), &other, &svc)
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Forbidden);
    let mine = HostdevRequest {
        owner: "plugboard/a".into(),
        ..other.clone()
    };
    let err = svc
        .host()
        .hostdev_prepare(Caller::new(1001), &mine, &svc)
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Forbidden);
    // A managed prepare takes the device from its host driver: root's alone, even for the
    // caller's own VM (an unmanaged one is shown in
    // `an_owner_passes_through_what_root_detached_and_it_stays_detached`).
    let err = svc
        .host()
        .hostdev_prepare(Caller::new(1000), &mine, &svc)
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Forbidden);
    assert!(svc.host().hostdevs().unwrap().pci.is_empty());
    svc.host()
        .hostdev_prepare(Caller::ROOT, &mine, &svc)
        .unwrap();
    assert_eq!(svc.host().hostdevs().unwrap().pci.len(), 1);
    let inventory = svc.host().devices(&DeviceQuery::default()).unwrap();
    assert_eq!(inventory.devices[0].owner.as_deref(), Some("plugboard/a"));
    let released = svc
        .host()
        .hostdev_release(Caller::new(1000), &mine, &svc)
        .unwrap();
    assert_eq!(released.released.len(), 1);
    assert_eq!(
        released.released[0].result,
        plugboard_hostdev::ReleaseResult::Reattached,
        "{released:?}"
    );
}

#[test]
fn bad_hostdev_requests_are_bad_requests() {
    let f = fixture();
    let (svc, _) = f.open();
    let bad = |owner: &str, devices: &[&str]| {
        svc.host()
            .hostdev_prepare(
                Caller::ROOT,
                &HostdevRequest {
                    owner: owner.into(),
                    devices: devices.iter().map(|d| (*d).to_owned()).collect(),
                    managed: true,
                    whole_group: false,
                    shareable: false,
                },
                &svc,
            )
            .unwrap_err()
    };
    assert_eq!(
        bad("noslash", &["0000:02:00.0"]).class(),
        ErrorClass::BadRequest
    );
    assert_eq!(bad("a/b", &[]).class(), ErrorClass::BadRequest);
    assert_eq!(bad("a/b", &["zz:zz"]).class(), ErrorClass::BadRequest);
    assert_eq!(bad("a/b", &["0000:09:00.0"]).class(), ErrorClass::NotFound);
}

#[test]
fn state_survives_a_restart_and_is_reconciled() {
    let f = fixture();
    let (svc, _) = f.open();
    svc.register_vm(Caller::new(1000), memory_vm("a")).unwrap();
    svc.register_vm(Caller::new(1000), memory_vm("b")).unwrap();
    let a0 = svc.attach(Caller::ROOT, "a", &disk(&f, "a0.img")).unwrap();
    let saved = svc.store().devices("a").unwrap().unwrap();
    assert!(saved.contains("a0.img"), "{saved}");
    drop(svc);

    // A restart: the in-memory hypervisor comes back empty, so the attached disk is gone
    // from the "VM". Reconciliation must notice, drop it from the books, and save that.
    let (svc, report) = f.open();
    assert_eq!(report.vms, 2);
    assert_eq!(
        report.repairs,
        vec![Repair::Forgotten {
            vm: "a".into(),
            device: a0.device.id,
            what: format!(
                "block path {}",
                f.state
                    .path()
                    .join("a0.img")
                    .canonicalize()
                    .unwrap()
                    .display()
            ),
            host_pci: Vec::new(),
        }]
    );
    let vms = svc.vms().vms;
    assert_eq!(vms.len(), 2);
    assert!(
        vms.iter()
            .all(|v| v.connected && v.record.owner_uid == 1000)
    );
    assert!(svc.devices("a").unwrap().devices.is_empty());
    let saved = svc.store().devices("a").unwrap().unwrap();
    assert!(!saved.contains("a0.img"), "the repair is saved: {saved}");
    // The freed block index and port are reused.
    let again = svc.attach(Caller::ROOT, "a", &disk(&f, "a1.img")).unwrap();
    assert_eq!(
        again.device.plugged.as_ref().unwrap().block_index(),
        a0.device.plugged.as_ref().unwrap().block_index()
    );
    assert_ne!(again.device.id, DeviceId::from_raw(u64::MAX));
}

/// Issue 17, item 4: two functions of one IOMMU group attached one by one used to collide
/// after the second was prepared (taken onto vfio-pci and registered), and the failed
/// attach left it there. One group is one device: the second function is a clear answer
/// before anything is touched, and nothing is left bound.
#[test]
fn a_second_function_of_an_attached_group_is_a_clear_answer_and_nothing_is_left_bound() {
    let f = fixture_over(
        FakeKernel::builder()
            .pci(
                PciSpec::new("0000:03:00.0", 0x10de, 0x2330)
                    .class(0x03_0000)
                    .iommu_group(8)
                    .unbound(),
            )
            .pci(
                PciSpec::new("0000:03:00.1", 0x10de, 0x22a3)
                    .class(0x04_0300)
                    .iommu_group(8)
                    .unbound(),
            )
            .build()
            .unwrap(),
    );
    let svc = service_with_vm_a(&f);
    let function = |a: &str| AttachRequest::Pci {
        address: a.parse().unwrap(),
        whole_group: false,
    };
    let driver = |a: &str| {
        f.kernel
            .sysfs()
            .pci_device(a.parse::<plugboard_sysfs::PciAddress>().unwrap())
            .unwrap()
            .driver()
            .unwrap()
    };
    let first = svc
        .attach(Caller::ROOT, "a", &function("0000:03:00.0"))
        .unwrap();
    assert_eq!(
        first.device.spec.identity,
        plugboard_devices::DeviceIdentity::IommuGroup(8)
    );
    let err = svc
        .attach(Caller::ROOT, "a", &function("0000:03:00.1"))
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Conflict, "{}", err.chain());
    assert!(err.to_string().contains("IOMMU group 8"), "{err}");
    assert_eq!(driver("0000:03:00.1"), None, "nothing left bound");
    let held: Vec<String> = svc
        .host()
        .hostdevs()
        .unwrap()
        .pci
        .iter()
        .map(|d| d.address.to_string())
        .collect();
    assert_eq!(held, ["0000:03:00.0"], "nothing left registered");
    assert_eq!(svc.devices("a").unwrap().devices.len(), 1);
}

/// Issue 17, item 5 (Kata's case): a disk attached read-write and asked for again
/// read-only (a second container mounting the shared volume read-only) is the same device,
/// counted; the reverse, a writer for a disk plugged read-only, is a clear refusal.
#[test]
fn a_disk_shared_read_write_and_read_only_is_one_device() {
    let f = fixture();
    let (svc, _) = f.open();
    svc.register_vm(Caller::ROOT, memory_vm("a")).unwrap();
    let path = f.state.path().join("shared.img");
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    let disk = |read_only| AttachRequest::Disk {
        path: path.clone(),
        driver: None,
        format: plugboard_devices::ImageFormat::Raw,
        read_only,
    };
    let writer = svc.attach(Caller::ROOT, "a", &disk(false)).unwrap();
    let reader = svc.attach(Caller::ROOT, "a", &disk(true)).unwrap();
    assert!(!reader.plugged, "counted, not plugged again");
    assert_eq!(reader.device.id, writer.device.id);
    assert_eq!(reader.device.attachments.get(), 2);
    // Only the writer's file stays with QEMU; the reader's descriptor was closed.
    assert_eq!(memory_hypervisor(&svc, "a").fd_set_ids().len(), 1);

    let other = f.state.path().join("ro.img");
    std::fs::write(&other, vec![0u8; 4096]).unwrap();
    let ro = AttachRequest::Disk {
        path: other.clone(),
        driver: None,
        format: plugboard_devices::ImageFormat::Raw,
        read_only: true,
    };
    svc.attach(Caller::ROOT, "a", &ro).unwrap();
    let rw = AttachRequest::Disk {
        path: other,
        driver: None,
        format: plugboard_devices::ImageFormat::Raw,
        read_only: false,
    };
    let err = svc.attach(Caller::ROOT, "a", &rw).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Conflict, "{}", err.chain());
    assert!(err.chain().contains("plugged read-only"), "{}", err.chain());
}

/// Issue 17, item 9: identities are derived, never taken from a client: two spellings of
/// one file are one device, and a `Spec` request's own identity is replaced by what its
/// device names (a socket's canonical path, a VFIO device's IOMMU group).
#[test]
fn identities_are_derived_whatever_the_client_says() {
    let f = fixture();
    let (svc, _) = f.open();
    svc.register_vm(Caller::ROOT, memory_vm("a")).unwrap();
    let image = f.state.path().join("one.img");
    std::fs::write(&image, vec![0u8; 4096]).unwrap();
    let link = f.state.path().join("link.img");
    std::os::unix::fs::symlink(&image, &link).unwrap();
    let disk = |path: std::path::PathBuf| AttachRequest::Disk {
        path,
        driver: None,
        format: plugboard_devices::ImageFormat::Raw,
        read_only: false,
    };
    let first = svc.attach(Caller::ROOT, "a", &disk(image.clone())).unwrap();
    for spelling in [f.state.path().join(".").join("one.img"), link] {
        let again = svc.attach(Caller::ROOT, "a", &disk(spelling)).unwrap();
        assert_eq!(again.device.id, first.device.id);
        assert!(!again.plugged);
    }

    let made_up = plugboard_devices::DeviceIdentity::Path("/made/up".into());
    let socket = f.state.path().join("net.sock");
    std::fs::write(&socket, b"").unwrap();
    let mut vhost = plugboard_devices::test_util::vhost_user_spec(
        socket.join("..").join("net.sock").to_str().unwrap(),
        plugboard_devices::VhostUserDevice::Net {
            mac: plugboard_devices::MacAddress::from([2, 0, 0, 0, 0, 7]),
        },
    );
    vhost.identity = made_up.clone();
    // `socket/..` does not resolve (a file is no directory): refused, not taken as given.
    let err = svc
        .attach(
            Caller::ROOT,
            "a",
            &AttachRequest::Spec {
                spec: vhost.clone(),
            },
        )
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::BadRequest, "{}", err.chain());
    if let plugboard_devices::DeviceKind::VhostUser(v) = &mut vhost.kind {
        v.socket = f.state.path().join(".").join("net.sock");
    }
    let net = svc
        .attach(Caller::ROOT, "a", &AttachRequest::Spec { spec: vhost })
        .unwrap();
    assert_eq!(
        net.device.spec.identity,
        plugboard_devices::DeviceIdentity::Path(socket.canonicalize().unwrap())
    );
    let mut vfio = plugboard_devices::test_util::vfio_spec(7, &[true]);
    vfio.identity = made_up;
    let group = svc
        .attach(Caller::ROOT, "a", &AttachRequest::Spec { spec: vfio })
        .unwrap();
    assert_eq!(
        group.device.spec.identity,
        plugboard_devices::DeviceIdentity::IommuGroup(7)
    );
}

/// Issue 17, item 1: an attach whose plug failed and could not be undone is not "as
/// before": the device is in the books (and the saved state) as needing cleanup, and the
/// reconciliation at the next start cleans it up and drops it.
#[test]
fn a_plug_that_could_not_be_undone_is_saved_as_needing_cleanup_and_reconciled() {
    let f = fixture();
    let (svc, _) = f.open();
    svc.register_vm(Caller::ROOT, memory_vm("a")).unwrap();
    memory_hypervisor(&svc, "a").fail_next_incomplete();
    let err = svc
        .attach(Caller::ROOT, "a", &disk(&f, "left.img"))
        .unwrap_err();
    assert!(
        err.chain().contains("may still hold part of it"),
        "{}",
        err.chain()
    );
    let devices = svc.devices("a").unwrap().devices;
    assert_eq!(devices.len(), 1);
    let id = devices[0].id;
    assert!(devices[0].needs_cleanup.is_some());
    assert!(devices[0].attachments.is_zero());
    let saved = svc.store().devices("a").unwrap().unwrap();
    assert!(saved.contains("needs_cleanup"), "{saved}");
    drop(svc);

    let (svc, report) = f.open();
    assert_eq!(
        report.repairs,
        vec![Repair::CleanedUp {
            vm: "a".into(),
            device: id,
            host_pci: Vec::new(),
        }]
    );
    assert!(svc.devices("a").unwrap().devices.is_empty());
    let saved = svc.store().devices("a").unwrap().unwrap();
    assert!(
        !saved.contains("needs_cleanup"),
        "the repair is saved: {saved}"
    );
}

/// Issue 17, item 1: what a failed plug left is also cleaned up while the service runs,
/// before the VM's next attach or detach, and the same disk then attaches.
#[test]
fn a_plug_that_could_not_be_undone_is_cleaned_up_before_the_next_change() {
    let f = fixture();
    let (svc, _) = f.open();
    svc.register_vm(Caller::ROOT, memory_vm("a")).unwrap();
    let hv = memory_hypervisor(&svc, "a");
    hv.fail_next_incomplete();
    svc.attach(Caller::ROOT, "a", &disk(&f, "again.img"))
        .unwrap_err();
    assert_eq!(hv.plugged().len(), 1, "the VM still holds it");
    let attached = svc
        .attach(Caller::ROOT, "a", &disk(&f, "again.img"))
        .unwrap();
    assert!(attached.plugged);
    assert!(attached.device.needs_cleanup.is_none());
    assert_eq!(attached.device.references.get(), 1);
    assert_eq!(hv.plugged().len(), 1);
    let saved = svc.store().devices("a").unwrap().unwrap();
    assert!(!saved.contains("needs_cleanup"), "{saved}");
}

#[test]
fn metrics_count_vms_and_devices() {
    let f = fixture();
    let (svc, _) = f.open();
    svc.register_vm(Caller::ROOT, memory_vm("a")).unwrap();
    svc.attach(Caller::ROOT, "a", &disk(&f, "a0.img")).unwrap();
    svc.metrics().record(
        "POST /v1/vms/{name}/devices",
        201,
        None,
        std::time::Duration::from_millis(2),
    );
    let text = svc.render_metrics();
    assert!(
        text.contains("plugboard_vms{state=\"connected\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("plugboard_devices{state=\"attached\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("plugboard_hostdevs{list=\"active\"} 0\n"),
        "{text}"
    );
}

#[test]
fn host_reads_come_from_sysfs() {
    let f = fixture();
    let (svc, _) = f.open();
    let inv = svc.host().devices(&DeviceQuery::default()).unwrap();
    assert_eq!(inv.devices.len(), 1);
    let groups = svc.host().groups(NamesQuery::default()).unwrap().groups;
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].number, 7);
}

/// Every host query names devices from one read of pci.ids, shared by all of them, and
/// the file is read again only once it has changed.
#[test]
fn pci_ids_is_read_once_and_again_only_when_it_changes() {
    let mut f = fixture();
    let ids = f.state.path().join("pci.ids");
    std::fs::write(
        &ids,
        "8086  Intel Corporation\n\t10d3  82574L Gigabit Network Connection\nC 02  Network controller\n\t00  Ethernet controller\n",
    )
    .unwrap();
    f.config.host.pci_ids = Some(ids.clone());
    let (svc, _) = f.open();
    assert_eq!(svc.host().names_loads(), 0);
    for _ in 0..3 {
        let inv = svc.host().devices(&DeviceQuery::default()).unwrap();
        assert_eq!(
            inv.devices[0].names.vendor.as_deref(),
            Some("Intel Corporation")
        );
        let one = svc.host().device(nic(), NamesQuery::default()).unwrap();
        assert_eq!(
            one.device.names.device.as_deref(),
            Some("82574L Gigabit Network Connection")
        );
        svc.host().groups(NamesQuery::default()).unwrap();
    }
    assert_eq!(svc.host().names_loads(), 1);
    // Names off: not read at all.
    let plain = DeviceQuery {
        names: false,
        ..DeviceQuery::default()
    };
    assert_eq!(
        svc.host().devices(&plain).unwrap().devices[0].names.vendor,
        None
    );
    assert_eq!(svc.host().names_loads(), 1);

    std::fs::write(
        &ids,
        "8086  Intel Corp.\n\t10d3  82574L\nC 02  Network controller\n\t00  Ethernet controller\n",
    )
    .unwrap();
    let inv = svc.host().devices(&DeviceQuery::default()).unwrap();
    assert_eq!(inv.devices[0].names.vendor.as_deref(), Some("Intel Corp."));
    svc.host().devices(&DeviceQuery::default()).unwrap();
    assert_eq!(svc.host().names_loads(), 2);
}

#[test]
fn root_pci_passthrough_prepares_attaches_detaches_and_releases() {
    let f = fixture();
    let svc = service_with_vm_a(&f);
    let req = nic_passthrough();
    let err = svc.attach(Caller::new(1001), "a", &req).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Forbidden);
    assert_eq!(
        f.nic_driver().as_deref(),
        Some("e1000e"),
        "nothing touched on refusal"
    );
    let missing = AttachRequest::Pci {
        address: "0000:09:00.0".parse().unwrap(),
        whole_group: false,
    };
    let err = svc.attach(Caller::ROOT, "a", &missing).unwrap_err();
    assert_eq!(err.class(), ErrorClass::NotFound, "{}", err.chain());

    // The VM's owner may not take a device from its host driver; root may.
    let err = svc.attach(Caller::new(1000), "a", &req).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Forbidden, "{}", err.chain());
    assert!(err.to_string().contains("e1000e"), "{err}");
    assert_eq!(f.nic_driver().as_deref(), Some("e1000e"));
    let attached = svc.attach(Caller::ROOT, "a", &req).unwrap();
    assert!(attached.plugged);
    assert_eq!(f.nic_driver().as_deref(), Some("vfio-pci"));
    let plugboard_devices::DeviceKind::Vfio(spec) = &attached.device.spec.kind else {
        panic!("not a VFIO device");
    };
    // `auto` on a kernel with the cdev and iommufd: the device's own cdev.
    let cdev = f
        .kernel
        .sysfs()
        .pci_device(nic())
        .unwrap()
        .vfio_dev()
        .unwrap();
    assert_eq!(
        Some(spec.backend.to_string()),
        cdev.map(|name| format!("/dev/vfio/devices/{name}"))
    );
    assert!(matches!(
        spec.backend,
        plugboard_devices::VfioBackend::Cdev { .. }
    ));
    let listing = svc.host().hostdevs().unwrap();
    assert_eq!(listing.pci.len(), 1);
    assert_eq!(
        listing.pci[0].owner.as_ref().unwrap().to_string(),
        "plugboard/a"
    );
    let err = svc.attach(Caller::new(1000), "a", &req).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Conflict, "{}", err.chain());

    svc.detach(Caller::new(1000), "a", attached.device.id)
        .unwrap();
    assert_eq!(
        f.nic_driver().as_deref(),
        Some("e1000e"),
        "given back on detach"
    );
    assert!(svc.host().hostdevs().unwrap().pci.is_empty());

    // Attached, then lost by the VM across a restart: reconciliation releases it.
    svc.attach(Caller::ROOT, "a", &req).unwrap();
    drop(svc);
    let (svc, report) = f.open();
    assert!(
        matches!(&report.repairs[..], [Repair::Forgotten { host_pci, .. }] if host_pci == &vec![nic()]),
        "{:?}",
        report.repairs
    );
    assert_eq!(f.nic_driver().as_deref(), Some("e1000e"));
    assert!(svc.host().hostdevs().unwrap().pci.is_empty());
}

#[test]
fn an_owner_passes_through_what_root_detached_and_it_stays_detached() {
    let f = fixture();
    let nic = nic();
    let svc = service_with_vm_a(&f);
    let req = nic_passthrough();
    // A managed prepare through the hostdev route is root's too.
    let managed = HostdevRequest {
        owner: "plugboard/a".into(),
        devices: vec![nic.to_string()],
        managed: true,
        whole_group: false,
        shareable: false,
    };
    let err = svc
        .host()
        .hostdev_prepare(Caller::new(1000), &managed, &svc)
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Forbidden, "{}", err.chain());
    assert_eq!(f.nic_driver().as_deref(), Some("e1000e"));

    svc.host().hostdev_detach(Caller::ROOT, nic).unwrap();
    assert_eq!(f.nic_driver().as_deref(), Some("vfio-pci"));
    let attached = svc.attach(Caller::new(1000), "a", &req).unwrap();
    assert!(attached.plugged);
    svc.detach(Caller::new(1000), "a", attached.device.id)
        .unwrap();
    assert_eq!(
        f.nic_driver().as_deref(),
        Some("vfio-pci"),
        "an unmanaged device stays detached for root to give back"
    );
    let listing = svc.host().hostdevs().unwrap();
    assert_eq!(listing.pci.len(), 1);
    assert!(listing.pci[0].owner.is_none(), "{:?}", listing.pci[0]);
}

#[test]
fn a_vm_whose_hypervisor_is_gone_stays_listed_and_can_be_unregistered() {
    let f = fixture();
    let svc = service_with_vm_a(&f);
    svc.attach(Caller::ROOT, "a", &nic_passthrough()).unwrap();
    drop(svc);
    // The VM now points at a QEMU that is not there.
    let db = rusqlite::Connection::open(f.config.host.state_dir.join("hostdev.db")).unwrap();
    let record: String = db
        .query_row("SELECT record FROM service_vms WHERE name = 'a'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let mut record: serde_json::Value = serde_json::from_str(&record).unwrap();
    record["endpoint"] = serde_json::json!({"kind": "qemu", "qmp_socket": "/nonexistent/qmp.sock"});
    db.execute(
        "UPDATE service_vms SET record = ?1 WHERE name = 'a'",
        [record.to_string()],
    )
    .unwrap();
    drop(db);

    let (svc, report) = f.open();
    assert_eq!(report.disconnected.len(), 1);
    assert!(
        report.disconnected[0].1.contains("/nonexistent/qmp.sock"),
        "{:?}",
        report.disconnected
    );
    let info = svc.vm_info("a").unwrap();
    assert!(!info.connected);
    assert_eq!(info.devices, 1, "the saved devices are still listed");
    let err = svc
        .attach(Caller::new(1000), "a", &disk(&f, "x.img"))
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Conflict, "{}", err.chain());
    let err = svc.reconnect_vm(Caller::new(1000), "a").unwrap_err();
    assert_eq!(
        err.class(),
        ErrorClass::Conflict,
        "still not there: {}",
        err.chain()
    );
    assert_eq!(svc.vm_info("a").unwrap().devices, 1);
    assert_eq!(
        svc.unregister_vm(Caller::new(1001), "a")
            .unwrap_err()
            .class(),
        ErrorClass::Forbidden
    );
    svc.unregister_vm(Caller::new(1000), "a").unwrap();
    assert!(svc.vms().vms.is_empty());
    assert_eq!(
        f.nic_driver().as_deref(),
        Some("e1000e"),
        "its host device was given back"
    );
    assert!(svc.host().hostdevs().unwrap().pci.is_empty());
}

/// The in-memory hypervisor behind VM `name`.
fn memory_hypervisor(
    svc: &Service,
    name: &str,
) -> std::sync::Arc<plugboard_devices::test_util::InMemoryHypervisor> {
    let vm = svc.vm(name).unwrap();
    match vm.manager().unwrap().hypervisor() {
        crate::Backend::Memory(m) => std::sync::Arc::clone(m),
        crate::Backend::Qemu(_) => panic!("VM {name} is not in memory"),
    }
}

/// A disk image `name` in the fixture's state directory, owned by `uid`, holding `bytes`.
fn owned_image(f: &Fixture, name: &str, uid: u32, bytes: &[u8]) -> std::path::PathBuf {
    let path = f.state.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    std::os::unix::fs::chown(&path, Some(uid), None).unwrap();
    path
}

fn inode(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[test]
fn a_path_swapped_for_a_symlink_to_roots_file_before_the_plug_does_not_reach_the_vm() {
    use plugboard_devices::test_util::HypervisorOp;
    let f = fixture();
    let svc = service_with_vm_a(&f);
    let hv = memory_hypervisor(&svc, "a");
    let disk = owned_image(&f, "mine.img", 1000, b"the caller's");
    let checked = inode(&std::fs::metadata(&disk).unwrap());
    let roots = owned_image(&f, "roots.img", 0, b"root's secret");
    let request = AttachRequest::Disk {
        path: disk.clone(),
        driver: None,
        format: plugboard_devices::ImageFormat::Raw,
        read_only: false,
    };
    // The request is checked and its file opened; the plug waits, and meanwhile the path
    // becomes a symlink to root's file.
    hv.hold(HypervisorOp::HotplugAdd);
    let attached = std::thread::scope(|s| {
        let attach = s.spawn(|| svc.attach(Caller::new(1000), "a", &request));
        hv.wait_for_held_calls(1);
        std::fs::rename(&disk, f.state.path().join("mine.img.old")).unwrap();
        std::os::unix::fs::symlink(&roots, &disk).unwrap();
        hv.release(HypervisorOp::HotplugAdd);
        attach.join().unwrap()
    })
    .unwrap();
    // The VM got the file that was checked: the one in the fd set its disk opens.
    let plugged = attached.device.plugged.as_ref().unwrap();
    let plugboard_devices::Plug::Block(block) = &plugged.plug else {
        panic!("not a block plug: {plugged:?}")
    };
    let fd = block
        .spec
        .passed_fd
        .expect("the disk is passed by descriptor");
    let got = hv.fd_set_metadata(fd.fdset).unwrap();
    assert_eq!(inode(&got), checked);
    assert_ne!(inode(&got), inode(&std::fs::metadata(&roots).unwrap()));
    assert_eq!(hv.plugged()[&attached.device.id], *plugged);
    // The device's identity is the file opened, not what the path names now.
    assert_eq!(
        attached.device.spec.identity,
        plugboard_devices::DeviceIdentity::Path(f.state.path().join("mine.img"))
    );
    // Detaching closes the fd set.
    svc.detach(Caller::new(1000), "a", attached.device.id)
        .unwrap();
    assert!(hv.fd_set_ids().is_empty());
}

#[test]
fn a_symlink_of_the_callers_to_roots_file_is_refused_and_hands_nothing_over() {
    let f = fixture();
    let svc = service_with_vm_a(&f);
    let hv = memory_hypervisor(&svc, "a");
    let roots = owned_image(&f, "roots.img", 0, b"root's secret");
    let link = f.state.path().join("link.img");
    std::os::unix::fs::symlink(&roots, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(1000), None).unwrap();
    let request = AttachRequest::Disk {
        path: link,
        driver: None,
        format: plugboard_devices::ImageFormat::Raw,
        read_only: true,
    };
    let err = svc.attach(Caller::new(1000), "a", &request).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Forbidden);
    assert!(err.to_string().contains("belongs to uid 0"), "{err}");
    // The same through a spec.
    let spec = plugboard_devices::test_util::image_spec(
        request_path(&request),
        plugboard_devices::BlockDriver::VirtioBlk,
    );
    let err = svc
        .attach(Caller::new(1000), "a", &AttachRequest::Spec { spec })
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Forbidden);
    assert!(hv.fd_set_ids().is_empty());
    assert!(hv.plugged().is_empty());
}

fn request_path(request: &AttachRequest) -> &str {
    match request {
        AttachRequest::Disk { path, .. } => path.to_str().unwrap(),
        _ => unreachable!(),
    }
}

#[test]
fn fd_sets_stay_only_with_the_device_that_plugged_with_them() {
    use plugboard_devices::test_util::HypervisorOp;
    let f = fixture();
    let svc = service_with_vm_a(&f);
    let hv = memory_hypervisor(&svc, "a");
    let disk = owned_image(&f, "d.img", 1000, b"disk");
    let request = AttachRequest::Disk {
        path: disk.clone(),
        driver: None,
        format: plugboard_devices::ImageFormat::Raw,
        read_only: false,
    };
    // A failed plug closes the set it was handed.
    hv.fail_next(HypervisorOp::HotplugAdd);
    svc.attach(Caller::new(1000), "a", &request).unwrap_err();
    assert!(hv.fd_set_ids().is_empty());
    // A second attach of an attached disk only counts, and closes its own set.
    let first = svc.attach(Caller::new(1000), "a", &request).unwrap();
    assert_eq!(hv.fd_set_ids().len(), 1);
    let again = svc.attach(Caller::new(1000), "a", &request).unwrap();
    assert!(!again.plugged);
    assert_eq!(again.device.id, first.device.id);
    assert_eq!(
        again.device.plugged, first.device.plugged,
        "plugged as before"
    );
    assert_eq!(hv.fd_set_ids().len(), 1);
    // A spec may not name a descriptor itself.
    let mut spec = plugboard_devices::test_util::image_spec(
        disk.to_str().unwrap(),
        plugboard_devices::BlockDriver::VirtioScsi,
    );
    if let plugboard_devices::DeviceKind::Block(b) = &mut spec.kind {
        b.passed_fd = Some(plugboard_devices::PassedFd {
            fdset: hv.fd_set_ids()[0],
            file_type: plugboard_devices::PassedFileType::File,
        });
    }
    let err = svc
        .attach(Caller::new(1000), "a", &AttachRequest::Spec { spec })
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::BadRequest);
    assert!(err.to_string().contains("passed_fd"), "{err}");
    // Only root attaches an nvdimm, whose file QEMU opens by path.
    let nvdimm = AttachRequest::Disk {
        path: disk,
        driver: Some(plugboard_devices::BlockDriver::Nvdimm),
        format: plugboard_devices::ImageFormat::Raw,
        read_only: false,
    };
    let err = svc.attach(Caller::new(1000), "a", &nvdimm).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Forbidden);
    assert!(err.to_string().contains("nvdimm"), "{err}");
}

#[test]
fn passthrough_uses_the_vfio_interface_the_service_is_configured_for() {
    // Legacy asked for: the group, though the kernel offers the cdev.
    let mut f = fixture();
    f.config.vfio_mode = plugboard_vfio::Mode::Legacy;
    let svc = service_with_vm_a(&f);
    let attached = svc.attach(Caller::ROOT, "a", &nic_passthrough()).unwrap();
    let plugboard_devices::DeviceKind::Vfio(spec) = &attached.device.spec.kind else {
        panic!("not a VFIO device");
    };
    assert_eq!(
        spec.backend,
        plugboard_devices::VfioBackend::Group { group: 7 }
    );

    // iommufd asked for on a kernel without it: refused, naming the missing node, and the
    // device is given back.
    let mut f = fixture_over(
        FakeKernel::builder()
            .pci(e1000e("0000:02:00.0", 7))
            .legacy_vfio_only()
            .build()
            .unwrap(),
    );
    f.config.vfio_mode = plugboard_vfio::Mode::Iommufd;
    let svc = service_with_vm_a(&f);
    let err = svc
        .attach(Caller::ROOT, "a", &nic_passthrough())
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Conflict, "{}", err.chain());
    assert!(err.chain().contains("0000:02:00.0"), "{}", err.chain());
    assert!(err.chain().contains("iommu"), "{}", err.chain());
    assert_eq!(f.nic_driver().as_deref(), Some("e1000e"));
    assert!(svc.host().hostdevs().unwrap().pci.is_empty());

    // The same refusal for a whole group gives every function of it back.
    let mut g = fixture_over(
        FakeKernel::builder()
            .pci(e1000e("0000:03:00.0", 9))
            .pci(e1000e("0000:03:00.1", 9))
            .legacy_vfio_only()
            .build()
            .unwrap(),
    );
    g.config.vfio_mode = plugboard_vfio::Mode::Iommufd;
    let svc_g = service_with_vm_a(&g);
    let whole = AttachRequest::Pci {
        address: "0000:03:00.0".parse().unwrap(),
        whole_group: true,
    };
    let err = svc_g.attach(Caller::ROOT, "a", &whole).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Conflict, "{}", err.chain());
    for f in ["0000:03:00.0", "0000:03:00.1"] {
        let driver = g
            .kernel
            .sysfs()
            .pci_device(f.parse().unwrap())
            .unwrap()
            .driver()
            .unwrap();
        assert_eq!(driver.as_deref(), Some("e1000e"), "{f}");
    }
    assert!(svc_g.host().hostdevs().unwrap().pci.is_empty());

    // auto on that kernel: the legacy group.
    f.config.vfio_mode = plugboard_vfio::Mode::Auto;
    drop(svc);
    let (svc, _) = f.open();
    let attached = svc.attach(Caller::ROOT, "a", &nic_passthrough()).unwrap();
    let plugboard_devices::DeviceKind::Vfio(spec) = &attached.device.spec.kind else {
        panic!("not a VFIO device");
    };
    assert_eq!(
        spec.backend,
        plugboard_devices::VfioBackend::Group { group: 7 }
    );
}
