//! One call for a VM's whole device list, of mixed kinds: what the CLI and runtimes use.
//!
//! Prepare goes kind by kind (PCI, NVMe, USB, SCSI, mdev), each all-or-nothing, and when
//! a later kind fails the kinds already prepared are released again, so the call as a
//! whole is all or nothing. Release is best effort with one line per device.

use plugboard_sysfs::{PciAddress, ScsiAddress};
use serde::Serialize;

use crate::manager::HostdevManager;
use crate::mdev::MdevError;
use crate::nvme::{NvmeError, NvmeNamespace};
use crate::owner::Owner;
use crate::pci::{PrepareError, PrepareOptions};
use crate::registry::RegistryError;
use crate::release::Released;
use crate::scsi::ScsiError;
use crate::spec::DeviceSpec;
use crate::usb::{UsbError, UsbSelector};

/// Options of a mixed prepare.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchOptions {
    /// PCI and NVMe: detach from the host driver (libvirt `managed='yes'`).
    pub managed: bool,
    /// PCI: take every endpoint of each device's IOMMU group.
    pub whole_group: bool,
    /// SCSI: this user agrees to share the devices.
    pub shareable: bool,
}

/// Why a mixed prepare failed. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// PCI.
    #[error(transparent)]
    Pci(#[from] PrepareError),
    /// NVMe.
    #[error(transparent)]
    Nvme(#[from] NvmeError),
    /// USB.
    #[error(transparent)]
    Usb(#[from] UsbError),
    /// SCSI.
    #[error(transparent)]
    Scsi(#[from] ScsiError),
    /// mdev.
    #[error(transparent)]
    Mdev(#[from] MdevError),
    /// `--managed` with a SCSI device (libvirt refuses it too).
    #[error("SCSI device {0} does not support managed mode")]
    ManagedScsi(ScsiAddress),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// One device's release, for people and programs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceRelease {
    /// The device.
    pub device: String,
    /// `reattached`, `inactive`, `kept-for-group`, `vanished`, `not-owned`, `released`
    /// (claims) or `failed`.
    pub result: &'static str,
    /// The driver it went back to, the group it waits for, or the error.
    pub detail: Option<String>,
}

#[derive(Default)]
struct Sorted {
    pci: Vec<PciAddress>,
    nvme: Vec<NvmeNamespace>,
    usb: Vec<UsbSelector>,
    scsi: Vec<ScsiAddress>,
    mdev: Vec<String>,
}

fn sort(specs: &[DeviceSpec]) -> Sorted {
    let mut s = Sorted::default();
    for spec in specs {
        match spec {
            DeviceSpec::Pci(a) => s.pci.push(*a),
            DeviceSpec::Nvme(n) => s.nvme.push(*n),
            DeviceSpec::Usb(u) => s.usb.push(*u),
            DeviceSpec::Scsi(a) => s.scsi.push(*a),
            DeviceSpec::Mdev(u) => s.mdev.push(u.clone()),
        }
    }
    s
}

impl HostdevManager {
    /// Prepares a VM's devices of any kinds, all or nothing.
    pub fn prepare(
        &mut self,
        owner: &Owner,
        specs: &[DeviceSpec],
        options: BatchOptions,
    ) -> Result<(), BatchError> {
        let s = sort(specs);
        if options.managed
            && let Some(a) = s.scsi.first()
        {
            return Err(BatchError::ManagedScsi(*a));
        }
        let pci_options = PrepareOptions {
            managed: options.managed,
            whole_group: options.whole_group,
        };
        let pci: Vec<PciAddress> = self
            .prepare_pci(owner, &s.pci, pci_options)?
            .iter()
            .map(|p| p.address)
            .collect();
        let result = self.prepare_claims(owner, &s, options);
        if let Err(err) = result {
            self.release_pci(owner, &pci)?;
            return Err(err);
        }
        Ok(())
    }

    /// The kinds after PCI, in order; on failure the ones done are released in reverse.
    fn prepare_claims(
        &mut self,
        owner: &Owner,
        s: &Sorted,
        options: BatchOptions,
    ) -> Result<(), BatchError> {
        self.prepare_nvme(owner, &s.nvme, options.managed)?;
        if let Err(e) = self.prepare_usb(owner, &s.usb) {
            self.release_nvme(owner, &s.nvme)?;
            return Err(e.into());
        }
        if let Err(e) = self.prepare_scsi(owner, &s.scsi, options.shareable) {
            self.release_usb(owner, &s.usb)?;
            self.release_nvme(owner, &s.nvme)?;
            return Err(e.into());
        }
        if let Err(e) = self.prepare_mdev(owner, &s.mdev) {
            self.release_scsi(owner, &s.scsi)?;
            self.release_usb(owner, &s.usb)?;
            self.release_nvme(owner, &s.nvme)?;
            return Err(e.into());
        }
        Ok(())
    }

    /// Releases a VM's devices of any kinds, best effort, one result per device.
    pub fn release(
        &mut self,
        owner: &Owner,
        specs: &[DeviceSpec],
    ) -> Result<Vec<DeviceRelease>, RegistryError> {
        let s = sort(specs);
        let mut out = Vec::new();
        for o in self.release_pci(owner, &s.pci)? {
            let (result, detail) = describe(&o.result);
            out.push(DeviceRelease {
                device: o.address.to_string(),
                result,
                detail,
            });
        }
        for n in self.release_nvme(owner, &s.nvme)? {
            let (result, detail) = match (&n.controller, n.held) {
                (_, false) => ("not-owned", None),
                (None, true) => ("released", None),
                (Some(c), true) => {
                    let (r, d) = describe(&c.result);
                    (
                        r,
                        Some(format!(
                            "controller {}: {}",
                            c.address,
                            d.unwrap_or_default()
                        )),
                    )
                }
            };
            out.push(DeviceRelease {
                device: n.namespace.to_string(),
                result,
                detail,
            });
        }
        let claim = |device: String, held: bool| DeviceRelease {
            device,
            result: if held { "released" } else { "not-owned" },
            detail: None,
        };
        for (u, held) in self.release_usb(owner, &s.usb)? {
            out.push(claim(u.to_string(), held));
        }
        for (a, held) in self.release_scsi(owner, &s.scsi)? {
            out.push(claim(format!("scsi:{a}"), held));
        }
        for (u, held) in self.release_mdev(owner, &s.mdev)? {
            out.push(claim(format!("mdev:{u}"), held));
        }
        Ok(out)
    }
}

fn describe(
    result: &Result<Released, crate::release::ReleaseError>,
) -> (&'static str, Option<String>) {
    match result {
        Ok(Released::Reattached { driver }) => ("reattached", driver.clone()),
        Ok(Released::Inactive) => ("inactive", None),
        Ok(Released::KeptForGroup { group }) => (
            "kept-for-group",
            Some(format!("IOMMU group {group} still in use")),
        ),
        Ok(Released::Vanished) => ("vanished", None),
        Ok(Released::NotOwned) => ("not-owned", None),
        Err(e) => ("failed", Some(error_chain(e))),
    }
}

/// An error and its causes on one line.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use plugboard_sysfs::fake::UsbSpec;

    use super::*;
    use crate::test_support::*;

    #[test]
    fn a_mixed_prepare_is_all_or_nothing_across_kinds() {
        let fx = Fixture::with(host_spec().usb(UsbSpec::new("1-1", 1, 2, 0x046d, 0xc52b)));
        let mut m = fx.manager();
        let specs: Vec<DeviceSpec> = [NIC1, "usb:1/2", "nvme:0000:06:00.0/1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let managed = BatchOptions {
            managed: true,
            ..BatchOptions::default()
        };
        m.prepare(&owner("qemu/vm2"), &specs[1..2], managed)
            .unwrap();
        // The USB device is taken: the PCI and NVMe devices prepared before it are undone.
        let err = m.prepare(&owner("qemu/vm1"), &specs, managed).unwrap_err();
        assert!(
            matches!(err, BatchError::Usb(UsbError::InUse { .. })),
            "{err:?}"
        );
        assert_eq!(fx.driver(NIC1).as_deref(), Some("e1000e"));
        assert_eq!(fx.driver(NVME).as_deref(), Some("nvme"));
        assert!(books(&mut m).is_empty());
        assert_eq!(m.list().unwrap().claims.len(), 1);

        m.release(&owner("qemu/vm2"), &specs[1..2]).unwrap();
        m.prepare(&owner("qemu/vm1"), &specs, managed).unwrap();
        let out = m.release(&owner("qemu/vm1"), &specs).unwrap();
        let results: Vec<&str> = out.iter().map(|r| r.result).collect();
        assert_eq!(results, ["reattached", "reattached", "released"], "{out:?}");
        assert!(m.list().unwrap().claims.is_empty());
        assert!(books(&mut m).is_empty());
    }
}
