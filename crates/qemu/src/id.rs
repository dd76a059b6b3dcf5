//! QEMU identifiers, and the one place where the names we give QEMU's objects are made and
//! recognised.
//!
//! QEMU accepts ids made of letters, digits, `-`, `.` and `_`, starting with a letter, and
//! block node names are cut at 31 bytes. A device the manager plugs is named from what it is
//! and its manager id: `<role>-<16 hex digits>` ([`DeviceRole`]: `drive-`, `blk-`, `scsi-`,
//! `net-`, `fs-`, `vfio-<n>-`). Every backend it needs is named from the device's id plus a
//! fixed suffix ([`BackendRole`]: `<id>-file`, `<id>-fmt`, `<id>-chr`, …), so a later removal
//! (or a retry after a crash) can find them again from the id alone, with no state of our
//! own. [`OurName::parse`] reads any of these names back, which is how objects of ours that
//! no request accounts for are told from the VM's own (`hp1`, `scsi0`, `drive-root`).

use std::fmt;
use std::str::FromStr;

use plugboard_devices::DeviceId;

/// The VM's one `iommufd` object for functions handed over by descriptor: created with a
/// passed `/dev/iommu` the first time one is plugged, and never deleted, because QEMU never
/// closes an iommufd it was given (`iommufd_backend_finalize` closes only one it opened), so
/// an object per device would leak one descriptor per detach. Not one of [`OurName`]'s
/// names: it belongs to no device, and inspection does not count it as a stray.
pub const VM_IOMMUFD: &str = "plugboard-iommufd";

/// The `getfd` name of the descriptor [`VM_IOMMUFD`] is created with.
pub const VM_IOMMUFD_FD: &str = "plugboard-iommufd-fd";

/// Why a string is not a usable QEMU id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QemuIdError {
    /// Empty, too long, not starting with a letter, or with a character QEMU refuses.
    #[error(
        "QEMU id {0:?} must be 1 to {max} letters, digits, '-', '.' or '_', starting with a letter",
        max = QemuId::MAX_LEN
    )]
    Invalid(String),
}

/// A validated qdev id, short enough that every derived backend name fits QEMU's limits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QemuId(String);

impl QemuId {
    /// The longest id: 31 (QEMU's node-name limit) less the longest suffix we add (`-file`).
    pub const MAX_LEN: usize = 26;

    /// The id as QEMU sees it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The qdev id of a device the manager plugs: `<role>-<device>`.
    pub fn for_device(device: DeviceId, role: DeviceRole) -> Self {
        // Valid by construction: a lower-case word, `-`, decimal digits, 16 hex digits; at
        // most `vfio-255-` + 16 = 25 characters.
        Self(
            OurName {
                device,
                role,
                backend: None,
            }
            .to_string(),
        )
    }

    /// The name of one of this device's backends: `<id>-<suffix>`.
    pub fn backend_name(&self, role: BackendRole) -> String {
        format!("{}-{}", self.0, role.suffix())
    }

    /// What this id names, when it is a device id of ours; `None` for anything else (the
    /// VM's own devices, backend names).
    pub fn parse_ours(id: &str) -> Option<(DeviceRole, DeviceId)> {
        OurName::parse(id)
            .filter(|n| n.backend.is_none())
            .map(|n| (n.role, n.device))
    }

    /// The name a descriptor handed over for this device goes by (`getfd`): `<id>-fd`.
    /// QEMU takes it out of the monitor's table when the device takes it, so a name is
    /// free again once its plug is over, and a later plug of the same id can reuse it.
    pub fn fd_name(&self) -> String {
        format!("{}-fd", self.0)
    }

    /// The device's QOM path.
    pub fn qom_path(&self) -> String {
        format!("{}/{}", crate::qom::PERIPHERALS, self.0)
    }
}

impl FromStr for QemuId {
    type Err = QemuIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (1..=Self::MAX_LEN).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(QemuIdError::Invalid(s.to_owned()))
        }
    }
}

