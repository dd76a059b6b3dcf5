//! The VM's pool of PCIe root ports for hotplug, one device function per port.
//!
//! On q35 a hot-plugged PCIe device needs a free root port; the VMM creates the ports at boot
//! and the manager hands them out (Kata kept the equivalent in a package-global map). A pool
//! of size 0 means the VM has no ports and the hypervisor places devices itself.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::index::{IndexError, IndexPool};

/// A root port, by its number in the pool. Shown as its QEMU bus id, `rp<N>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RootPort(u32);

impl RootPort {
    /// The port with this number (the manager's pool hands them out; tests of a hypervisor
    /// build them directly).
    #[must_use]
    pub const fn new(number: u32) -> Self {
        Self(number)
    }

    /// The port's number.
    #[must_use]
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The port's QEMU bus id, `rp<N>`.
    #[must_use]
    pub fn bus_id(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for RootPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rp{}", self.0)
    }
}

/// The free and taken root ports of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootPortPool(IndexPool);

impl RootPortPool {
    /// A pool of `count` ports, `rp0` to `rp<count-1>`, all free.
    #[must_use]
    pub fn new(count: u32) -> Self {
        Self(IndexPool::new(count))
    }

    /// The number of ports.
    #[must_use]
    pub const fn count(&self) -> u32 {
        self.0.limit()
    }

    /// Takes the lowest free port.
    ///
    /// # Errors
    /// [`IndexError::Exhausted`] when every port holds a device.
    pub fn take(&mut self) -> Result<RootPort, IndexError> {
        self.0.take().map(RootPort)
    }

    /// Takes a given port (when loading saved state).
    ///
    /// # Errors
    /// [`IndexError::Unavailable`] when it is taken or not in the pool.
    pub fn take_exact(&mut self, port: RootPort) -> Result<(), IndexError> {
        self.0.take_exact(port.0)
    }

    /// Frees a port.
    ///
    /// # Errors
    /// [`IndexError::NotInUse`] when it is free; nothing changes.
    pub fn release(&mut self, port: RootPort) -> Result<(), IndexError> {
        self.0.release(port.0)
    }

    /// How many ports hold a device.
    #[must_use]
    pub fn used_count(&self) -> usize {
        self.0.used_count()
    }

    /// The ports that hold a device, in order.
    pub fn used(&self) -> impl Iterator<Item = RootPort> + '_ {
        self.0.used().map(RootPort)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_device_per_port_lowest_first() {
        let mut pool = RootPortPool::new(2);
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert_eq!((a.to_string(), b.to_string()), ("rp0".into(), "rp1".into()));
        assert_eq!(pool.take(), Err(IndexError::Exhausted { limit: 2 }));
        pool.release(a).unwrap();
        assert_eq!(pool.take(), Ok(a));
        assert_eq!(
            pool.release(RootPort(5)),
            Err(IndexError::NotInUse { index: 5 })
        );
    }

    #[test]
    fn empty_pool_has_no_ports() {
        let mut pool = RootPortPool::new(0);
        pool.take().unwrap_err();
        assert_eq!(pool.used_count(), 0);
    }
}
