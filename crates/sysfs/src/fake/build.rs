//! Lays out a [`FakeKernelBuilder`]'s table as a sysfs tree and a `/dev` tree.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::address::PciAddress;
use crate::devnode::DevKind;
use crate::pci::VFIO_PCI;
use crate::sysfs::Sysfs;

use super::semantics::{Driver, FakeWriter, State};
use super::spec::{MdevParent, MdevSpec, NodeSpec, PciSpec, ScsiSpec, UsbSpec};
use super::{FakeError, FakeKernel, FakeKernelBuilder, tree};

fn table(message: String) -> FakeError {
    FakeError::Table(message)
}

fn parse(address: &str) -> Result<PciAddress, FakeError> {
    address.parse().map_err(|e| table(format!("{e}")))
}

pub(crate) fn build(spec: &FakeKernelBuilder) -> Result<FakeKernel, FakeError> {
    let (dir, root) = match &spec.in_dir {
        Some(path) => (None, path.clone()),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("plugboard-fake-kernel-")
                .tempdir()
                .map_err(|e| FakeError::io(Path::new("<tempdir>"), e))?;
            let root = dir.path().to_owned();
            (Some(dir), root)
        }
    };
    let root = fs::canonicalize(&root).map_err(|e| FakeError::io(&root, e))?;
    let sys = root.join("sys");
    let dev = root.join("dev");
    for d in [
        "bus/pci/devices",
        "bus/pci/drivers",
        "bus/mdev/devices",
        "bus/usb/devices",
        "bus/scsi/devices",
        "kernel/iommu_groups",
        "dev/block",
        "dev/char",
        "class/block",
        "devices/virtual",
    ] {
        tree::mkdir(&sys.join(d))?;
    }
    tree::file(&sys.join("bus/pci/drivers_probe"), "")?;
    tree::file(&sys.join("bus/pci/rescan"), "")?;
    tree::mkdir(&dev)?;

    let mut state = State {
        sys: sys.clone(),
        dev: dev.clone(),
        drivers: BTreeMap::new(),
        cdev: spec.cdev,
        resets: BTreeMap::new(),
        writes: Vec::new(),
    };
    register_drivers(spec, &mut state)?;
    for name in state.drivers.keys() {
        let d = sys.join("bus/pci/drivers").join(name);
        for file in ["bind", "unbind", "new_id", "remove_id", "uevent"] {
            tree::file(&d.join(file), "")?;
        }
    }

    let mut dirs: BTreeMap<PciAddress, PathBuf> = BTreeMap::new();
    for pci in &spec.pci {
        let address = parse(&pci.address)?;
        if dirs.contains_key(&address) {
            return Err(table(format!("PCI device {address} is declared twice")));
        }
        let dir = pci_device(&sys, pci, address, &dirs)?;
        dirs.insert(address, dir);
    }
    sriov(&spec.pci, &dirs)?;
    // Boot-time binding, in table order.
    for pci in &spec.pci {
        let address = parse(&pci.address)?;
        let dir = dirs.get(&address).cloned().unwrap_or_default();
        let io = |e: std::io::Error| FakeError::io(&dir, e);
        match &pci.driver {
            Some(driver) => state.attach(address, &dir, driver).map_err(io)?,
            None if !pci.unbound => {
                let value = address.to_string();
                state
                    .apply(&sys.join("bus/pci/drivers_probe"), &value)
                    .map_err(io)?;
            }
            None => {}
        }
    }

    if spec.vfio_pci || !state.drivers.is_empty() {
        char_node(&sys, &dev, "vfio/vfio", "misc/vfio", 10, 196)?;
    }
    if spec.cdev {
        char_node(&sys, &dev, "iommu", "misc/iommu", 10, 123)?;
        tree::mkdir(&dev.join("vfio/devices"))?;
    }
    for mdev in &spec.mdevs {
        mdev_device(&sys, &mut state, mdev, &dirs)?;
    }
    for usb in &spec.usb {
        usb_device(&sys, &dev, usb)?;
    }
    for scsi in &spec.scsi {
        scsi_device(&sys, &dev, scsi)?;
    }
    for node in &spec.nodes {
        node_device(&sys, &dev, node)?;
    }

    let state = Arc::new(Mutex::new(state));
    let writer = Arc::new(FakeWriter {
        state: Arc::clone(&state),
    });
    let sysfs = Sysfs::with_parts(sys, dev, writer);
    Ok(FakeKernel {
        _dir: dir,
        root,
        state,
        sysfs,
    })
}

