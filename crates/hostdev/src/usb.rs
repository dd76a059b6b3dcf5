//! USB devices: found by bus/device number or by vendor/product, one owner at a time.
//!
//! There is no detach or stub for USB (QEMU opens the device node), so a claim is only a
//! row in the registry: prepare checks every device is free and claims them all in one
//! transaction (all or nothing); release drops the owner's claims. A vendor/product pair
//! that matches several devices is refused as ambiguous rather than guessed.

use std::fmt;

use plugboard_sysfs::{SysfsError, UsbDevice};
use serde::{Deserialize, Serialize};

use crate::manager::HostdevManager;
use crate::owner::Owner;
use crate::registry::{ClaimKind, ClaimRow, RegistryError};

/// How a USB device is named.
///
/// JSON (stable): `{"bus_device": {"bus": 1, "device": 4}}` or
/// `{"vendor_product": {"vendor": 1133, "product": 50475}}`; inside a [`HostDevice`]
/// it is the text form (`usb:1/4`).
///
/// [`HostDevice`]: crate::HostDevice
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsbSelector {
    /// By bus and device number (`usb:BUS/DEV`, decimal).
    BusDevice {
        /// `busnum`.
        bus: u16,
        /// `devnum`.
        device: u16,
    },
    /// By IDs (`usb:VVVV:PPPP`, hex).
    VendorProduct {
        /// `idVendor`.
        vendor: u16,
        /// `idProduct`.
        product: u16,
    },
}

impl fmt::Display for UsbSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BusDevice { bus, device } => write!(f, "usb:{bus}/{device}"),
            Self::VendorProduct { vendor, product } => write!(f, "usb:{vendor:04x}:{product:04x}"),
        }
    }
}

