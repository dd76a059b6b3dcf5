//! One call for a VM's whole device list, of mixed kinds: what the CLI and runtimes use.
//!
//! Prepare goes kind by kind (PCI, NVMe, USB, SCSI, mdev), each all-or-nothing, so the call
//! as a whole is all or nothing. PCI is reserved and bound first but recorded active only
//! once every other kind is claimed: when a later kind fails, the PCI part is rolled back
//! like a failed PCI prepare (each device put back on the driver it had, or left unbound if
//! it had none, and no row written), never released; the other kinds already claimed are
//! released again. Release is best effort with one line per device.

use std::fmt;

use plugboard_sysfs::{PciAddress, ScsiAddress};
use serde::{Deserialize, Serialize};

use crate::host_device::HostDevice;
use crate::manager::HostdevManager;
use crate::mdev::MdevError;
use crate::nvme::{NvmeError, NvmeNamespace};
use crate::owner::Owner;
use crate::pci_request::{PrepareError, PrepareOptions};
use crate::registry::RegistryError;
use crate::release::{PciReleased, ReleaseError, ReleaseOutcome};
use crate::scsi::ScsiError;
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRelease {
    /// The device, as [`HostDevice`] prints it.
    pub device: String,
    /// What happened to it.
    pub result: ReleaseResult,
    /// The driver it went back to, the group it waits for, or the error.
    pub detail: Option<String>,
}

/// What happened to one device of a release.
///
/// JSON words (stable): `reattached`, `inactive`, `kept_for_group`, `vanished`,
/// `not_owned`, `released`, `failed`. [`Display`](fmt::Display) prints a human phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseResult {
    /// PCI: given back to its host driver (verified) and dropped from the registry.
    Reattached,
    /// PCI, unmanaged: stays detached on vfio-pci, on the inactive list.
    Inactive,
    /// PCI, managed: stays inactive on vfio-pci until its IOMMU group's last member is
    /// released.
    KeptForGroup,
    /// Gone from the host: dropped from the registry.
    Vanished,
    /// Not held by this owner: nothing was done.
    NotOwned,
    /// USB, SCSI, mdev or NVMe namespace: the claim was dropped.
    Released,
    /// Giving it back failed (the detail says why); it stays on the inactive list.
    Failed,
}

impl ReleaseResult {
    /// The release failed: the device is still detached from its host.
    pub fn is_failure(self) -> bool {
        self == Self::Failed
    }

    /// The owner no longer holds the device because of this call: everything but
    /// [`Self::Failed`] and [`Self::NotOwned`] (a release of a device the owner does not
    /// hold did nothing that was asked, and a front should exit non-zero for it).
    pub fn is_done(self) -> bool {
        !matches!(self, Self::Failed | Self::NotOwned)
    }
}

impl fmt::Display for ReleaseResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Reattached => "back on its host driver",
            Self::Inactive => "inactive (stays on vfio-pci)",
            Self::KeptForGroup => "kept: its IOMMU group is still in use",
            Self::Vanished => "gone from the host",
            Self::NotOwned => "not held by this owner",
            Self::Released => "released",
            Self::Failed => "failed",
        })
    }
}

impl From<&ReleaseOutcome> for DeviceRelease {
    fn from(outcome: &ReleaseOutcome) -> Self {
        let (result, detail) = describe(&outcome.result);
        Self {
            device: outcome.address.to_string(),
            result,
            detail,
        }
    }
}

#[derive(Default)]
struct Sorted {
    pci: Vec<PciAddress>,
    nvme: Vec<NvmeNamespace>,
    usb: Vec<UsbSelector>,
    scsi: Vec<ScsiAddress>,
    mdev: Vec<String>,
}

fn sort(specs: &[HostDevice]) -> Sorted {
    let mut s = Sorted::default();
    for spec in specs {
        match spec {
            HostDevice::Pci(a) => s.pci.push(*a),
            HostDevice::Nvme(n) => s.nvme.push(*n),
            HostDevice::Usb(u) => s.usb.push(*u),
            HostDevice::Scsi(a) => s.scsi.push(*a),
            HostDevice::Mdev(u) => s.mdev.push(u.clone()),
        }
    }
    s
}