fn register_drivers(spec: &FakeKernelBuilder, state: &mut State) -> Result<(), FakeError> {
    if spec.vfio_pci {
        state.drivers.insert(
            VFIO_PCI.to_owned(),
            Driver {
                vfio: true,
                ..Driver::default()
            },
        );
    }
    for d in &spec.drivers {
        crate::error::check_name("driver", &d.name).map_err(|e| table(e.to_string()))?;
        let entry = state.drivers.entry(d.name.clone()).or_default();
        entry.ids.extend(d.ids.iter().copied());
        entry.vfio |= d.vfio_variant;
        for address in &d.fail_probe {
            entry.fail_probe.insert(parse(address)?);
        }
    }
    for pci in &spec.pci {
        if let Some(name) = &pci.driver {
            crate::error::check_name("driver", name).map_err(|e| table(e.to_string()))?;
            let entry = state.drivers.entry(name.clone()).or_default();
            if name != VFIO_PCI && !entry.vfio {
                entry.ids.insert((pci.vendor, pci.device));
            }
        }
    }
    Ok(())
}

fn pci_device(
    sys: &Path,
    pci: &PciSpec,
    address: PciAddress,
    dirs: &BTreeMap<PciAddress, PathBuf>,
) -> Result<PathBuf, FakeError> {
    let parent = match &pci.parent {
        Some(parent) => {
            let parent = parse(parent)?;
            dirs.get(&parent).cloned().ok_or_else(|| {
                table(format!(
                    "PCI device {address}: parent {parent} is not declared before it"
                ))
            })?
        }
        None => sys.join(format!(
            "devices/pci{:04x}:{:02x}",
            address.domain(),
            address.bus()
        )),
    };
    let dir = parent.join(address.to_string());
    tree::mkdir(&dir)?;
    let header = pci
        .header_type
        .unwrap_or(if pci.class >> 8 == 0x0604 { 1 } else { 0 });
    let attrs: [(&str, String); 11] = [
        ("vendor", format!("0x{:04x}\n", pci.vendor)),
        ("device", format!("0x{:04x}\n", pci.device)),
        ("subsystem_vendor", format!("0x{:04x}\n", pci.subsystem.0)),
        ("subsystem_device", format!("0x{:04x}\n", pci.subsystem.1)),
        ("class", format!("0x{:06x}\n", pci.class)),
        ("revision", format!("0x{:02x}\n", pci.revision)),
        (
            "driver_override",
            match &pci.driver_override {
                Some(name) => format!("{name}\n"),
                None => "(null)\n".to_owned(),
            },
        ),
        ("numa_node", format!("{}\n", pci.numa_node)),
        (
            "resource",
            pci.resource.clone().unwrap_or_else(|| {
                "0x0000000000000000 0x0000000000000000 0x0000000000000000\n".repeat(13)
            }),
        ),
        (
            "modalias",
            format!(
                "pci:v{:08X}d{:08X}sv{:08X}sd{:08X}bc{:02X}sc{:02X}i{:02X}\n",
                pci.vendor,
                pci.device,
                pci.subsystem.0,
                pci.subsystem.1,
                pci.class >> 16,
                (pci.class >> 8) & 0xff,
                pci.class & 0xff
            ),
        ),
        (
            "uevent",
            format!(
                "PCI_CLASS={:X}\nPCI_ID={:04X}:{:04X}\nPCI_SUBSYS_ID={:04X}:{:04X}\nPCI_SLOT_NAME={address}\n",
                pci.class, pci.vendor, pci.device, pci.subsystem.0, pci.subsystem.1
            ),
        ),
    ];
    for (name, value) in attrs {
        tree::file(&dir.join(name), value)?;
    }
    tree::file(&dir.join("enable"), "1\n")?;
    let head = tree::config_bytes(
        pci.vendor,
        pci.device,
        pci.class,
        pci.revision,
        header,
        pci.subsystem,
    );
    tree::config_file(&dir.join("config"), &head, pci.config_size)?;
    if let Some(methods) = &pci.reset_methods {
        tree::file(&dir.join("reset"), "")?;
        if !methods.is_empty() {
            tree::file(
                &dir.join("reset_method"),
                format!("{}\n", methods.join(" ")),
            )?;
        }
    }
    if let Some(total) = pci.sriov_totalvfs {
        tree::file(&dir.join("sriov_totalvfs"), format!("{total}\n"))?;
        tree::file(&dir.join("sriov_numvfs"), "0\n")?;
    }
    tree::link(&sys.join("bus/pci"), &dir.join("subsystem"))?;
    tree::link(&dir, &sys.join("bus/pci/devices").join(address.to_string()))?;
    if let Some(group) = pci.iommu_group {
        let group_dir = sys.join(format!("kernel/iommu_groups/{group}"));
        tree::file(&group_dir.join("type"), "DMA\n")?;
        tree::file(&group_dir.join("reserved_regions"), "")?;
        tree::link(&group_dir, &dir.join("iommu_group"))?;
        tree::link(&dir, &group_dir.join("devices").join(address.to_string()))?;
    }
    Ok(dir)
}

