//! A VFIO node on the host, expanded to the functions that go to the guest.
//!
//! `/dev/vfio/<group>` (legacy) and `/dev/vfio/devices/vfioN` (iommufd cdev) both stand for
//! a whole IOMMU group: the kernel isolates the group as a unit, so every endpoint goes to
//! the guest. Host bridges (class `0x0600`) and PCI-PCI bridges (`0x0604`) stay behind;
//! "other" bridges (`0x0680`, e.g. NVSwitch) are endpoints and go. Members that are mediated
//! devices are named by UUID. Each PCI function is PCIe when its config space is larger than
//! 256 bytes, and has a large BAR when one is above 4 GiB.

use std::path::{Component, Path, PathBuf};

use plugboard_sysfs::{Sysfs, SysfsError};

use crate::kind::{HostFunction, MdevUuid, VfioBackend, VfioFunction, VfioSpec};

/// Why a VFIO node could not be expanded.
#[derive(Debug, thiserror::Error)]
pub enum VfioHostError {
    /// A path under `<dev>/vfio/` that is neither a group nor a cdev.
    #[error("{} is not /dev/vfio/<group> or /dev/vfio/devices/vfio<N>", path.display())]
    NotVfio {
        /// The path.
        path: PathBuf,
    },
    /// No PCI device has this cdev.
    #[error("no PCI device has the VFIO cdev vfio{index}")]
    NoCdevDevice {
        /// The `N` of `vfioN`.
        index: u32,
    },
    /// A device with a cdev but no IOMMU group.
    #[error("the device behind vfio{index} has no IOMMU group")]
    NoGroup {
        /// The `N` of `vfioN`.
        index: u32,
    },
    /// A group member that is neither a PCI address nor an mdev UUID (Kata's "Incorrect
    /// tokens found while parsing vfio details").
    #[error("IOMMU group {group} has a member {name:?} that is neither a PCI function nor an mdev")]
    UnknownMember {
        /// The group.
        group: u32,
        /// The member's name.
        name: String,
    },
    /// A group with bridges only.
    #[error("IOMMU group {group} has no endpoint to pass through")]
    NoEndpoints {
        /// The group.
        group: u32,
    },
    /// Reading sysfs failed.
    #[error("reading IOMMU group {group} failed")]
    Read {
        /// The group (or cdev index, before the group is known).
        group: u32,
        /// The error.
        #[source]
        source: SysfsError,
    },
}

/// Whether `path` is a VFIO device node under `dev_root` (Kata's `isVFIO`): under
/// `<dev>/vfio/` and not the container node `<dev>/vfio/vfio`.
#[must_use]
pub fn is_vfio_path(dev_root: &Path, path: &Path) -> bool {
    match path.strip_prefix(dev_root.join("vfio")) {
        Ok(rel) => !rel.as_os_str().is_empty() && !rel.starts_with("vfio"),
        Err(_) => false,
    }
}

/// The backend that `path` (under `dev_root`) names.
///
/// # Errors
/// [`VfioHostError::NotVfio`].
pub fn backend(dev_root: &Path, path: &Path) -> Result<VfioBackend, VfioHostError> {
    let not_vfio = || VfioHostError::NotVfio {
        path: path.to_path_buf(),
    };
    let rel = path
        .strip_prefix(dev_root.join("vfio"))
        .map_err(|_| not_vfio())?;
    let parts: Vec<&str> = rel
        .components()
        .map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect::<Option<_>>()
        .ok_or_else(not_vfio)?;
    let number = |s: &str| {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse::<u32>().ok()
        } else {
            None
        }
    };
    match parts.as_slice() {
        [group] => number(group).map(|group| VfioBackend::Group { group }),
        ["devices", cdev] => cdev
            .strip_prefix("vfio")
            .and_then(number)
            .map(|index| VfioBackend::Cdev { index }),
        _ => None,
    }
    .ok_or_else(not_vfio)
}

/// The VFIO device behind `path`: its backend and every endpoint of its IOMMU group.
///
/// # Errors
/// Any [`VfioHostError`].
#[cfg(test)]
pub fn spec(sysfs: &Sysfs, path: &Path) -> Result<VfioSpec, VfioHostError> {
    grouped_spec(sysfs, path).map(|(_, spec)| spec)
}