impl fmt::Display for QemuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a device is to QEMU: the first word of its object names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceRole {
    /// A disk on a block node graph: virtio-blk, scsi-hd or nvdimm (`drive-<device>`).
    Disk,
    /// A vhost-user-blk device (`blk-<device>`).
    VhostUserBlk,
    /// A vhost-user-scsi device (`scsi-<device>`).
    VhostUserScsi,
    /// A virtio-net device on a vhost-user netdev (`net-<device>`).
    VhostUserNet,
    /// A vhost-user-fs device (`fs-<device>`).
    VhostUserFs,
    /// Function `n` of a VFIO device, in the request's order (`vfio-<n>-<device>`).
    VfioFunction(u8),
}

impl DeviceRole {
    /// The prefix's word (`drive`, `blk`, …; `vfio` for every VFIO function).
    fn word(self) -> &'static str {
        match self {
            Self::Disk => "drive",
            Self::VhostUserBlk => "blk",
            Self::VhostUserScsi => "scsi",
            Self::VhostUserNet => "net",
            Self::VhostUserFs => "fs",
            Self::VfioFunction(_) => "vfio",
        }
    }

    /// The role whose prefix (everything before the device id, without its `-`) is `prefix`.
    fn from_prefix(prefix: &str) -> Option<Self> {
        let role = match prefix {
            "drive" => Self::Disk,
            "blk" => Self::VhostUserBlk,
            "scsi" => Self::VhostUserScsi,
            "net" => Self::VhostUserNet,
            "fs" => Self::VhostUserFs,
            _ => Self::VfioFunction(prefix.strip_prefix("vfio-")?.parse().ok()?),
        };
        Some(role)
    }
}

impl fmt::Display for DeviceRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::VfioFunction(n) => write!(f, "vfio-{n}"),
            other => f.write_str(other.word()),
        }
    }
}

/// What a backend object is to its device: the last word of its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendRole {
    /// The protocol block node (`file` or `host_device`): `<id>-file`.
    File,
    /// The format block node (`raw`, `qcow2`) the device reads: `<id>-fmt`.
    Format,
    /// The socket chardev of a vhost-user device: `<id>-chr`.
    Chardev,
    /// The vhost-user netdev: `<id>-net`.
    Netdev,
    /// The memory backend of an nvdimm: `<id>-mem`.
    Memory,
    /// The `iommufd` object a VFIO function owns: `<id>-iofd`.
    Iommufd,
}

impl BackendRole {
    /// Every backend role.
    pub const ALL: [Self; 6] = [
        Self::File,
        Self::Format,
        Self::Chardev,
        Self::Netdev,
        Self::Memory,
        Self::Iommufd,
    ];

    /// The suffix after the device's id.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Format => "fmt",
            Self::Chardev => "chr",
            Self::Netdev => "net",
            Self::Memory => "mem",
            Self::Iommufd => "iofd",
        }
    }
}

/// A name we give a QEMU object, read back: whose it is, what the device is, and which of
/// its backends it names (`None`: the device itself).
///
/// Its [`Display`](fmt::Display) is the name; [`OurName::parse`] accepts exactly what it
/// writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OurName {
    /// The manager's device.
    pub device: DeviceId,
    /// What the device is to QEMU.
    pub role: DeviceRole,
    /// The backend named, or `None` for the device's own qdev id.
    pub backend: Option<BackendRole>,
}

impl OurName {
    /// Reads a QEMU object name back; `None` when we would never have given it.
    pub fn parse(name: &str) -> Option<Self> {
        let (device_part, backend) = BackendRole::ALL
            .iter()
            .find_map(|&role| {
                let rest = name.strip_suffix(role.suffix())?.strip_suffix('-')?;
                Some((rest, Some(role)))
            })
            .unwrap_or((name, None));
        let (prefix, hex) = device_part.rsplit_once('-')?;
        let parsed = Self {
            device: hex.parse().ok()?,
            role: DeviceRole::from_prefix(prefix)?,
            backend,
        };
        // Only the one spelling we write (lower-case hex, no leading zeros in `vfio-<n>`).
        (parsed.to_string() == name).then_some(parsed)
    }
}

