//! The declarative table a fake kernel is built from: PCI functions, drivers and the other
//! device kinds, each a small builder with the kernel's defaults filled in.

use crate::devnode::{DevKind, DevNumber};

/// One PCI function of the fake kernel.
///
/// Defaults: class 0xff0000 (unassigned), revision 0, subsystem IDs 0, PCIe (4096-byte
/// config), header type from the class (bridges type 1), NUMA node -1, no BARs, `reset`
/// present with method `flr`, no IOMMU group, and bound at creation like the kernel does at
/// boot: to [`driver`](Self::driver) if named, else to the first driver whose ID table matches.
#[derive(Debug, Clone)]
pub struct PciSpec {
    pub(crate) address: String,
    pub(crate) vendor: u16,
    pub(crate) device: u16,
    pub(crate) subsystem: (u16, u16),
    pub(crate) class: u32,
    pub(crate) revision: u8,
    pub(crate) header_type: Option<u8>,
    pub(crate) config_size: usize,
    pub(crate) driver: Option<String>,
    pub(crate) unbound: bool,
    pub(crate) driver_override: Option<String>,
    pub(crate) iommu_group: Option<u32>,
    pub(crate) numa_node: i32,
    pub(crate) resource: Option<String>,
    pub(crate) parent: Option<String>,
    pub(crate) physfn: Option<String>,
    pub(crate) sriov_totalvfs: Option<u32>,
    pub(crate) reset_methods: Option<Vec<String>>,
}

impl PciSpec {
    /// A function at `address` (`DDDD:BB:SS.F` or `BB:SS.F`) with these IDs.
    pub fn new(address: &str, vendor: u16, device: u16) -> Self {
        Self {
            address: address.to_owned(),
            vendor,
            device,
            subsystem: (0, 0),
            class: 0xff_0000,
            revision: 0,
            header_type: None,
            config_size: 4096,
            driver: None,
            unbound: false,
            driver_override: None,
            iommu_group: None,
            numa_node: -1,
            resource: None,
            parent: None,
            physfn: None,
            sriov_totalvfs: None,
            reset_methods: Some(vec!["flr".to_owned()]),
        }
    }

    /// A PCIe-to-PCI (or root port) bridge: class 0x060400, header type 1, Intel IDs,
    /// bound to `pcieport`.
    pub fn bridge(address: &str) -> Self {
        Self::new(address, 0x8086, 0x244e)
            .class(0x06_0400)
            .driver("pcieport")
            .no_reset()
    }

    /// The 24-bit class code, e.g. `0x020000` (Ethernet).
    #[must_use]
    pub fn class(mut self, class: u32) -> Self {
        self.class = class;
        self
    }

    /// Subsystem vendor and device IDs.
    #[must_use]
    pub fn subsystem(mut self, vendor: u16, device: u16) -> Self {
        self.subsystem = (vendor, device);
        self
    }

    /// The revision.
    #[must_use]
    pub fn revision(mut self, revision: u8) -> Self {
        self.revision = revision;
        self
    }

    /// Config byte 0x0e (default: 1 for class 0x0604, else 0). Any value, to test errors.
    #[must_use]
    pub fn header_type(mut self, header_type: u8) -> Self {
        self.header_type = Some(header_type);
        self
    }

    /// The `config` file size: 256 (conventional PCI) or 4096 (PCIe, the default).
    #[must_use]
    pub fn config_size(mut self, size: usize) -> Self {
        self.config_size = size.max(64);
        self
    }

    /// Bound to `driver` at creation (the driver is registered with this device's IDs in
    /// its table, so a later `drivers_probe` binds it back, as on a real host).
    #[must_use]
    pub fn driver(mut self, driver: &str) -> Self {
        self.driver = Some(driver.to_owned());
        self.unbound = false;
        self
    }

    /// Left unbound at creation even if a driver's ID table matches.
    #[must_use]
    pub fn unbound(mut self) -> Self {
        self.driver = None;
        self.unbound = true;
        self
    }