/// The IOMMU group behind `path` (a group node or a function's cdev) and the VFIO device
/// of that group.
///
/// # Errors
/// Any [`VfioHostError`].
pub fn grouped_spec(sysfs: &Sysfs, path: &Path) -> Result<(u32, VfioSpec), VfioHostError> {
    let backend = backend(sysfs.dev_root(), path)?;
    let group = iommu_group(sysfs, backend)?;
    let read = |source| VfioHostError::Read { group, source };
    let members = sysfs.iommu_group(group).map_err(read)?;
    let mut functions = Vec::new();
    for member in &members.members {
        if member.class.is_bridge() {
            tracing::debug!(group, address = %member.address, class = %member.class, "bridge stays on the host");
            continue;
        }
        let device = sysfs.pci_device(member.address).map_err(read)?;
        functions.push(VfioFunction {
            host: HostFunction::Pci(member.address),
            // The stable `bus/pci/devices/<bdf>` link, as Kata's `SysfsDev`.
            sysfs_path: sysfs.pci_devices_dir().join(member.address.to_string()),
            class: Some(member.class.code()),
            is_pcie: device.is_pcie().map_err(read)?,
            large_bar: device.has_large_bar().map_err(read)?,
        });
    }
    for name in &members.other_members {
        let uuid: MdevUuid = name.parse().map_err(|_| VfioHostError::UnknownMember {
            group,
            name: name.clone(),
        })?;
        let mdev = sysfs.mdev(uuid.as_str()).map_err(read)?;
        functions.push(VfioFunction {
            host: HostFunction::Mdev(uuid),
            sysfs_path: mdev.path,
            class: None,
            is_pcie: false,
            large_bar: false,
        });
    }
    if functions.is_empty() {
        return Err(VfioHostError::NoEndpoints { group });
    }
    Ok((group, VfioSpec { backend, functions }))
}

/// The IOMMU group a VFIO backend stands for: the group of `/dev/vfio/<group>`, or the
/// group of the PCI function whose cdev is `vfio<index>`. What a VFIO device's identity is
/// ([`crate::DeviceIdentity::IommuGroup`]), however it was named.
///
/// # Errors
/// [`VfioHostError::NoCdevDevice`], [`VfioHostError::NoGroup`], [`VfioHostError::Read`].
pub fn iommu_group(sysfs: &Sysfs, backend: VfioBackend) -> Result<u32, VfioHostError> {
    match backend {
        VfioBackend::Group { group } => Ok(group),
        VfioBackend::Cdev { index } => cdev_group(sysfs, index),
    }
}

/// The IOMMU group of the PCI device whose cdev is `vfio<index>`.
fn cdev_group(sysfs: &Sysfs, index: u32) -> Result<u32, VfioHostError> {
    let read = |source| VfioHostError::Read {
        group: index,
        source,
    };
    let name = format!("vfio{index}");
    for device in sysfs.pci_devices().map_err(read)? {
        if device.vfio_dev().map_err(read)?.as_deref() == Some(name.as_str()) {
            return device
                .iommu_group()
                .map_err(read)?
                .ok_or(VfioHostError::NoGroup { index });
        }
    }
    Err(VfioHostError::NoCdevDevice { index })
}

#[cfg(test)]
mod tests {
    use plugboard_sysfs::PciAddress;
    use plugboard_sysfs::fake::{FakeKernel, MdevSpec, PciSpec};

    use super::*;

    const GIB: u64 = 1 << 30;

    fn kernel() -> FakeKernel {
        FakeKernel::builder()
            // Group 5: a PCIe root port (0x0604), a GPU (PCIe, 16 GiB BAR), its audio
            // function (conventional PCI), and an NVSwitch-like 0x0680 bridge.
            .pci(PciSpec::bridge("0000:00:1c.0").iommu_group(5))
            .pci(
                PciSpec::new("0000:01:00.0", 0x10de, 0x2330)
                    .class(0x03_0200)
                    .config_size(4096)
                    .bar(0, 0x40_0000_0000, 16 * GIB)
                    .parent("0000:00:1c.0")
                    .iommu_group(5)
                    .unbound(),
            )
            .pci(
                PciSpec::new("0000:01:00.1", 0x10de, 0x22a3)
                    .class(0x04_0300)
                    .config_size(256)
                    .bar(0, 0xfe00_0000, 16 << 10)
                    .parent("0000:00:1c.0")
                    .iommu_group(5)
                    .unbound(),
            )
            .pci(
                PciSpec::new("0000:01:00.2", 0x10de, 0x22a4)
                    .class(0x06_8000)
                    .config_size(4096)
                    .parent("0000:00:1c.0")
                    .iommu_group(5)
                    .unbound(),
            )
            // Group 6: a host bridge alone.
            .pci(
                PciSpec::new("0000:00:00.0", 0x8086, 0x29c0)
                    .class(0x06_0000)
                    .iommu_group(6),
            )
            // Group 7: a NIC with a 4 GiB BAR (not above 4 GiB).
            .pci(
                PciSpec::new("0000:02:00.0", 0x8086, 0x10d3)
                    .class(0x02_0000)
                    .config_size(4096)
                    .bar(0, 0x1_0000_0000, 4 * GIB)
                    .iommu_group(7)
                    .driver("e1000e"),
            )
            // Group 9: an mdev on the NIC.
            .mdev(
                MdevSpec::new(
                    "c0ffee00-1111-2222-3333-444455556666",
                    "0000:02:00.0",
                    "i915-GVTg_V5_4",
                )
                .iommu_group(9),
            )
            .build()
            .unwrap()
    }