fn sriov(specs: &[PciSpec], dirs: &BTreeMap<PciAddress, PathBuf>) -> Result<(), FakeError> {
    let mut vfs: BTreeMap<PciAddress, Vec<PciAddress>> = BTreeMap::new();
    for pci in specs {
        if let Some(pf) = &pci.physfn {
            vfs.entry(parse(pf)?)
                .or_default()
                .push(parse(&pci.address)?);
        }
    }
    for (pf, list) in vfs {
        let pf_dir = dirs
            .get(&pf)
            .ok_or_else(|| table(format!("VF physfn {pf} is not declared")))?;
        for (index, vf) in list.iter().enumerate() {
            let vf_dir = dirs.get(vf).cloned().unwrap_or_default();
            tree::link(&vf_dir, &pf_dir.join(format!("virtfn{index}")))?;
            tree::link(pf_dir, &vf_dir.join("physfn"))?;
        }
        tree::file(&pf_dir.join("sriov_numvfs"), format!("{}\n", list.len()))?;
    }
    Ok(())
}

fn char_node(
    sys: &Path,
    dev: &Path,
    devname: &str,
    class_path: &str,
    major: u32,
    minor: u32,
) -> Result<(), FakeError> {
    let dir = sys.join("devices/virtual").join(class_path);
    tree::file(
        &dir.join("uevent"),
        format!("MAJOR={major}\nMINOR={minor}\nDEVNAME={devname}\n"),
    )?;
    tree::file(&dir.join("dev"), format!("{major}:{minor}\n"))?;
    tree::link(&dir, &sys.join(format!("dev/char/{major}:{minor}")))?;
    tree::file(&dev.join(devname), "")
}