    /// An initial `driver_override`.
    #[must_use]
    pub fn driver_override(mut self, driver: &str) -> Self {
        self.driver_override = Some(driver.to_owned());
        self
    }

    /// Member of IOMMU group `group`.
    #[must_use]
    pub fn iommu_group(mut self, group: u32) -> Self {
        self.iommu_group = Some(group);
        self
    }

    /// The NUMA node (default -1, "none").
    #[must_use]
    pub fn numa_node(mut self, node: i32) -> Self {
        self.numa_node = node;
        self
    }

    /// The raw `resource` text (lines of `0x<start> 0x<end> 0x<flags>`), verbatim, so
    /// malformed text can be tested too.
    #[must_use]
    pub fn resource(mut self, text: &str) -> Self {
        self.resource = Some(text.to_owned());
        self
    }

    /// A memory BAR: sets line `index` of `resource` (64-bit prefetchable when `size` is
    /// above 4 GiB, else 32-bit memory).
    #[must_use]
    pub fn bar(mut self, index: usize, start: u64, size: u64) -> Self {
        let mut lines: Vec<String> = self
            .resource
            .take()
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default();
        let zero = format!("0x{:016x} 0x{:016x} 0x{:016x}", 0, 0, 0);
        while lines.len() < 7.max(index + 1) {
            lines.push(zero.clone());
        }
        let flags: u64 = if size > (4 << 30) {
            0x0014_220c
        } else {
            0x0004_0200
        };
        let end = start.saturating_add(size.saturating_sub(1));
        if let Some(line) = lines.get_mut(index) {
            *line = format!("0x{start:016x} 0x{end:016x} 0x{flags:016x}");
        }
        let mut text = lines.join("\n");
        text.push('\n');
        self.resource = Some(text);
        self
    }

    /// Sits behind the bridge or port at `parent` (declare the parent first).
    #[must_use]
    pub fn parent(mut self, parent: &str) -> Self {
        self.parent = Some(parent.to_owned());
        self
    }

    /// An SR-IOV VF of the PF at `pf` (declare the PF first): adds `physfn` here and
    /// `virtfnN` on the PF.
    #[must_use]
    pub fn physfn(mut self, pf: &str) -> Self {
        self.physfn = Some(pf.to_owned());
        self
    }

    /// An SR-IOV PF with `sriov_totalvfs` (and `sriov_numvfs` counting its declared VFs).
    #[must_use]
    pub fn sriov_totalvfs(mut self, total: u32) -> Self {
        self.sriov_totalvfs = Some(total);
        self
    }

    /// The `reset_method` list (e.g. `["flr", "bus"]`); an empty list keeps `reset` but
    /// writes no `reset_method`.
    #[must_use]
    pub fn reset_methods(mut self, methods: &[&str]) -> Self {
        self.reset_methods = Some(methods.iter().map(|m| (*m).to_owned()).collect());
        self
    }

    /// No `reset` or `reset_method` attribute (the kernel knows no way to reset it).
    #[must_use]
    pub fn no_reset(mut self) -> Self {
        self.reset_methods = None;
        self
    }
}

/// A PCI driver of the fake kernel and its behaviour.
#[derive(Debug, Clone)]
pub struct DriverSpec {
    pub(crate) name: String,
    pub(crate) ids: Vec<(u16, u16)>,
    pub(crate) vfio_variant: bool,
    pub(crate) fail_probe: Vec<String>,
}

impl DriverSpec {
    /// A driver named `name` with an empty ID table (reachable only through
    /// `driver_override`, like `vfio-pci`).
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ids: Vec::new(),
            vfio_variant: false,
            fail_probe: Vec::new(),
        }
    }

    /// Adds `vendor:device` to the ID table.
    #[must_use]
    pub fn id(mut self, vendor: u16, device: u16) -> Self {
        self.ids.push((vendor, device));
        self
    }

    /// A vfio variant driver (like `mlx5_vfio_pci`): binding creates `vfio-dev/` and the
    /// group and cdev nodes, as for `vfio-pci`.
    #[must_use]
    pub fn vfio_variant(mut self) -> Self {
        self.vfio_variant = true;
        self
    }

    /// This driver's probe fails for the device at `address`: `drivers_probe` still
    /// succeeds but leaves it unbound, and `bind` fails with ENODEV.
    #[must_use]
    pub fn fail_probe(mut self, address: &str) -> Self {
        self.fail_probe.push(address.to_owned());
        self
    }
}

