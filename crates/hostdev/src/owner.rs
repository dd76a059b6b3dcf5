//! The owner of a device: a (driver, domain) pair, as in libvirt, where the driver names
//! the runtime that asked ("qemu", "kata", "cloud-hypervisor") and the domain names the VM.
//! Ownership is compared across drivers: two runtimes can never hold one device.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// Why a string is not an owner.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OwnerError {
    /// No `/` between driver and domain.
    #[error("owner {0:?} is not DRIVER/DOMAIN")]
    NoSlash(String),
    /// The driver or the domain is empty, too long, or holds a control character.
    #[error("owner {0:?}: driver and domain must be 1 to 255 printable characters")]
    BadPart(String),
}

/// Who holds a device: the runtime (driver) and the VM (domain).
///
/// JSON: `{"driver": "qemu", "domain": "vm1"}`; reading it back checks both parts as
/// [`Owner::new`] does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Owner {
    driver: String,
    domain: String,
}

impl Owner {
    /// Builds an owner, checking both parts.
    pub fn new(driver: &str, domain: &str) -> Result<Self, OwnerError> {
        let ok = |s: &str| !s.is_empty() && s.len() < 256 && !s.chars().any(char::is_control);
        if !ok(driver) || !ok(domain) || driver.contains('/') {
            return Err(OwnerError::BadPart(format!("{driver}/{domain}")));
        }
        Ok(Self {
            driver: driver.to_owned(),
            domain: domain.to_owned(),
        })
    }

    /// Stands in for an owner that a hand-edited registry row lacks.
    pub(crate) fn unknown() -> Self {
        Self {
            driver: "unknown".to_owned(),
            domain: "unknown".to_owned(),
        }
    }

    /// The runtime that holds the device.
    pub fn driver(&self) -> &str {
        &self.driver
    }

    /// The VM that holds the device.
    pub fn domain(&self) -> &str {
        &self.domain
    }
}

impl<'de> Deserialize<'de> for Owner {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Shape {
            driver: String,
            domain: String,
        }
        let shape = Shape::deserialize(deserializer)?;
        Self::new(&shape.driver, &shape.domain).map_err(serde::de::Error::custom)
    }
}

impl FromStr for Owner {
    type Err = OwnerError;

    /// Parses `DRIVER/DOMAIN`; the domain may itself contain `/`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (driver, domain) = s
            .split_once('/')
            .ok_or_else(|| OwnerError::NoSlash(s.to_owned()))?;
        Self::new(driver, domain)
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.driver, self.domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let o: Owner = "qemu/vm-1".parse().unwrap();
        assert_eq!((o.driver(), o.domain()), ("qemu", "vm-1"));
        assert_eq!(o.to_string(), "qemu/vm-1");
        let o: Owner = "kata/pod/x".parse().unwrap();
        assert_eq!(o.domain(), "pod/x");
    }

    #[test]
    fn json_keeps_its_shape_and_is_checked_when_read() {
        let o: Owner = "kata/pod/x".parse().unwrap();
        let json = serde_json::to_value(&o).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"driver": "kata", "domain": "pod/x"})
        );
        assert_eq!(serde_json::from_value::<Owner>(json).unwrap(), o);
        let bad = serde_json::json!({"driver": "", "domain": "vm"});
        serde_json::from_value::<Owner>(bad).unwrap_err();
    }

    #[test]
    fn rejects_bad_owners() {
        for bad in ["", "qemu", "/vm", "qemu/", "qe\nmu/vm"] {
            assert!(bad.parse::<Owner>().is_err(), "{bad:?}");
        }
    }
}