fn mdev_device(
    sys: &Path,
    state: &mut State,
    mdev: &MdevSpec,
    dirs: &BTreeMap<PciAddress, PathBuf>,
) -> Result<(), FakeError> {
    crate::error::check_name("mdev", &mdev.uuid).map_err(|e| table(e.to_string()))?;
    crate::error::check_name("mdev type", &mdev.type_id).map_err(|e| table(e.to_string()))?;
    let parent_dir = match &mdev.parent {
        MdevParent::Pci(address) => {
            let parent = parse(address)?;
            dirs.get(&parent).cloned().ok_or_else(|| {
                table(format!(
                    "mdev {}: parent {parent} is not declared",
                    mdev.uuid
                ))
            })?
        }
        MdevParent::Virtual(path) => {
            if path.is_empty() || path.split('/').any(|p| p.is_empty() || p == "..") {
                return Err(table(format!(
                    "mdev {}: virtual parent {path:?} is not a relative path",
                    mdev.uuid
                )));
            }
            let dir = sys.join("devices/virtual").join(path);
            tree::mkdir(&dir)?;
            dir
        }
    };
    let type_dir = parent_dir.join("mdev_supported_types").join(&mdev.type_id);
    tree::file(&type_dir.join("name"), format!("{}\n", mdev.type_name))?;
    tree::file(
        &type_dir.join("device_api"),
        format!("{}\n", mdev.device_api),
    )?;
    tree::file(&type_dir.join("available_instances"), "1\n")?;
    tree::file(&type_dir.join("create"), "")?;
    let dir = parent_dir.join(&mdev.uuid);
    tree::file(&dir.join("remove"), "")?;
    tree::file(&dir.join("uevent"), format!("MDEV_TYPE={}\n", mdev.type_id))?;
    tree::link(&type_dir, &dir.join("mdev_type"))?;
    tree::link(&dir, &type_dir.join("devices").join(&mdev.uuid))?;
    tree::link(&dir, &sys.join("bus/mdev/devices").join(&mdev.uuid))?;
    if let Some(group) = mdev.iommu_group {
        let group_dir = sys.join(format!("kernel/iommu_groups/{group}"));
        tree::file(&group_dir.join("type"), "DMA\n")?;
        tree::link(&group_dir, &dir.join("iommu_group"))?;
        tree::link(&dir, &group_dir.join("devices").join(&mdev.uuid))?;
        state
            .vfio_nodes(&dir, Some(group))
            .map_err(|e| FakeError::io(&dir, e))?;
    }
    Ok(())
}

fn usb_device(sys: &Path, dev: &Path, usb: &UsbSpec) -> Result<(), FakeError> {
    crate::error::check_name("USB device", &usb.name).map_err(|e| table(e.to_string()))?;
    let dir = sys.join(format!(
        "devices/platform/dummy_hcd.0/usb{}/{}",
        usb.busnum, usb.name
    ));
    let devname = format!("bus/usb/{:03}/{:03}", usb.busnum, usb.devnum);
    let minor =
        u32::from(usb.busnum.saturating_sub(1)) * 128 + u32::from(usb.devnum.saturating_sub(1));
    let mut attrs = vec![
        ("busnum", format!("{}\n", usb.busnum)),
        ("devnum", format!("{}\n", usb.devnum)),
        ("idVendor", format!("{:04x}\n", usb.vendor)),
        ("idProduct", format!("{:04x}\n", usb.product_id)),
        ("dev", format!("189:{minor}\n")),
        (
            "uevent",
            format!(
                "MAJOR=189\nMINOR={minor}\nDEVNAME={devname}\nDEVTYPE=usb_device\nBUSNUM={:03}\nDEVNUM={:03}\n",
                usb.busnum, usb.devnum
            ),
        ),
    ];
    if let Some(product) = &usb.product {
        attrs.push(("product", format!("{product}\n")));
    }
    if let Some(manufacturer) = &usb.manufacturer {
        attrs.push(("manufacturer", format!("{manufacturer}\n")));
    }
    for (name, value) in attrs {
        tree::file(&dir.join(name), value)?;
    }
    tree::link(&dir, &sys.join("bus/usb/devices").join(&usb.name))?;
    tree::link(&dir, &sys.join(format!("dev/char/189:{minor}")))?;
    tree::file(&dev.join(devname), "")
}