/// Where an mdev's parent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MdevParent {
    /// A declared PCI function (a vGPU's card).
    Pci(String),
    /// A virtual device, `devices/virtual/<path>` (the kernel's `mtty` sample:
    /// `mtty/mtty`).
    Virtual(String),
}

/// A mediated device (`bus/mdev/devices/<uuid>`) on a PCI parent or a virtual one.
///
/// With an IOMMU group (a real mdev bound to its vendor driver always has one: VFIO gives
/// it an emulated group) the mdev gets what its VFIO registration creates on a real
/// kernel: `/dev/vfio/<group>` and, with cdev support, `vfio-dev/vfioN` and
/// `/dev/vfio/devices/vfioN`, there from the moment the mdev exists (seen in the lab with
/// `mtty`).
#[derive(Debug, Clone)]
pub struct MdevSpec {
    pub(crate) uuid: String,
    pub(crate) parent: MdevParent,
    pub(crate) type_id: String,
    pub(crate) type_name: String,
    pub(crate) device_api: String,
    pub(crate) iommu_group: Option<u32>,
}

impl MdevSpec {
    /// An mdev `uuid` of type `type_id` (e.g. `nvidia-63`) on the PCI device `parent`,
    /// with device API `vfio-pci`.
    pub fn new(uuid: &str, parent: &str, type_id: &str) -> Self {
        Self {
            uuid: uuid.to_owned(),
            parent: MdevParent::Pci(parent.to_owned()),
            type_id: type_id.to_owned(),
            type_name: type_id.to_owned(),
            device_api: "vfio-pci".to_owned(),
            iommu_group: None,
        }
    }

    /// An mdev on a virtual parent at `devices/virtual/<path>`, as the kernel's `mtty`
    /// sample is (`path` `mtty/mtty`, types `mtty-1` and `mtty-2`): [`Mdev::parent`] reads
    /// `None` for it.
    ///
    /// [`Mdev::parent`]: crate::Mdev::parent
    pub fn on_virtual_parent(uuid: &str, path: &str, type_id: &str) -> Self {
        Self {
            parent: MdevParent::Virtual(path.to_owned()),
            ..Self::new(uuid, "", type_id)
        }
    }

    /// The type's human name (`mdev_supported_types/<type>/name`).
    #[must_use]
    pub fn type_name(mut self, name: &str) -> Self {
        self.type_name = name.to_owned();
        self
    }

    /// The device API (`vfio-pci`, `vfio-ccw`, `vfio-ap`).
    #[must_use]
    pub fn device_api(mut self, api: &str) -> Self {
        self.device_api = api.to_owned();
        self
    }

    /// The mdev's own IOMMU group.
    #[must_use]
    pub fn iommu_group(mut self, group: u32) -> Self {
        self.iommu_group = Some(group);
        self
    }
}

/// A USB device (`bus/usb/devices/<name>`), with its char node `bus/usb/BBB/DDD`.
#[derive(Debug, Clone)]
pub struct UsbSpec {
    pub(crate) name: String,
    pub(crate) busnum: u16,
    pub(crate) devnum: u16,
    pub(crate) vendor: u16,
    pub(crate) product_id: u16,
    pub(crate) product: Option<String>,
    pub(crate) manufacturer: Option<String>,
}

impl UsbSpec {
    /// A device named like the kernel names it (`1-2`, `2-1.4`) on bus `busnum`, number
    /// `devnum`, with `idVendor:idProduct`.
    pub fn new(name: &str, busnum: u16, devnum: u16, vendor: u16, product_id: u16) -> Self {
        Self {
            name: name.to_owned(),
            busnum,
            devnum,
            vendor,
            product_id,
            product: None,
            manufacturer: None,
        }
    }

