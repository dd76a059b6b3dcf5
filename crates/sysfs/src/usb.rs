//! USB devices (`bus/usb/devices/<name>`): bus and device numbers, IDs, and names.
//!
//! Only devices count (`1-2`, `2-1.4`, and the root hubs `usb1`); interfaces (`1-2:1.0`)
//! have no `busnum` and are skipped. QEMU's `usb-host` addresses a device by
//! `hostbus`/`hostaddr` (busnum/devnum) or by vendor and product ID.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::attr;
use crate::error::{SysfsError, check_name};
use crate::sysfs::Sysfs;

/// One USB device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsbDevice {
    /// The kernel's name (`1-2`).
    pub name: String,
    /// `busnum`.
    pub busnum: u16,
    /// `devnum`.
    pub devnum: u16,
    /// `idVendor`.
    pub vendor_id: u16,
    /// `idProduct`.
    pub product_id: u16,
    /// `manufacturer`, if the device has the string.
    pub manufacturer: Option<String>,
    /// `product`, if the device has the string.
    pub product: Option<String>,
    /// Its sysfs directory.
    pub path: PathBuf,
}

impl UsbDevice {
    /// The node path relative to `/dev`: `bus/usb/BBB/DDD`.
    pub fn devname(&self) -> String {
        format!("bus/usb/{:03}/{:03}", self.busnum, self.devnum)
    }
}

impl Sysfs {
    /// The USB device `name` (e.g. `1-2`).
    pub fn usb_device(&self, name: &str) -> Result<UsbDevice, SysfsError> {
        check_name("USB device", name)?;
        let path = self.path("bus/usb/devices").join(name);
        let busnum_path = path.join("busnum");
        if attr::read_optional(&busnum_path)?.is_none() {
            return Err(SysfsError::NotFound {
                what: format!("USB device {name}"),
                path: busnum_path,
            });
        }
        Ok(UsbDevice {
            name: name.to_owned(),
            busnum: attr::read_decimal(&busnum_path, "a bus number")?,
            devnum: attr::read_decimal(&path.join("devnum"), "a device number")?,
            vendor_id: attr::read_hex_u16(&path.join("idVendor"))?,
            product_id: attr::read_hex_u16(&path.join("idProduct"))?,
            manufacturer: attr::read_optional(&path.join("manufacturer"))?,
            product: attr::read_optional(&path.join("product"))?,
            path,
        })
    }

    /// Every USB device (not interfaces), sorted by bus and device number.
    pub fn usb_devices(&self) -> Result<Vec<UsbDevice>, SysfsError> {
        let mut devices = Vec::new();
        for name in attr::list_dir(&self.path("bus/usb/devices"))? {
            if name.contains(':') {
                continue;
            }
            match self.usb_device(&name) {
                Ok(device) => devices.push(device),
                Err(err) if err.is_not_found() => {}
                Err(err) => return Err(err),
            }
        }
        devices.sort_by_key(|d| (d.busnum, d.devnum));
        Ok(devices)
    }
}