fn scsi_device(sys: &Path, dev: &Path, scsi: &ScsiSpec) -> Result<(), FakeError> {
    let parts: Vec<&str> = scsi.hctl.split(':').collect();
    let [host, channel, target, _lun] = parts.as_slice() else {
        return Err(table(format!(
            "SCSI address {:?} is not H:C:T:L",
            scsi.hctl
        )));
    };
    if parts
        .iter()
        .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(table(format!(
            "SCSI address {:?} is not H:C:T:L",
            scsi.hctl
        )));
    }
    let dir = sys.join(format!(
        "devices/platform/host{host}/target{host}:{channel}:{target}/{}",
        scsi.hctl
    ));
    tree::file(&dir.join("vendor"), format!("{:<8}\n", scsi.vendor))?;
    tree::file(&dir.join("model"), format!("{:<16}\n", scsi.model))?;
    tree::file(&dir.join("type"), format!("{}\n", scsi.scsi_type))?;
    tree::file(&dir.join("uevent"), "DEVTYPE=scsi_device\n")?;
    tree::link(&dir, &sys.join("bus/scsi/devices").join(&scsi.hctl))?;
    if let Some((name, number)) = &scsi.block {
        crate::error::check_name("block device", name).map_err(|e| table(e.to_string()))?;
        let bdir = dir.join("block").join(name);
        class_node(sys, dev, &bdir, DevKind::Block, name, *number, None)?;
        tree::link(&bdir, &sys.join("class/block").join(name))?;
    }
    if let Some((name, number)) = &scsi.sg {
        crate::error::check_name("sg device", name).map_err(|e| table(e.to_string()))?;
        let sdir = dir.join("scsi_generic").join(name);
        class_node(sys, dev, &sdir, DevKind::Char, name, *number, None)?;
    }
    Ok(())
}

fn node_device(sys: &Path, dev: &Path, node: &NodeSpec) -> Result<(), FakeError> {
    let flat = node.name.replace('/', "!");
    crate::error::check_name("device", &flat).map_err(|e| table(e.to_string()))?;
    let dir = sys
        .join("devices/virtual")
        .join(node.kind.dir_name())
        .join(&flat);
    let uevent = if node.no_uevent {
        Some(None)
    } else {
        node.uevent.clone().map(Some)
    };
    class_node(sys, dev, &dir, node.kind, &node.name, node.number, uevent)?;
    if node.kind == DevKind::Block {
        tree::link(&dir, &sys.join("class/block").join(&flat))?;
        if let Some(file) = &node.loop_backing_file {
            tree::file(&dir.join("loop/backing_file"), format!("{file}\n"))?;
        }
    }
    Ok(())
}

/// A device directory with `dev` and `uevent`, its `dev/<kind>/M:m` link and its `/dev`
/// node. `uevent`: `None` generates it, `Some(None)` leaves it out, `Some(Some(t))` is `t`.
fn class_node(
    sys: &Path,
    dev: &Path,
    dir: &Path,
    kind: DevKind,
    devname: &str,
    number: crate::devnode::DevNumber,
    uevent: Option<Option<String>>,
) -> Result<(), FakeError> {
    let devtype = match kind {
        DevKind::Block => "DEVTYPE=disk\n",
        DevKind::Char => "",
    };
    let generated = format!(
        "MAJOR={}\nMINOR={}\nDEVNAME={devname}\n{devtype}",
        number.major, number.minor
    );
    tree::file(&dir.join("dev"), format!("{number}\n"))?;
    match uevent {
        None => tree::file(&dir.join("uevent"), generated)?,
        Some(Some(text)) => tree::file(&dir.join("uevent"), text)?,
        Some(None) => {}
    }
    tree::link(dir, &sys.join(format!("dev/{}/{number}", kind.dir_name())))?;
    let node = dev.join(devname);
    if !node.exists() && !devname.contains("..") {
        tree::file(&node, "")?;
    }
    Ok(())
}