    /// The `product` string.
    #[must_use]
    pub fn product(mut self, product: &str) -> Self {
        self.product = Some(product.to_owned());
        self
    }

    /// The `manufacturer` string.
    #[must_use]
    pub fn manufacturer(mut self, manufacturer: &str) -> Self {
        self.manufacturer = Some(manufacturer.to_owned());
        self
    }
}

/// A SCSI device (`bus/scsi/devices/H:C:T:L`) with optional block and sg nodes.
#[derive(Debug, Clone)]
pub struct ScsiSpec {
    pub(crate) hctl: String,
    pub(crate) vendor: String,
    pub(crate) model: String,
    pub(crate) scsi_type: u8,
    pub(crate) block: Option<(String, DevNumber)>,
    pub(crate) sg: Option<(String, DevNumber)>,
}

impl ScsiSpec {
    /// A disk (type 0) at `H:C:T:L`, vendor `QEMU`, model `QEMU HARDDISK`.
    pub fn new(hctl: &str) -> Self {
        Self {
            hctl: hctl.to_owned(),
            vendor: "QEMU".to_owned(),
            model: "QEMU HARDDISK".to_owned(),
            scsi_type: 0,
            block: None,
            sg: None,
        }
    }

    /// Vendor and model strings.
    #[must_use]
    pub fn ident(mut self, vendor: &str, model: &str) -> Self {
        self.vendor = vendor.to_owned();
        self.model = model.to_owned();
        self
    }

    /// The SCSI peripheral type (0 disk, 5 CD-ROM…).
    #[must_use]
    pub fn scsi_type(mut self, scsi_type: u8) -> Self {
        self.scsi_type = scsi_type;
        self
    }

    /// Its block node, e.g. `("sda", 8, 0)`.
    #[must_use]
    pub fn block(mut self, name: &str, major: u32, minor: u32) -> Self {
        self.block = Some((name.to_owned(), DevNumber { major, minor }));
        self
    }

    /// Its SCSI generic node, e.g. `("sg0", 21, 0)`.
    #[must_use]
    pub fn sg(mut self, name: &str, major: u32, minor: u32) -> Self {
        self.sg = Some((name.to_owned(), DevNumber { major, minor }));
        self
    }
}

/// A block or char device under `devices/virtual`, reachable through `dev/<kind>/M:m`.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub(crate) kind: DevKind,
    pub(crate) name: String,
    pub(crate) number: DevNumber,
    pub(crate) uevent: Option<String>,
    pub(crate) no_uevent: bool,
    pub(crate) loop_backing_file: Option<String>,
}

impl NodeSpec {
    /// A block device `name` (its `DEVNAME`, e.g. `loop0` or `mapper/x`… as `/dev` shows it).
    pub fn block(name: &str, major: u32, minor: u32) -> Self {
        Self::new(DevKind::Block, name, major, minor)
    }

    /// A char device `name` (its `DEVNAME`, e.g. `vhost-net`, `net/tun`).
    pub fn char(name: &str, major: u32, minor: u32) -> Self {
        Self::new(DevKind::Char, name, major, minor)
    }

    fn new(kind: DevKind, name: &str, major: u32, minor: u32) -> Self {
        Self {
            kind,
            name: name.to_owned(),
            number: DevNumber { major, minor },
            uevent: None,
            no_uevent: false,
            loop_backing_file: None,
        }
    }

    /// No `uevent` file at all (a broken or partial tree).
    #[must_use]
    pub fn no_uevent(mut self) -> Self {
        self.no_uevent = true;
        self
    }

    /// Replaces the generated `uevent` text (e.g. to test a malformed one). `Some("")`
    /// gives an empty file.
    #[must_use]
    pub fn uevent(mut self, text: &str) -> Self {
        self.uevent = Some(text.to_owned());
        self
    }

    /// A loop device backed by `file` (`loop/backing_file`).
    #[must_use]
    pub fn loop_backing_file(mut self, file: &str) -> Self {
        self.loop_backing_file = Some(file.to_owned());
        self
    }
}