impl fmt::Display for OurName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.role, self.device)?;
        match self.backend {
            Some(b) => write!(f, "-{}", b.suffix()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_qemu_ids_and_refuses_the_rest() {
        for good in ["vb0", "disk-1.a_b", "a", "x2345678901234567890123456"] {
            assert_eq!(good.parse::<QemuId>().unwrap().as_str(), good);
        }
        for bad in [
            "",
            "0disk",
            "-a",
            "has space",
            "a,b",
            "a/b",
            "x23456789012345678901234567",
        ] {
            assert_eq!(
                bad.parse::<QemuId>(),
                Err(QemuIdError::Invalid(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn derived_names_fit_qemus_node_name_limit() {
        let id: QemuId = "x".repeat(QemuId::MAX_LEN).parse().unwrap();
        for role in BackendRole::ALL {
            assert!(id.backend_name(role).len() <= 31, "{role:?}");
        }
        assert_eq!(id.qom_path(), format!("/machine/peripheral/{id}"));
    }

    /// Every device role, the VFIO functions at both ends of their range.
    fn roles() -> [DeviceRole; 8] {
        [
            DeviceRole::Disk,
            DeviceRole::VhostUserBlk,
            DeviceRole::VhostUserScsi,
            DeviceRole::VhostUserNet,
            DeviceRole::VhostUserFs,
            DeviceRole::VfioFunction(0),
            DeviceRole::VfioFunction(10),
            DeviceRole::VfioFunction(u8::MAX),
        ]
    }

    #[test]
    fn device_ids_and_their_backend_names_are_read_back() {
        for device in [0, 42, u64::MAX].map(DeviceId::from_raw) {
            for role in roles() {
                let id = QemuId::for_device(device, role);
                assert_eq!(
                    id.as_str().parse::<QemuId>().as_ref(),
                    Ok(&id),
                    "valid QEMU id"
                );
                assert_eq!(QemuId::parse_ours(id.as_str()), Some((role, device)));
                for backend in BackendRole::ALL {
                    let name = id.backend_name(backend);
                    assert!(name.len() <= 31, "{name}");
                    let parsed = OurName::parse(&name);
                    assert_eq!(
                        parsed,
                        Some(OurName {
                            device,
                            role,
                            backend: Some(backend),
                        }),
                        "{name}"
                    );
                    assert_eq!(QemuId::parse_ours(&name), None, "a backend is not a device");
                }
            }
        }
        assert_eq!(
            QemuId::for_device(DeviceId::from_raw(42), DeviceRole::VfioFunction(1)).as_str(),
            "vfio-1-000000000000002a"
        );
        assert_eq!(
            QemuId::for_device(DeviceId::from_raw(42), DeviceRole::VhostUserNet)
                .backend_name(BackendRole::Netdev),
            "net-000000000000002a-net"
        );
    }

    #[test]
    fn foreign_names_are_not_ours() {
        for foreign in [
            "drive-root",
            "hp1",
            "scsi0",
            "rng0",
            "vb0-fmt",
            "iommufd0",
            "drive-2a",
            "drive-000000000000002A",
            "disk-000000000000002a",
            "drive-x-000000000000002a",
            "vfio-000000000000002a",
            "vfio-01-000000000000002a",
            "vfio-256-000000000000002a",
            "drive-000000000000002a-",
            "drive-000000000000002a-log",
            "drive-000000000000002a-fmt-fmt",
            "-000000000000002a",
            "",
        ] {
            assert_eq!(OurName::parse(foreign), None, "{foreign}");
            assert_eq!(QemuId::parse_ours(foreign), None, "{foreign}");
        }
    }
}
