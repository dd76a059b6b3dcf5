//! What hostdev needs to know about one PCI function before touching it, read from sysfs
//! in one place: it exists, it is an endpoint, its driver, and its IOMMU group.

use plugboard_sysfs::{DriverKind, HeaderType, PciAddress, PciDevice, Sysfs, SysfsError};

/// Why a device cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum HostDeviceError {
    /// No such PCI function on this host (never existed, or hot-removed).
    #[error("PCI device {address} not found")]
    NotFound {
        /// The device.
        address: PciAddress,
        /// What sysfs said.
        #[source]
        source: SysfsError,
    },
    /// A bridge or CardBus bridge: only endpoints can be given to a VM.
    #[error("PCI device {address} is not an endpoint (a {header}); only endpoints can be assigned")]
    NotEndpoint {
        /// The device.
        address: PciAddress,
        /// Its header type.
        header: HeaderType,
    },
    /// Reading the device's state failed.
    #[error("PCI device {address}: cannot read its state")]
    Read {
        /// The device.
        address: PciAddress,
        /// What failed.
        #[source]
        source: SysfsError,
    },
}

impl HostDeviceError {
    /// True when the device is missing from sysfs.
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::NotFound { .. } => true,
            Self::Read { source, .. } => source.is_not_found(),
            Self::NotEndpoint { .. } => false,
        }
    }
}

/// One PCI function as sysfs shows it now.
#[derive(Debug, Clone)]
pub(crate) struct DeviceFacts {
    pub device: PciDevice,
    pub driver: Option<String>,
    pub kind: DriverKind,
    pub group: Option<u32>,
}

impl DeviceFacts {
    /// Reads `address`, failing if it is missing or not an endpoint.
    pub fn endpoint(sysfs: &Sysfs, address: PciAddress) -> Result<Self, HostDeviceError> {
        let facts = Self::read(sysfs, address)?;
        let header = facts
            .device
            .header_type()
            .map_err(|source| read_error(&facts.device, source))?;
        if header != HeaderType::Endpoint {
            return Err(HostDeviceError::NotEndpoint { address, header });
        }
        Ok(facts)
    }

    /// Reads `address` whatever its kind.
    pub fn read(sysfs: &Sysfs, address: PciAddress) -> Result<Self, HostDeviceError> {
        let device = sysfs
            .pci_device(address)
            .map_err(|source| HostDeviceError::NotFound { address, source })?;
        let driver = device
            .driver()
            .map_err(|source| read_error(&device, source))?;
        let kind = device
            .driver_kind()
            .map_err(|source| read_error(&device, source))?;
        let group = device
            .iommu_group()
            .map_err(|source| read_error(&device, source))?;
        Ok(Self {
            device,
            driver,
            kind,
            group,
        })
    }

    /// The device's address.
    pub fn address(&self) -> PciAddress {
        self.device.address()
    }
}

/// A read that fails because the device's directory is gone means the device vanished
/// (hot-unplug mid-operation); anything else is a read failure.
fn read_error(device: &PciDevice, source: SysfsError) -> HostDeviceError {
    let address = device.address();
    if std::fs::symlink_metadata(device.path()).is_err() {
        HostDeviceError::NotFound { address, source }
    } else {
        HostDeviceError::Read { address, source }
    }
}
