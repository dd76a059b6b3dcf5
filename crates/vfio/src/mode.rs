//! Which kernel interface to open a device through, chosen per device.
//!
//! A kernel may offer the legacy interface (`/dev/vfio/vfio` + `/dev/vfio/<group>`), the
//! device cdev with iommufd (`/dev/iommu` + `/dev/vfio/devices/vfioN`, shown in sysfs as the
//! device's `vfio-dev/vfioN`), or both. `auto` takes cdev + iommufd when both of its pieces
//! exist for this device and falls back to legacy otherwise, so hosts whose kernels lack
//! `CONFIG_VFIO_DEVICE_CDEV` keep working (kubevirt #18895 required the cdev and broke
//! them). Mediated devices use legacy (mdev with iommufd fd passing does not work: VEP 266).
//! An explicit mode the kernel lacks is an error that names the missing node.
//!
//! The decision is a pure function of a few facts ([`Facts`]) so that it is tested as a
//! table; [`select`] gathers the facts through plugboard-sysfs.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use plugboard_sysfs::{DriverKind, PciAddress, Sysfs, SysfsError};
use serde::{Deserialize, Serialize};

/// The mode asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// cdev + iommufd when the kernel and device offer it, else legacy.
    #[default]
    Auto,
    /// Container + group.
    Legacy,
    /// Device cdev + iommufd.
    Iommufd,
}

/// The interface a device was (or will be) opened through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interface {
    /// Container + group.
    Legacy,
    /// Device cdev + iommufd.
    Iommufd,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Legacy => "legacy",
            Self::Iommufd => "iommufd",
        })
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Legacy => "legacy",
            Self::Iommufd => "iommufd",
        })
    }
}

/// A mode string that is not `auto`, `legacy` or `iommufd`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a VFIO mode: expected auto, legacy or iommufd")]
pub struct ModeParseError(String);

impl FromStr for Mode {
    type Err = ModeParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "legacy" => Ok(Self::Legacy),
            "iommufd" => Ok(Self::Iommufd),
            other => Err(ModeParseError(other.to_owned())),
        }
    }
}

/// Why a device cannot be opened in the mode asked for.
#[derive(Debug, thiserror::Error)]
pub enum ModeError {
    /// The device is not on vfio-pci or a vfio variant driver.
    #[error("{device} is {}: bind it to vfio-pci first", bound_text(.driver.as_deref()))]
    NotVfio {
        /// The device.
        device: String,
        /// Its driver, if any.
        driver: Option<String>,
    },
    /// The device has no IOMMU group (the IOMMU is off or absent).
    #[error("{device} has no IOMMU group: is the IOMMU enabled (intel_iommu=on, amd_iommu=on)?")]
    NoIommuGroup {
        /// The device.
        device: String,
    },
    /// The kernel lacks the interface asked for.
    #[error("{device}: this kernel lacks the {interface} VFIO interface ({} does not exist)", missing.display())]
    KernelLacks {
        /// The device.
        device: String,
        /// The interface asked for.
        interface: Interface,
        /// The node or directory that is missing.
        missing: PathBuf,
    },
    /// A mediated device was asked to use iommufd.
    #[error("mediated device {device} works only with the legacy VFIO interface")]
    MdevNeedsLegacy {
        /// The mdev UUID.
        device: String,
    },
    /// Reading sysfs failed.
    #[error("{device}: cannot read its VFIO state from sysfs")]
    Sysfs {
        /// The device.
        device: String,
        /// What failed.
        #[source]
        source: SysfsError,
    },
}

fn bound_text(driver: Option<&str>) -> String {
    match driver {
        Some(driver) => format!("bound to {driver}, not to vfio-pci"),
        None => "not bound to any driver".into(),
    }
}

/// What the decision depends on, as sysfs and `/dev` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Facts {
    /// The device's driver and what it is to VFIO.
    pub(crate) driver: Option<String>,
    pub(crate) driver_kind: DriverKind,
    /// Its IOMMU group.
    pub(crate) group: Option<u32>,
    /// A mediated device (always legacy).
    pub(crate) mdev: bool,
    /// `<dev>/vfio/vfio` and whether it exists.
    pub(crate) container_node: (PathBuf, bool),
    /// `<dev>/iommu` and whether it exists.
    pub(crate) iommu_node: (PathBuf, bool),
    /// `<device>/vfio-dev` (where the cdev name would be), and the cdev node with whether
    /// it exists, when sysfs names one.
    pub(crate) vfio_dev_dir: PathBuf,
    pub(crate) cdev: Option<(PathBuf, bool)>,
}