impl HostdevManager {
    /// Prepares a VM's devices of any kinds, all or nothing.
    pub fn prepare(
        &mut self,
        owner: &Owner,
        specs: &[HostDevice],
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
        // PCI first, held: reserved and bound, the rows untouched until the other kinds
        // are done, so that undoing it puts back exactly the rows and bindings of before
        // (a release would leave an adopted device an inactive row, or keep a device on
        // vfio-pci for its group).
        let pci = self.reserve_pci(owner, &s.pci, pci_options)?;
        if let Err(err) = self.prepare_claims(owner, &s, options) {
            if let Some(pci) = &pci {
                self.abandon_pci(pci);
            }
            return Err(err);
        }
        if let Some(pci) = pci
            && let Err(err) = self.commit_pci(owner, pci)
        {
            self.release_claims(owner, &s)?;
            return Err(err.into());
        }
        Ok(())
    }

    /// Drops the claims of every kind after PCI, in reverse order.
    fn release_claims(&mut self, owner: &Owner, s: &Sorted) -> Result<(), BatchError> {
        self.release_mdev(owner, &s.mdev)?;
        self.release_scsi(owner, &s.scsi)?;
        self.release_usb(owner, &s.usb)?;
        self.release_nvme(owner, &s.nvme)?;
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
        specs: &[HostDevice],
    ) -> Result<Vec<DeviceRelease>, RegistryError> {
        let s = sort(specs);
        let mut out = Vec::new();
        for o in self.release_pci(owner, &s.pci)? {
            out.push(DeviceRelease::from(&o));
        }
        for n in self.release_nvme(owner, &s.nvme)? {
            let (result, detail) = match (&n.controller, n.held) {
                (_, false) => (ReleaseResult::NotOwned, None),
                (None, true) => (ReleaseResult::Released, None),
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
            result: if held {
                ReleaseResult::Released
            } else {
                ReleaseResult::NotOwned
            },
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

fn describe(result: &Result<PciReleased, ReleaseError>) -> (ReleaseResult, Option<String>) {
    match result {
        Ok(PciReleased::Reattached { driver }) => (ReleaseResult::Reattached, driver.clone()),
        Ok(PciReleased::Inactive) => (ReleaseResult::Inactive, None),
        Ok(PciReleased::KeptForGroup { group }) => (
            ReleaseResult::KeptForGroup,
            Some(format!("IOMMU group {group} still in use")),
        ),
        Ok(PciReleased::Vanished) => (ReleaseResult::Vanished, None),
        Ok(PciReleased::NotOwned) => (ReleaseResult::NotOwned, None),
        Err(e) => (ReleaseResult::Failed, Some(plugboard_sysfs::error_chain(e))),
    }
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
        let specs: Vec<HostDevice> = [NIC1, "usb:1/2", "nvme:0000:06:00.0/1"]
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
        let results: Vec<ReleaseResult> = out.iter().map(|r| r.result).collect();
        assert_eq!(
            results,
            [
                ReleaseResult::Reattached,
                ReleaseResult::Reattached,
                ReleaseResult::Released
            ],
            "{out:?}"
        );
        for r in &out {
            let json = serde_json::to_value(r).unwrap();
            assert_eq!(serde_json::from_value::<DeviceRelease>(json).unwrap(), *r);
        }
        assert!(m.list().unwrap().claims.is_empty());
        assert!(books(&mut m).is_empty());
    }

    /// The registry as `list()` shows it, as JSON text, and every PCI device's driver and
    /// override: what "exactly as before" compares.
    fn snapshot(fx: &Fixture, m: &mut HostdevManager) -> (String, Vec<String>) {
        let listing = serde_json::to_string(&m.list().unwrap()).unwrap();
        let bindings = fx
            .kernel
            .sysfs()
            .pci_devices()
            .unwrap()
            .iter()
            .map(|d| {
                format!(
                    "{} {:?} {:?}",
                    d.address(),
                    d.driver().unwrap(),
                    d.driver_override().unwrap()
                )
            })
            .collect();
        (listing, bindings)
    }

    const ADOPTED: &str = "0000:0a:00.0";

    #[test]
    fn a_failed_mixed_prepare_leaves_no_row_for_a_device_it_adopted() {
        let fx = Fixture::with(
            host_spec()
                .usb(UsbSpec::new("1-1", 1, 2, 0x046d, 0xc52b))
                .pci(
                    plugboard_sysfs::fake::PciSpec::new(ADOPTED, 0x8086, 0x10d3)
                        .iommu_group(10)
                        .driver("vfio-pci"),
                ),
        );
        let mut m = fx.manager();
        let parse = |list: &[&str]| -> Vec<HostDevice> {
            list.iter().map(|s| s.parse().unwrap()).collect()
        };
        m.prepare(
            &owner("qemu/vm2"),
            &parse(&["usb:1/2"]),
            BatchOptions::default(),
        )
        .unwrap();
        let before = snapshot(&fx, &mut m);
        for managed in [false, true] {
            let options = BatchOptions {
                managed,
                ..BatchOptions::default()
            };
            // Managed, NIC1 is bound to vfio-pci by the call as well.
            let specs = if managed {
                parse(&[ADOPTED, NIC1, "usb:1/2"])
            } else {
                parse(&[ADOPTED, "usb:1/2"])
            };
            let err = m.prepare(&owner("qemu/vm1"), &specs, options).unwrap_err();
            assert!(
                matches!(err, BatchError::Usb(UsbError::InUse { .. })),
                "{err:?}"
            );
            assert_eq!(snapshot(&fx, &mut m), before, "managed: {managed}");
        }
    }

    #[test]
    fn a_failed_mixed_prepare_gives_back_a_device_whose_group_the_owner_still_uses() {
        let fx = Fixture::with(host_spec());
        let mut m = fx.manager();
        let a = owner("qemu/vm1");
        // SHARED1 has no driver; the owner holds the other member of its group.
        fx.kernel
            .sysfs()
            .pci_device(addr(SHARED1))
            .unwrap()
            .unbind()
            .unwrap();
        m.prepare_pci(&a, &[addr(SHARED2)], MANAGED).unwrap();
        let before = snapshot(&fx, &mut m);
        // The mdev does not exist: the mixed prepare fails after binding SHARED1.
        let specs: Vec<HostDevice> = [SHARED1, "mdev:6d7b9a1e-0a41-4f1c-9a5e-2b5b1f0c0d11"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let managed = BatchOptions {
            managed: true,
            ..BatchOptions::default()
        };
        let err = m.prepare(&a, &specs, managed).unwrap_err();
        assert!(matches!(err, BatchError::Mdev(_)), "{err:?}");
        assert_eq!(snapshot(&fx, &mut m), before);
        assert_eq!(fx.driver(SHARED1), None);
    }

    #[test]
    fn release_results_have_snake_case_words_and_phrases() {
        use ReleaseResult::*;
        let all = [
            (Reattached, "reattached", "back on its host driver"),
            (Inactive, "inactive", "inactive (stays on vfio-pci)"),
            (
                KeptForGroup,
                "kept_for_group",
                "kept: its IOMMU group is still in use",
            ),
            (Vanished, "vanished", "gone from the host"),
            (NotOwned, "not_owned", "not held by this owner"),
            (Released, "released", "released"),
            (Failed, "failed", "failed"),
        ];
        for (result, word, phrase) in all {
            assert_eq!(serde_json::to_value(result).unwrap(), word);
            assert_eq!(
                serde_json::from_value::<ReleaseResult>(word.into()).unwrap(),
                result
            );
            assert_eq!(result.to_string(), phrase);
            assert_eq!(result.is_failure(), result == Failed);
            assert_eq!(result.is_done(), !matches!(result, Failed | NotOwned));
        }
        serde_json::from_value::<ReleaseResult>("kept-for-group".into()).unwrap_err();
    }

    #[test]
    fn releasing_what_the_owner_does_not_hold_is_not_owned_not_done() {
        let fx = Fixture::with(host_spec());
        let mut m = fx.manager();
        let specs: Vec<HostDevice> = [NIC1, "nvme:0000:06:00.0/1", "usb:1/2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let out = m.release(&owner("qemu/nobody"), &specs).unwrap();
        assert_eq!(out.len(), 3, "{out:?}");
        for r in &out {
            assert_eq!(r.result, ReleaseResult::NotOwned, "{r:?}");
            assert!(!r.result.is_done() && !r.result.is_failure());
        }
    }
}
