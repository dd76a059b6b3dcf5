//! Driver binding that verifies itself: `driver_override`, unbind, `drivers_probe`, check.
//!
//! This is the kernel's only reliable way to move one PCI function to a chosen driver
//! (libvirt's `virPCIDeviceBindWithDriverOverride`): the override names the driver, unbind
//! frees the device, and `drivers_probe` asks the bus to find it a driver, which now can only
//! be the one named. `drivers_probe` reports success even when nothing binds (the driver's
//! probe failed, or the driver is not loaded), so every bind reads the `driver` link back and
//! fails with [`BindError::NotBound`], naming what it found, when the kernel did something
//! else. `new_id`/`remove_id` are never used: they act on every device with the same IDs.
//!
//! Every write is logged at `info` with the device, the driver and how to undo it.

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::address::PciAddress;
use crate::error::{SysfsError, check_name};
use crate::pci::PciDevice;
use crate::sysfs::WriteError;

/// A failed bind, unbind, override or reset. Messages name the device and the driver.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The driver is not registered with the PCI bus (module not loaded?).
    #[error(
        "PCI device {address}: no driver {driver:?} is registered ({path} is missing; is the module loaded?)"
    )]
    NoSuchDriver {
        /// The device.
        address: PciAddress,
        /// The driver asked for.
        driver: String,
        /// `<root>/bus/pci/drivers/<driver>`.
        path: String,
    },
    /// Writing `driver_override` failed.
    #[error("PCI device {address}: cannot set driver_override to {driver:?}")]
    Override {
        /// The device.
        address: PciAddress,
        /// The override written (empty when clearing).
        driver: String,
        /// The write that failed.
        #[source]
        source: WriteError,
    },
    /// Unbinding from the current driver failed.
    #[error("PCI device {address}: cannot unbind from {driver}")]
    Unbind {
        /// The device.
        address: PciAddress,
        /// The driver it is bound to.
        driver: String,
        /// The write that failed.
        #[source]
        source: WriteError,
    },
    /// Writing `drivers_probe` failed.
    #[error("PCI device {address}: cannot trigger a driver probe")]
    Probe {
        /// The device.
        address: PciAddress,
        /// The write that failed.
        #[source]
        source: WriteError,
    },
    /// The kernel accepted every write but the device is not on the driver asked for.
    #[error("PCI device {address}: asked for driver {wanted}, but the kernel left it {}", found_text(.found.as_deref()))]
    NotBound {
        /// The device.
        address: PciAddress,
        /// The driver asked for (`None`: "no driver").
        wanted: String,
        /// The driver found after the probe.
        found: Option<String>,
    },
    /// The device has no `reset` attribute (the kernel knows no reset method for it).
    #[error("PCI device {address}: the kernel offers no reset ({path} is missing)")]
    NoReset {
        /// The device.
        address: PciAddress,
        /// The missing attribute.
        path: String,
    },
    /// Writing `reset` failed.
    #[error("PCI device {address}: reset failed")]
    Reset {
        /// The device.
        address: PciAddress,
        /// The write that failed.
        #[source]
        source: WriteError,
    },
    /// Reading the device's state failed.
    #[error(transparent)]
    Read(#[from] SysfsError),
}

fn found_text(found: Option<&str>) -> String {
    match found {
        Some(driver) => format!("bound to {driver}"),
        None => "unbound".to_owned(),
    }
}

/// What a successful [`PciDevice::bind`] did, and what to restore later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindOutcome {
    /// The device.
    pub address: PciAddress,
    /// The driver it is on now.
    pub driver: String,
    /// The driver it was on before (`None`: unbound).
    pub previous_driver: Option<String>,
    /// The `driver_override` before (`None`: unset).
    pub previous_override: Option<String>,
    /// False when the device was already on `driver` and nothing was written.
    pub changed: bool,
}

impl PciDevice {
    /// Sets `driver_override` to `driver`, or clears it with `None`. Takes effect at the
    /// next probe only.
    pub fn set_driver_override(&self, driver: Option<&str>) -> Result<(), BindError> {
        let value = match driver {
            Some(name) => {
                check_name("driver", name)?;
                name
            }
            None => "\n",
        };
        self.sysfs()
            .write_attribute(&self.attr_path("driver_override"), value)
            .map_err(|source| BindError::Override {
                address: self.address(),
                driver: value.trim().to_owned(),
                source,
            })?;
        info!(bdf = %self.address(), driver_override = value.trim(),
              "set driver_override; undo: write a newline to driver_override");
        Ok(())
    }