/// Decides the interface for `device` from `facts`.
pub(crate) fn decide(device: &str, mode: Mode, facts: &Facts) -> Result<Interface, ModeError> {
    if !facts.mdev && !facts.driver_kind.is_vfio() {
        return Err(ModeError::NotVfio {
            device: device.to_owned(),
            driver: facts.driver.clone(),
        });
    }
    if facts.group.is_none() {
        return Err(ModeError::NoIommuGroup {
            device: device.to_owned(),
        });
    }
    let lacks = |interface, missing: &PathBuf| ModeError::KernelLacks {
        device: device.to_owned(),
        interface,
        missing: missing.clone(),
    };
    let legacy = || {
        let (path, exists) = &facts.container_node;
        if *exists {
            Ok(Interface::Legacy)
        } else {
            Err(lacks(Interface::Legacy, path))
        }
    };
    let iommufd = || {
        let (iommu, exists) = &facts.iommu_node;
        if !exists {
            return Err(lacks(Interface::Iommufd, iommu));
        }
        match &facts.cdev {
            None => Err(lacks(Interface::Iommufd, &facts.vfio_dev_dir)),
            Some((path, false)) => Err(lacks(Interface::Iommufd, path)),
            Some((_, true)) => Ok(Interface::Iommufd),
        }
    };
    match (mode, facts.mdev) {
        (Mode::Iommufd, true) => Err(ModeError::MdevNeedsLegacy {
            device: device.to_owned(),
        }),
        (_, true) | (Mode::Legacy, false) => legacy(),
        (Mode::Iommufd, false) => iommufd(),
        (Mode::Auto, false) => iommufd().or_else(|_| legacy()),
    }
}

/// How to open a device: the interface [`decide`] chose, with what opening through it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// Through group `group` in a container.
    Legacy { group: u32 },
    /// Through the cdev node `cdev`; `group` is checked for viability first.
    Iommufd { group: u32, cdev: PathBuf },
}

impl Route {
    /// The device's IOMMU group.
    pub(crate) fn group(&self) -> u32 {
        match self {
            Self::Legacy { group } | Self::Iommufd { group, .. } => *group,
        }
    }

    /// The interface.
    pub(crate) fn interface(&self) -> Interface {
        match self {
            Self::Legacy { .. } => Interface::Legacy,
            Self::Iommufd { .. } => Interface::Iommufd,
        }
    }
}

/// [`decide`], and the group and cdev node it checked, taken out of `facts`.
pub(crate) fn route(device: &str, mode: Mode, facts: Facts) -> Result<Route, ModeError> {
    let interface = decide(device, mode, &facts)?;
    // `decide` refuses a device without a group and picks iommufd only with a cdev node, so
    // these errors cannot happen; they keep this total.
    let group = facts.group.ok_or_else(|| ModeError::NoIommuGroup {
        device: device.to_owned(),
    })?;
    Ok(match interface {
        Interface::Legacy => Route::Legacy { group },
        Interface::Iommufd => Route::Iommufd {
            group,
            cdev: facts
                .cdev
                .map(|(path, _)| path)
                .ok_or_else(|| ModeError::KernelLacks {
                    device: device.to_owned(),
                    interface,
                    missing: facts.vfio_dev_dir,
                })?,
        },
    })
}

fn dev_node(sysfs: &Sysfs, relative: &str) -> (PathBuf, bool) {
    let path = sysfs.dev_path(relative);
    let exists = path.exists();
    (path, exists)
}

/// Gathers the facts for PCI device `address`.
pub(crate) fn pci_facts(sysfs: &Sysfs, address: PciAddress) -> Result<Facts, ModeError> {
    let sysfs_error = |source| ModeError::Sysfs {
        device: address.to_string(),
        source,
    };
    let device = sysfs.pci_device(address).map_err(sysfs_error)?;
    let cdev = device.vfio_cdev_path().map_err(sysfs_error)?.map(|path| {
        let exists = path.exists();
        (path, exists)
    });
    Ok(Facts {
        driver: device.driver().map_err(sysfs_error)?,
        driver_kind: device.driver_kind().map_err(sysfs_error)?,
        group: device.iommu_group().map_err(sysfs_error)?,
        mdev: false,
        container_node: dev_node(sysfs, "vfio/vfio"),
        iommu_node: dev_node(sysfs, "iommu"),
        vfio_dev_dir: device.attr_path("vfio-dev"),
        cdev,
    })
}