/// Why a USB prepare failed. Nothing was claimed.
#[derive(Debug, thiserror::Error)]
pub enum UsbError {
    /// No such device.
    #[error("USB device {0} not found")]
    NotFound(UsbSelector),
    /// Several devices match a vendor/product pair.
    #[error("USB device {selector} is ambiguous: {count} devices match; name it by bus/device")]
    Ambiguous {
        /// What was asked.
        selector: UsbSelector,
        /// How many match.
        count: usize,
    },
    /// Already claimed (by anyone, including the same owner).
    #[error("USB device {device} is in use by {owner}")]
    InUse {
        /// The device, `BUS/DEV`.
        device: String,
        /// Its owner.
        owner: Owner,
    },
    /// Listing USB devices failed.
    #[error("cannot list USB devices")]
    Sysfs(#[source] SysfsError),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// The registry key of a device: `BUS/DEV`.
fn key(bus: u16, device: u16) -> String {
    format!("{bus:03}/{device:03}")
}

impl HostdevManager {
    /// Claims `devices` for `owner`, all or nothing.
    pub fn prepare_usb(
        &mut self,
        owner: &Owner,
        devices: &[UsbSelector],
    ) -> Result<Vec<UsbDevice>, UsbError> {
        let all = self.sysfs.usb_devices().map_err(UsbError::Sysfs)?;
        let mut found = Vec::with_capacity(devices.len());
        for &selector in devices {
            let matches: Vec<&UsbDevice> = all
                .iter()
                .filter(|d| match selector {
                    UsbSelector::BusDevice { bus, device } => d.busnum == bus && d.devnum == device,
                    UsbSelector::VendorProduct { vendor, product } => {
                        d.vendor_id == vendor && d.product_id == product
                    }
                })
                .collect();
            match matches.as_slice() {
                [] => return Err(UsbError::NotFound(selector)),
                [one] => found.push((*one).clone()),
                many => {
                    return Err(UsbError::Ambiguous {
                        selector,
                        count: many.len(),
                    });
                }
            }
        }
        self.registry.write(|tx| {
            for d in &found {
                let k = key(d.busnum, d.devnum);
                if let Some(c) = tx.claims_on(ClaimKind::Usb, &k)?.into_iter().next() {
                    return Err(UsbError::InUse {
                        device: k,
                        owner: c.owner,
                    });
                }
                tx.insert_claim(&ClaimRow {
                    kind: ClaimKind::Usb,
                    key: k,
                    owner: owner.clone(),
                    shareable: false,
                    detail: Some(format!("{:04x}:{:04x}", d.vendor_id, d.product_id)),
                })?;
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// Drops `owner`'s claims on `devices` (best effort; vanished devices included, found
    /// by their recorded IDs). Returns, per selector, whether a claim was dropped.
    pub fn release_usb(
        &mut self,
        owner: &Owner,
        devices: &[UsbSelector],
    ) -> Result<Vec<(UsbSelector, bool)>, RegistryError> {
        self.registry.write(|tx| {
            let mut out = Vec::with_capacity(devices.len());
            for &selector in devices {
                let keys: Vec<String> = match selector {
                    UsbSelector::BusDevice { bus, device } => vec![key(bus, device)],
                    UsbSelector::VendorProduct { vendor, product } => {
                        let ids = format!("{vendor:04x}:{product:04x}");
                        tx.claims()?
                            .into_iter()
                            .filter(|c| {
                                c.kind == ClaimKind::Usb
                                    && c.owner == *owner
                                    && c.detail.as_deref() == Some(ids.as_str())
                            })
                            .map(|c| c.key)
                            .collect()
                    }
                };
                let mut dropped = false;
                for k in keys {
                    dropped |= tx.delete_claim(ClaimKind::Usb, &k, owner)?;
                }
                out.push((selector, dropped));
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use plugboard_sysfs::fake::UsbSpec;

    use super::*;
    use crate::test_support::*;

    fn fixture() -> Fixture {
        Fixture::with(
            host_spec()
                .usb(UsbSpec::new("1-1", 1, 2, 0x046d, 0xc52b))
                .usb(UsbSpec::new("1-2", 1, 3, 0x0781, 0x5567))
                .usb(UsbSpec::new("2-1", 2, 2, 0x0781, 0x5567)),
        )
    }

    #[test]
    fn usb_by_bus_device_or_ids_one_owner_at_a_time() {
        let fx = fixture();
        let mut m = fx.manager();
        let a = owner("qemu/vm1");
        let mouse = UsbSelector::VendorProduct {
            vendor: 0x046d,
            product: 0xc52b,
        };
        let stick = UsbSelector::BusDevice { bus: 2, device: 2 };
        m.prepare_usb(&a, &[mouse, stick]).unwrap();
        for who in ["qemu/vm1", "qemu/vm2", "kata/vm1"] {
            let err = m
                .prepare_usb(&owner(who), &[UsbSelector::BusDevice { bus: 1, device: 2 }])
                .unwrap_err();
            assert!(matches!(err, UsbError::InUse { .. }), "{who}: {err:?}");
            assert!(err.to_string().contains("001/002"));
        }
        // All or nothing: a free device listed before a busy one is not claimed.
        let free = UsbSelector::BusDevice { bus: 1, device: 3 };
        m.prepare_usb(&owner("qemu/vm2"), &[free, stick])
            .unwrap_err();
        assert_eq!(m.list().unwrap().claims.len(), 2);
        // Another owner's release touches nothing.
        let out = m.release_usb(&owner("qemu/vm2"), &[mouse]).unwrap();
        assert_eq!(out, vec![(mouse, false)]);
        let out = m.release_usb(&a, &[mouse, stick]).unwrap();
        assert_eq!(out, vec![(mouse, true), (stick, true)]);
        assert!(m.list().unwrap().claims.is_empty());
    }

    #[test]
    fn ambiguous_and_missing_usb_devices_are_named() {
        let fx = fixture();
        let mut m = fx.manager();
        let twins = UsbSelector::VendorProduct {
            vendor: 0x0781,
            product: 0x5567,
        };
        let err = m.prepare_usb(&owner("qemu/vm1"), &[twins]).unwrap_err();
        assert!(
            matches!(err, UsbError::Ambiguous { count: 2, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("usb:0781:5567"));
        let err = m
            .prepare_usb(
                &owner("qemu/vm1"),
                &[UsbSelector::BusDevice { bus: 9, device: 9 }],
            )
            .unwrap_err();
        assert_eq!(err.to_string(), "USB device usb:9/9 not found");
    }
}