    /// Unbinds the device from its driver; returns that driver (`None` and no write when
    /// the device was already unbound).
    pub fn unbind(&self) -> Result<Option<String>, BindError> {
        let Some(driver) = self.driver()? else {
            return Ok(None);
        };
        let path = self.sysfs().pci_drivers_dir().join(&driver).join("unbind");
        self.sysfs()
            .write_attribute(&path, &self.address().to_string())
            .map_err(|source| BindError::Unbind {
                address: self.address(),
                driver: driver.clone(),
                source,
            })?;
        info!(bdf = %self.address(), %driver, "unbound; undo: bind it to the driver again");
        Ok(Some(driver))
    }

    /// Asks the PCI bus to probe drivers for this device (`bus/pci/drivers_probe`). A bound
    /// device is left alone; an unbound one gets its override, else an ID-table match.
    pub fn probe(&self) -> Result<(), BindError> {
        let path = self.sysfs().path("bus/pci/drivers_probe");
        self.sysfs()
            .write_attribute(&path, &self.address().to_string())
            .map_err(|source| BindError::Probe {
                address: self.address(),
                source,
            })
    }

    /// Binds the device to `driver` and verifies it: override, unbind, probe, read back.
    ///
    /// A no-op when the device is already on `driver`. When the kernel binds something else
    /// (or nothing), the previous override is restored and the device re-probed, best
    /// effort, and [`BindError::NotBound`] says what the kernel did.
    pub fn bind(&self, driver: &str) -> Result<BindOutcome, BindError> {
        check_name("driver", driver)?;
        let address = self.address();
        let driver_dir = self.sysfs().pci_drivers_dir().join(driver);
        if !driver_dir.is_dir() {
            return Err(BindError::NoSuchDriver {
                address,
                driver: driver.to_owned(),
                path: driver_dir.display().to_string(),
            });
        }
        let previous_driver = self.driver()?;
        let previous_override = self.driver_override()?;
        if previous_driver.as_deref() == Some(driver) {
            return Ok(BindOutcome {
                address,
                driver: driver.to_owned(),
                previous_driver,
                previous_override,
                changed: false,
            });
        }
        self.set_driver_override(Some(driver))?;
        let result = self.unbind().and_then(|_| self.probe());
        let found = match result {
            Ok(()) => self.driver()?,
            Err(err) => {
                self.roll_back_bind(previous_override.as_deref());
                return Err(err);
            }
        };
        if found.as_deref() != Some(driver) {
            self.roll_back_bind(previous_override.as_deref());
            return Err(BindError::NotBound {
                address,
                wanted: driver.to_owned(),
                found,
            });
        }
        info!(bdf = %address, %driver, previous = ?previous_driver,
              "bound; undo: plugboard reattach (clear driver_override, unbind, drivers_probe)");
        Ok(BindOutcome {
            address,
            driver: driver.to_owned(),
            previous_driver,
            previous_override,
            changed: true,
        })
    }

    /// Best effort after a failed bind: put the old override back, unbind whatever bound,
    /// and probe so the host driver can take the device again.
    fn roll_back_bind(&self, previous_override: Option<&str>) {
        let steps = self
            .set_driver_override(previous_override)
            .and_then(|()| self.unbind())
            .and_then(|_| self.probe());
        if let Err(err) = steps {
            warn!(bdf = %self.address(), error = %err, "rolling back a failed bind failed");
        }
    }

    /// Gives the device back to the host: clears `driver_override`, unbinds, and probes.
    /// With `expect`, verifies that driver took it ([`BindError::NotBound`] if not).
    /// Returns the driver the device is on afterwards.
    pub fn reattach(&self, expect: Option<&str>) -> Result<Option<String>, BindError> {
        if let Some(name) = expect {
            check_name("driver", name)?;
        }
        self.set_driver_override(None)?;
        self.unbind()?;
        self.probe()?;
        let found = self.driver()?;
        if let Some(wanted) = expect
            && found.as_deref() != Some(wanted)
        {
            return Err(BindError::NotBound {
                address: self.address(),
                wanted: wanted.to_owned(),
                found,
            });
        }
        info!(bdf = %self.address(), driver = ?found, "reattached to the host");
        Ok(found)
    }

    /// Resets the function through its `reset` attribute (the kernel picks the method).
    pub fn reset(&self) -> Result<(), BindError> {
        let path = self.attr_path("reset");
        if std::fs::symlink_metadata(&path).is_err() {
            return Err(BindError::NoReset {
                address: self.address(),
                path: path.display().to_string(),
            });
        }
        self.sysfs()
            .write_attribute(&path, "1")
            .map_err(|source| BindError::Reset {
                address: self.address(),
                source,
            })?;
        info!(bdf = %self.address(), "reset the function; nothing to undo");
        Ok(())
    }
}