/// Gathers the facts for mediated device `uuid`.
pub(crate) fn mdev_facts(sysfs: &Sysfs, uuid: &str) -> Result<Facts, ModeError> {
    let mdev = sysfs.mdev(uuid).map_err(|source| ModeError::Sysfs {
        device: uuid.to_owned(),
        source,
    })?;
    Ok(Facts {
        driver: None,
        driver_kind: DriverKind::VfioPci,
        group: mdev.iommu_group,
        mdev: true,
        container_node: dev_node(sysfs, "vfio/vfio"),
        iommu_node: dev_node(sysfs, "iommu"),
        vfio_dev_dir: mdev.path.join("vfio-dev"),
        cdev: None,
    })
}

/// Chooses the interface for PCI device `address` under `mode`, reading sysfs and the
/// `/dev` root of `sysfs`.
pub fn select(sysfs: &Sysfs, address: PciAddress, mode: Mode) -> Result<Interface, ModeError> {
    decide(&address.to_string(), mode, &pci_facts(sysfs, address)?)
}

/// Chooses the interface for mediated device `uuid` (always legacy; iommufd is an error).
pub fn select_mdev(sysfs: &Sysfs, uuid: &str, mode: Mode) -> Result<Interface, ModeError> {
    decide(uuid, mode, &mdev_facts(sysfs, uuid)?)
}

#[cfg(test)]
mod tests {
    use plugboard_sysfs::fake::{FakeKernel, PciSpec};

    use super::*;

    fn facts() -> Facts {
        Facts {
            driver: Some("vfio-pci".into()),
            driver_kind: DriverKind::VfioPci,
            group: Some(7),
            mdev: false,
            container_node: ("/dev/vfio/vfio".into(), true),
            iommu_node: ("/dev/iommu".into(), true),
            vfio_dev_dir: "/sys/bus/pci/devices/0000:01:00.0/vfio-dev".into(),
            cdev: Some(("/dev/vfio/devices/vfio0".into(), true)),
        }
    }

    #[test]
    fn the_route_carries_the_group_and_the_cdev_node_decide_checked() {
        let cdev = PathBuf::from("/dev/vfio/devices/vfio0");
        assert_eq!(
            route("d", Mode::Auto, facts()).unwrap(),
            Route::Iommufd { group: 7, cdev }
        );
        let route = route("d", Mode::Legacy, facts()).unwrap();
        assert_eq!((route.interface(), route.group()), (Interface::Legacy, 7));
        let no_group = Facts {
            group: None,
            ..facts()
        };
        assert!(matches!(
            super::route("d", Mode::Auto, no_group),
            Err(ModeError::NoIommuGroup { .. })
        ));
    }

    #[test]
    fn the_decision_table() {
        let dev = "0000:01:00.0";
        let both = facts();
        let no_iommu = Facts {
            iommu_node: ("/dev/iommu".into(), false),
            ..facts()
        };
        let no_cdev = Facts {
            cdev: None,
            ..facts()
        };
        let cdev_node_missing = Facts {
            cdev: Some(("/dev/vfio/devices/vfio0".into(), false)),
            ..facts()
        };
        let no_container = Facts {
            container_node: ("/dev/vfio/vfio".into(), false),
            ..facts()
        };
        let mdev = Facts {
            mdev: true,
            cdev: None,
            ..facts()
        };
        use Interface::{Iommufd as I, Legacy as L};
        let ok = [
            (Mode::Auto, &both, I),
            (Mode::Auto, &no_iommu, L),
            (Mode::Auto, &no_cdev, L),
            (Mode::Auto, &cdev_node_missing, L),
            (Mode::Auto, &no_container, I),
            (Mode::Legacy, &both, L),
            (Mode::Legacy, &no_iommu, L),
            (Mode::Iommufd, &both, I),
            (Mode::Iommufd, &no_container, I),
            (Mode::Auto, &mdev, L),
            (Mode::Legacy, &mdev, L),
        ];
        for (mode, facts, want) in ok {
            assert_eq!(decide(dev, mode, facts).unwrap(), want, "{mode} {facts:?}");
        }
        let lacks = |mode, facts: &Facts| match decide(dev, mode, facts) {
            Err(ModeError::KernelLacks { missing, .. }) => missing,
            other => panic!("{mode}: {other:?}"),
        };
        assert_eq!(lacks(Mode::Iommufd, &no_iommu), PathBuf::from("/dev/iommu"));
        assert_eq!(lacks(Mode::Iommufd, &no_cdev), no_cdev.vfio_dev_dir);
        assert_eq!(
            lacks(Mode::Iommufd, &cdev_node_missing),
            PathBuf::from("/dev/vfio/devices/vfio0")
        );
        assert_eq!(
            lacks(Mode::Legacy, &no_container),
            PathBuf::from("/dev/vfio/vfio")
        );
        let neither = Facts {
            iommu_node: ("/dev/iommu".into(), false),
            ..no_container.clone()
        };
        assert_eq!(lacks(Mode::Auto, &neither), PathBuf::from("/dev/vfio/vfio"));
        assert!(matches!(
            decide(dev, Mode::Iommufd, &mdev),
            Err(ModeError::MdevNeedsLegacy { .. })
        ));
    }