    fn addresses(spec: &VfioSpec) -> Vec<String> {
        spec.functions.iter().map(|f| f.host.to_string()).collect()
    }

    #[test]
    fn group_expands_to_endpoints_skipping_0600_and_0604_keeping_0680() {
        let k = kernel();
        let s = spec(&k.sysfs(), &k.dev_root().join("vfio/5")).unwrap();
        assert_eq!(s.backend, VfioBackend::Group { group: 5 });
        assert_eq!(
            addresses(&s),
            ["0000:01:00.0", "0000:01:00.1", "0000:01:00.2"]
        );
        let f: Vec<(bool, bool, Option<u32>)> = s
            .functions
            .iter()
            .map(|f| (f.is_pcie, f.large_bar, f.class))
            .collect();
        assert_eq!(
            f,
            [
                (true, true, Some(0x03_0200)),
                (false, false, Some(0x04_0300)),
                (true, false, Some(0x06_8000)),
            ]
        );
        assert!(
            s.functions[0]
                .sysfs_path
                .ends_with("bus/pci/devices/0000:01:00.0")
        );
    }

    #[test]
    fn bridges_only_is_an_error() {
        let k = kernel();
        let e = spec(&k.sysfs(), &k.dev_root().join("vfio/6")).unwrap_err();
        assert!(matches!(e, VfioHostError::NoEndpoints { group: 6 }));
    }

    #[test]
    fn four_gib_is_not_large() {
        let k = kernel();
        let s = spec(&k.sysfs(), &k.dev_root().join("vfio/7")).unwrap();
        assert_eq!(addresses(&s), ["0000:02:00.0"]);
        assert!(!s.functions[0].large_bar);
    }

    #[test]
    fn mdev_members_by_uuid() {
        let k = kernel();
        let s = spec(&k.sysfs(), &k.dev_root().join("vfio/9")).unwrap();
        assert_eq!(addresses(&s), ["mdev c0ffee00-1111-2222-3333-444455556666"]);
        assert!(
            s.functions[0]
                .sysfs_path
                .ends_with("bus/mdev/devices/c0ffee00-1111-2222-3333-444455556666")
        );
        assert_eq!(s.functions[0].class, None);
    }

    #[test]
    fn cdev_expands_its_group() {
        let k = kernel();
        let sysfs = k.sysfs();
        // Bind the NIC to vfio-pci in the fake kernel: its cdev appears.
        let nic = sysfs
            .pci_device("0000:02:00.0".parse::<PciAddress>().unwrap())
            .unwrap();
        nic.bind("vfio-pci").unwrap();
        let cdev = nic.vfio_cdev_path().unwrap().unwrap();
        let index: u32 = cdev.file_name().unwrap().to_str().unwrap()["vfio".len()..]
            .parse()
            .unwrap();
        let s = spec(&sysfs, &cdev).unwrap();
        assert_eq!(s.backend, VfioBackend::Cdev { index });
        assert_eq!(addresses(&s), ["0000:02:00.0"]);
        let e = spec(&sysfs, &k.dev_root().join("vfio/devices/vfio99")).unwrap_err();
        assert!(matches!(e, VfioHostError::NoCdevDevice { index: 99 }));
    }

    #[test]
    fn paths() {
        let dev = Path::new("/dev");
        assert!(is_vfio_path(dev, Path::new("/dev/vfio/12")));
        assert!(is_vfio_path(dev, Path::new("/dev/vfio/devices/vfio0")));
        assert!(!is_vfio_path(dev, Path::new("/dev/vfio/vfio")));
        assert!(!is_vfio_path(dev, Path::new("/dev/vfio/")));
        assert!(!is_vfio_path(dev, Path::new("/dev/sda")));
        assert_eq!(
            backend(dev, Path::new("/dev/vfio/12")).unwrap(),
            VfioBackend::Group { group: 12 }
        );
        assert_eq!(
            backend(dev, Path::new("/dev/vfio/devices/vfio3")).unwrap(),
            VfioBackend::Cdev { index: 3 }
        );
        for bad in [
            "/dev/vfio/x",
            "/dev/vfio/devices/vfiox",
            "/dev/vfio/devices/3",
            "/dev/vfio/1/2",
            "/dev/sda",
        ] {
            assert!(
                matches!(
                    backend(dev, Path::new(bad)),
                    Err(VfioHostError::NotVfio { .. })
                ),
                "{bad}"
            );
        }
    }
}
