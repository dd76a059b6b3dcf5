//! Giving a PCI device back to the host: the one routine that release, a prepare's
//! rollback, `reattach` and `recover` share.
//!
//! A device is *on its host driver* when it is bound to a driver that is not a vfio driver
//! (a host driver or `pci-stub`).
//! Anything else (on vfio-pci or a variant, unbound, or carrying a `driver_override`) is
//! given back the way libvirt's `virPCIDeviceReattach` does it: clear the override, unbind
//! if bound, `drivers_probe`, then read back what bound. An unbound device is probed too:
//! a release or reattach killed after the unbind and before the probe leaves exactly that,
//! and only the probe gives the device back. A device already on a host driver is left
//! there (a stale override is cleared, nothing is unbound).
//!
//! When the caller knows the driver the device had before it was taken (the original
//! driver in the registry or the intent), the result is verified against it:
//! [`BindError::NotBound`] names what the kernel did instead. Without one, a probe that
//! binds nothing is [`ReattachOutcome::Driverless`], never a quiet success.

use std::fmt;

use plugboard_sysfs::{BindError, PciDevice};
use serde::{Deserialize, Serialize};

use crate::fault;

/// What giving a device back to the host did.
///
/// JSON (stable, internally tagged): `{"outcome": "reattached", "driver": "e1000e"}`,
/// `{"outcome": "already_on_host", "driver": "e1000e"}`, `{"outcome": "driverless"}`.
/// [`Display`](fmt::Display) prints a sentence without the address ("reattached to
/// e1000e", "left with no driver: no host driver took it").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReattachOutcome {
    /// A host driver took the device (verified against the original driver when known).
    Reattached {
        /// The driver it is on now.
        driver: String,
    },
    /// It was already on a host driver: nothing was unbound (a stale `driver_override` was
    /// cleared).
    AlreadyOnHost {
        /// That driver.
        driver: String,
    },
    /// No driver took the device: it is left unbound. Not a success: nothing on the host
    /// can use it until a driver is bound by hand (or its module is loaded and it is
    /// reattached again).
    Driverless,
}

impl ReattachOutcome {
    /// The host driver the device is on, `None` when it was left without one.
    pub fn driver(&self) -> Option<&str> {
        match self {
            Self::Reattached { driver } | Self::AlreadyOnHost { driver } => Some(driver),
            Self::Driverless => None,
        }
    }

    /// True when the device was left without a driver.
    pub fn is_driverless(&self) -> bool {
        matches!(self, Self::Driverless)
    }
}

impl fmt::Display for ReattachOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reattached { driver } => write!(f, "reattached to {driver}"),
            Self::AlreadyOnHost { driver } => write!(f, "already on host driver {driver}"),
            Self::Driverless => f.write_str("left with no driver: no host driver took it"),
        }
    }
}

/// Gives `device` back to the host, verifying `original` when it is known (see the module
/// doc). Fault points: `give_back.cleared` (override cleared), `give_back.unbound`
/// (unbound, not yet probed).
pub(crate) fn give_back(
    device: &PciDevice,
    original: Option<&str>,
) -> Result<ReattachOutcome, BindError> {
    let driver = device.driver()?;
    let kind = device.driver_kind()?;
    let stale_override = device.driver_override()?;
    if kind.is_host_side()
        && let Some(driver) = driver
    {
        if stale_override.is_some() {
            device.set_driver_override(None)?;
        }
        return Ok(ReattachOutcome::AlreadyOnHost { driver });
    }
    device.set_driver_override(None)?;
    fault::point("give_back.cleared");
    if driver.is_some() {
        device.unbind()?;
    }
    fault::point("give_back.unbound");
    device.probe()?;
    let found = device.driver()?;
    let outcome = match (found, original) {
        (found, Some(wanted)) if found.as_deref() != Some(wanted) => {
            return Err(BindError::NotBound {
                address: device.address(),
                wanted: wanted.to_owned(),
                found,
            });
        }
        (Some(driver), _) => ReattachOutcome::Reattached { driver },
        (None, _) => ReattachOutcome::Driverless,
    };
    tracing::info!(bdf = %device.address(), %outcome, "given back to the host");
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;

    #[test]
    fn outcomes_have_snake_case_json_and_sentences() {
        let cases = [
            (
                ReattachOutcome::Reattached {
                    driver: "e1000e".to_owned(),
                },
                serde_json::json!({"outcome": "reattached", "driver": "e1000e"}),
                "reattached to e1000e",
            ),
            (
                ReattachOutcome::AlreadyOnHost {
                    driver: "e1000e".to_owned(),
                },
                serde_json::json!({"outcome": "already_on_host", "driver": "e1000e"}),
                "already on host driver e1000e",
            ),
            (
                ReattachOutcome::Driverless,
                serde_json::json!({"outcome": "driverless"}),
                "left with no driver: no host driver took it",
            ),
        ];
        for (outcome, json, text) in cases {
            assert_eq!(serde_json::to_value(&outcome).unwrap(), json);
            assert_eq!(
                serde_json::from_value::<ReattachOutcome>(json).unwrap(),
                outcome
            );
            assert_eq!(outcome.to_string(), text);
            assert_eq!(outcome.is_driverless(), outcome.driver().is_none());
        }
    }

    #[test]
    fn every_state_off_the_host_driver_is_given_back() {
        let fx = Fixture::new();
        let sysfs = fx.kernel.sysfs();
        let dev = |a: &str| sysfs.pci_device(addr(a)).unwrap();
        // On vfio-pci, with its override.
        dev(NIC1).bind("vfio-pci").unwrap();
        // Unbound, no override (a give-back killed before its probe).
        dev(NIC2).unbind().unwrap();
        // Unbound with the override still set (a bind killed before its probe).
        dev(NIC3).set_driver_override(Some("vfio-pci")).unwrap();
        dev(NIC3).unbind().unwrap();
        for nic in [NIC1, NIC2, NIC3] {
            assert_eq!(
                give_back(&dev(nic), Some("e1000e")).unwrap(),
                ReattachOutcome::Reattached {
                    driver: "e1000e".to_owned()
                },
                "{nic}"
            );
            assert_eq!(fx.driver(nic).as_deref(), Some("e1000e"), "{nic}");
            assert_eq!(fx.driver_override(nic), None, "{nic}");
        }
        // On its host driver with a stale override: cleared, never unbound.
        dev(NIC1).set_driver_override(Some("vfio-pci")).unwrap();
        let writes = fx.kernel.writes().len();
        assert_eq!(
            give_back(&dev(NIC1), None).unwrap(),
            ReattachOutcome::AlreadyOnHost {
                driver: "e1000e".to_owned()
            }
        );
        assert_eq!(fx.driver_override(NIC1), None);
        assert_eq!(fx.kernel.writes().len(), writes + 1, "only the override");
    }

    #[test]
    fn a_probe_that_binds_nothing_is_driverless_or_an_error_naming_the_original() {
        let fx = Fixture::with(
            host_spec().driver(plugboard_sysfs::fake::DriverSpec::new("e1000e").fail_probe(NIC1)),
        );
        let dev = fx.kernel.sysfs().pci_device(addr(NIC1)).unwrap();
        dev.bind("vfio-pci").unwrap();
        let err = give_back(&dev, Some("e1000e")).unwrap_err();
        assert!(
            matches!(&err, BindError::NotBound { wanted, found: None, .. } if wanted == "e1000e"),
            "{err:?}"
        );
        assert_eq!(fx.driver(NIC1), None);
        // Without an original driver to check, the outcome says it.
        assert_eq!(give_back(&dev, None).unwrap(), ReattachOutcome::Driverless);
    }
}