    #[test]
    fn driver_and_group_come_first() {
        let host = Facts {
            driver: Some("e1000e".into()),
            driver_kind: DriverKind::Host,
            ..facts()
        };
        let err = decide("0000:01:00.0", Mode::Auto, &host).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0000:01:00.0 is bound to e1000e, not to vfio-pci: bind it to vfio-pci first"
        );
        let stub = Facts {
            driver: Some("pci-stub".into()),
            driver_kind: DriverKind::Stub,
            ..facts()
        };
        let err = decide("0000:01:00.1", Mode::Auto, &stub).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0000:01:00.1 is bound to pci-stub, not to vfio-pci: bind it to vfio-pci first"
        );
        let unbound = Facts {
            driver: None,
            driver_kind: DriverKind::Unbound,
            ..facts()
        };
        let err = decide("0000:01:00.0", Mode::Legacy, &unbound).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0000:01:00.0 is not bound to any driver: bind it to vfio-pci first"
        );
        let variant = Facts {
            driver: Some("mlx5_vfio_pci".into()),
            driver_kind: DriverKind::VfioVariant,
            ..facts()
        };
        assert_eq!(
            decide("x", Mode::Auto, &variant).unwrap(),
            Interface::Iommufd
        );
        let no_group = Facts {
            group: None,
            ..facts()
        };
        assert!(matches!(
            decide("x", Mode::Auto, &no_group),
            Err(ModeError::NoIommuGroup { .. })
        ));
    }

    #[test]
    fn mode_strings_round_trip() {
        for mode in [Mode::Auto, Mode::Legacy, Mode::Iommufd] {
            assert_eq!(mode.to_string().parse::<Mode>().unwrap(), mode);
        }
        assert_eq!(
            "cdev".parse::<Mode>().unwrap_err().to_string(),
            "'cdev' is not a VFIO mode: expected auto, legacy or iommufd"
        );
    }

    fn nic(address: &str, group: u32) -> PciSpec {
        PciSpec::new(address, 0x8086, 0x10d3)
            .class(0x020000)
            .iommu_group(group)
            .driver("e1000e")
    }

    #[test]
    fn on_the_fake_kernel_auto_follows_what_the_kernel_has() {
        let kernel = FakeKernel::builder()
            .pci(nic("0000:01:00.0", 7))
            .build()
            .unwrap();
        let sysfs = kernel.sysfs();
        let address: PciAddress = "01:00.0".parse().unwrap();
        let err = select(&sysfs, address, Mode::Auto).unwrap_err();
        assert!(
            matches!(err, ModeError::NotVfio { driver: Some(ref d), .. } if d == "e1000e"),
            "{err}"
        );
        sysfs.pci_device(address).unwrap().bind("vfio-pci").unwrap();
        assert_eq!(
            select(&sysfs, address, Mode::Auto).unwrap(),
            Interface::Iommufd
        );
        assert_eq!(
            select(&sysfs, address, Mode::Legacy).unwrap(),
            Interface::Legacy
        );

        let legacy_only = FakeKernel::builder()
            .pci(nic("0000:01:00.0", 7))
            .legacy_vfio_only()
            .build()
            .unwrap();
        let sysfs = legacy_only.sysfs();
        sysfs.pci_device(address).unwrap().bind("vfio-pci").unwrap();
        assert_eq!(
            select(&sysfs, address, Mode::Auto).unwrap(),
            Interface::Legacy
        );
        let err = select(&sysfs, address, Mode::Iommufd).unwrap_err();
        let expected = format!(
            "0000:01:00.0: this kernel lacks the iommufd VFIO interface ({}/iommu does not exist)",
            legacy_only.dev_root().display()
        );
        assert_eq!(err.to_string(), expected);
    }

    #[test]
    fn on_the_fake_kernel_a_missing_device_is_a_sysfs_error() {
        let kernel = FakeKernel::builder().build().unwrap();
        let err = select(&kernel.sysfs(), "02:00.0".parse().unwrap(), Mode::Auto).unwrap_err();
        assert!(matches!(err, ModeError::Sysfs { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "0000:02:00.0: cannot read its VFIO state from sysfs"
        );
    }
}
