//! Interrupts of a device: what each index offers (`VFIO_DEVICE_GET_IRQ_INFO`) and wiring
//! them to eventfds (`VFIO_DEVICE_SET_IRQS`).
//!
//! A VFIO device reports, per IRQ index (for PCI: INTx, MSI, MSI-X, error, request), how
//! many vectors it has and how they behave (signalled by eventfd, maskable, masked
//! automatically after firing, resizable). A VMM gives the kernel one eventfd per vector
//! (which it then hands to KVM as an irqfd); the kernel signals it when the device raises
//! that vector. INTx is level-triggered, so vfio-pci masks it when it fires and the VMM
//! unmasks it once the guest has handled it. The *request* index is how the kernel asks the
//! holder to give the device back (its driver is being unbound): a holder that wires it
//! learns that it should close the device instead of blocking the unbind. The *error* index
//! reports an uncorrectable PCIe error (AER).
//!
//! `VFIO_DEVICE_SET_IRQS` takes a variable-length `vfio_irq_set`: a fixed header followed by
//! one datum per vector (an eventfd here). [`IrqSet`] builds it in 4-byte words, so it is
//! aligned as the struct needs, with the header fields at the offsets the `vfio-bindings`
//! struct gives (checked at compile time). Every range is checked against the index's vector
//! count before the ioctl, and errors name the device, the index and the range, and keep
//! errno.

use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::AsRawFd;

use serde::{Deserialize, Deserializer, Serialize};
use tracing::debug;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE, VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX, vfio_irq_info, vfio_irq_set,
};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::device::VfioDevice;
use crate::ioctl;
use crate::region::{flags_from_names, names};

/// The flags of an IRQ index, with names for the ones VFIO defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "Vec<&'static str>")]
pub struct IrqFlags(u32);

impl<'de> Deserialize<'de> for IrqFlags {
    /// Reads the list of names; `other` comes back as one undefined bit.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        flags_from_names(deserializer, &Self::NAMES).map(Self)
    }
}

impl IrqFlags {
    const NAMES: [(u32, &'static str); 4] = [
        (VFIO_IRQ_INFO_EVENTFD, "eventfd"),
        (VFIO_IRQ_INFO_MASKABLE, "maskable"),
        (VFIO_IRQ_INFO_AUTOMASKED, "automasked"),
        (VFIO_IRQ_INFO_NORESIZE, "noresize"),
    ];

    /// The raw bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// The vectors can be masked and unmasked (`VFIO_IRQ_SET_ACTION_MASK`).
    pub fn maskable(self) -> bool {
        self.0 & VFIO_IRQ_INFO_MASKABLE != 0
    }

    /// The kernel masks a vector when it fires (INTx); the holder unmasks it.
    pub fn automasked(self) -> bool {
        self.0 & VFIO_IRQ_INFO_AUTOMASKED != 0
    }

    /// The names of the set flags (`other` for unknown bits).
    pub fn names(self) -> Vec<&'static str> {
        names(self.0, &Self::NAMES)
    }
}

impl From<IrqFlags> for Vec<&'static str> {
    fn from(flags: IrqFlags) -> Self {
        flags.names()
    }
}

/// One IRQ index of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IrqInfo {
    /// The index (for PCI: INTx 0, MSI 1, MSI-X 2, error 3, request 4).
    pub index: u32,
    /// How its vectors behave.
    pub flags: IrqFlags,
    /// How many vectors it has (0: not available on this device).
    pub count: u32,
}

impl IrqInfo {
    pub(crate) fn from_kernel(info: &vfio_irq_info) -> Self {
        Self {
            index: info.index,
            flags: IrqFlags(info.flags),
            count: info.count,
        }
    }

    /// The PCI name of the index: `INTx`, `MSI`, `MSI-X`, `ERR`, `REQ`, else `irq N`.
    pub fn pci_name(&self) -> String {
        match IrqIndex::from_raw(self.index) {
            Some(index) => index.name().into(),
            None => format!("irq {}", self.index),
        }
    }
}

/// A PCI IRQ index of a VFIO device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IrqIndex {
    /// The legacy, level-triggered pin (one vector; maskable; automasked when it fires).
    Intx,
    /// MSI (up to 32 vectors; the count is fixed once enabled).
    Msi,
    /// MSI-X (up to 2048 vectors).
    Msix,
    /// Uncorrectable PCIe errors (AER), one vector.
    Error,
    /// The kernel asks the holder to release the device (its driver is being unbound), one
    /// vector.
    Request,
}

impl IrqIndex {
    /// Every index, in the kernel's order.
    pub const ALL: [IrqIndex; 5] = [
        IrqIndex::Intx,
        IrqIndex::Msi,
        IrqIndex::Msix,
        IrqIndex::Error,
        IrqIndex::Request,
    ];

    /// The kernel's number for the index (`VFIO_PCI_*_IRQ_INDEX`).
    pub fn raw(self) -> u32 {
        match self {
            IrqIndex::Intx => VFIO_PCI_INTX_IRQ_INDEX,
            IrqIndex::Msi => VFIO_PCI_MSI_IRQ_INDEX,
            IrqIndex::Msix => VFIO_PCI_MSIX_IRQ_INDEX,
            IrqIndex::Error => VFIO_PCI_ERR_IRQ_INDEX,
            IrqIndex::Request => VFIO_PCI_REQ_IRQ_INDEX,
        }
    }

    /// The index for the kernel's number, if it is a PCI one.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|i| i.raw() == raw)
    }

    /// The PCI name: `INTx`, `MSI`, `MSI-X`, `ERR`, `REQ`.
    pub fn name(self) -> &'static str {
        match self {
            IrqIndex::Intx => "INTx",
            IrqIndex::Msi => "MSI",
            IrqIndex::Msix => "MSI-X",
            IrqIndex::Error => "ERR",
            IrqIndex::Request => "REQ",
        }
    }
}

impl std::fmt::Display for IrqIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why wiring a device's interrupts failed. Every variant names the device and the index.
#[derive(Debug, thiserror::Error)]
pub enum IrqError {
    /// The device has no vectors at this index (e.g. no INTx pin, or ERR on conventional PCI).
    #[error("VFIO device {device} has no {index} interrupt")]
    NoIndex {
        /// The device name.
        device: String,
        /// The index asked for.
        index: IrqIndex,
    },
    /// The vectors asked for are not all within the index's count (or none were asked for).
    #[error(
        "VFIO device {device}: {index} vectors {start}..{end} are outside the {count} it has",
        end = u64::from(*start) + u64::from(*len)
    )]
    OutOfRange {
        /// The device name.
        device: String,
        /// The index.
        index: IrqIndex,
        /// The first vector asked for.
        start: u32,
        /// How many vectors were asked for.
        len: u32,
        /// How many the index has.
        count: u32,
    },
    /// The index cannot be masked (vfio-pci masks only INTx).
    #[error("VFIO device {device}: {index} cannot be masked or unmasked (only INTx can)")]
    NotMaskable {
        /// The device name.
        device: String,
        /// The index.
        index: IrqIndex,
    },
    /// An eventfd for the request or error notifier could not be made.
    #[error("VFIO device {device}: cannot create an eventfd for {index}")]
    Eventfd {
        /// The device name.
        device: String,
        /// The index.
        index: IrqIndex,
        /// errno from `eventfd`.
        #[source]
        source: io::Error,
    },
    /// The kernel refused `VFIO_DEVICE_SET_IRQS`.
    #[error("VFIO device {device}: {action} {index} vectors {start}..{end} failed", end = u64::from(*start) + u64::from(*len))]
    SetIrqs {
        /// The device name.
        device: String,
        /// The index.
        index: IrqIndex,
        /// What was asked: `enable`, `disable`, `mask`, `unmask`, `trigger`.
        action: &'static str,
        /// The first vector.
        start: u32,
        /// How many vectors.
        len: u32,
        /// errno from the kernel.
        #[source]
        source: io::Error,
    },
}

/// A `vfio_irq_set` with its data, ready for `VFIO_DEVICE_SET_IRQS`: the header fields at
/// their offsets in the kernel's struct, then one `i32` per vector for eventfd data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IrqSet(Vec<u32>);

// The header is five `u32`s and the data starts right after; building in words relies on it.
const _: () = {
    assert!(offset_of!(vfio_irq_set, argsz) == 0);
    assert!(offset_of!(vfio_irq_set, flags) == 4);
    assert!(offset_of!(vfio_irq_set, index) == 8);
    assert!(offset_of!(vfio_irq_set, start) == 12);
    assert!(offset_of!(vfio_irq_set, count) == 16);
    assert!(offset_of!(vfio_irq_set, data) == 20);
    assert!(size_of::<vfio_irq_set>() == 20);
};

impl IrqSet {
    const HEADER_WORDS: usize = size_of::<vfio_irq_set>() / 4;

    fn header(flags: u32, index: u32, start: u32, count: u32, data_words: usize) -> Self {
        let mut words = Vec::with_capacity(Self::HEADER_WORDS + data_words);
        let bytes = (Self::HEADER_WORDS + data_words).saturating_mul(4);
        words.extend([
            u32::try_from(bytes).unwrap_or(u32::MAX),
            flags,
            index,
            start,
            count,
        ]);
        Self(words)
    }

    /// Signal `fds[k]` for vector `start + k`; a `None` unwires that vector.
    pub(crate) fn eventfds(index: u32, start: u32, fds: &[Option<i32>]) -> Self {
        Self::eventfds_for(VFIO_IRQ_SET_ACTION_TRIGGER, index, start, fds)
    }

    /// Eventfd data for `action`: trigger (the kernel signals them) or unmask (the kernel
    /// unmasks when they are signalled).
    pub(crate) fn eventfds_for(action: u32, index: u32, start: u32, fds: &[Option<i32>]) -> Self {
        let count = u32::try_from(fds.len()).unwrap_or(u32::MAX);
        let mut set = Self::header(
            VFIO_IRQ_SET_DATA_EVENTFD | action,
            index,
            start,
            count,
            fds.len(),
        );
        // The kernel reads each datum as an `int`; -1 means "no eventfd".
        set.0
            .extend(fds.iter().map(|fd| fd.unwrap_or(-1).cast_unsigned()));
        set
    }

    /// An action on `count` vectors from `start` with no data: trigger, mask or unmask; and
    /// with `count` 0 and trigger, disable the whole index.
    pub(crate) fn no_data(action: u32, index: u32, start: u32, count: u32) -> Self {
        Self::header(VFIO_IRQ_SET_DATA_NONE | action, index, start, count, 0)
    }

    pub(crate) fn words(&self) -> &[u32] {
        &self.0
    }
}

/// Checks that `[start, start + len)` is a non-empty range within `count` vectors.
pub(crate) fn vectors_fit(start: u32, len: u32, count: u32) -> bool {
    len > 0 && u64::from(start) + u64::from(len) <= u64::from(count)
}

/// Interrupts (`VFIO_DEVICE_SET_IRQS`), in either interface.
impl VfioDevice {
    /// The IRQ info of `index`, or [`IrqError::NoIndex`] if the device has no vector there.
    pub fn irq(&self, index: IrqIndex) -> Result<&IrqInfo, IrqError> {
        self.irqs()
            .iter()
            .find(|i| i.index == index.raw() && i.count > 0)
            .ok_or_else(|| IrqError::NoIndex {
                device: self.name().to_owned(),
                index,
            })
    }

    fn checked_vectors(&self, index: IrqIndex, start: u32, len: u32) -> Result<(), IrqError> {
        let count = self.irq(index)?.count;
        if vectors_fit(start, len, count) {
            Ok(())
        } else {
            Err(IrqError::OutOfRange {
                device: self.name().to_owned(),
                index,
                start,
                len,
                count,
            })
        }
    }

    fn set_irqs(
        &self,
        index: IrqIndex,
        action: &'static str,
        start: u32,
        len: u32,
        set: &IrqSet,
    ) -> Result<(), IrqError> {
        ioctl::device_set_irqs(self.as_fd(), set.words()).map_err(|source| IrqError::SetIrqs {
            device: self.name().to_owned(),
            index,
            action,
            start,
            len,
            source,
        })?;
        debug!(device = self.name(), %index, action, start, len, "VFIO_DEVICE_SET_IRQS");
        Ok(())
    }

    /// Wires vectors `start .. start + fds.len()` of `index` to `fds`: from now on the
    /// kernel signals `fds[k]` when the device raises vector `start + k`. The first call on
    /// MSI or MSI-X enables that mode on the device with `start + fds.len()` vectors
    /// (vfio-pci then disables INTx); later calls rewire vectors of the enabled mode. MSI's
    /// vector count is fixed once enabled: [`VfioDevice::disable_irq`] first to change it.
    pub fn enable_irq(
        &self,
        index: IrqIndex,
        start: u32,
        fds: &[&EventFd],
    ) -> Result<(), IrqError> {
        let len = u32::try_from(fds.len()).unwrap_or(u32::MAX);
        self.checked_vectors(index, start, len)?;
        let raw: Vec<Option<i32>> = fds.iter().map(|fd| Some(fd.as_raw_fd())).collect();
        let set = IrqSet::eventfds(index.raw(), start, &raw);
        self.set_irqs(index, "enable", start, len, &set)
    }

    /// Unwires vectors `start .. start + len` of `index` (their eventfds are released), and
    /// leaves the others and the mode as they are. For MSI-X the unwired vectors are masked
    /// at the device, which then only sets their pending bits.
    pub fn disable_vectors(&self, index: IrqIndex, start: u32, len: u32) -> Result<(), IrqError> {
        self.checked_vectors(index, start, len)?;
        let none = vec![None; usize::try_from(len).unwrap_or(0)];
        let set = IrqSet::eventfds(index.raw(), start, &none);
        self.set_irqs(index, "disable", start, len, &set)
    }

    /// Disables the whole index: every vector is unwired and, for MSI and MSI-X, the mode is
    /// turned off on the device.
    pub fn disable_irq(&self, index: IrqIndex) -> Result<(), IrqError> {
        self.irq(index)?;
        let set = IrqSet::no_data(VFIO_IRQ_SET_ACTION_TRIGGER, index.raw(), 0, 0);
        self.set_irqs(index, "disable", 0, 0, &set)
    }

    /// Wires INTx to `fd` (see [`VfioDevice::enable_irq`]). INTx masks itself when it fires;
    /// [`VfioDevice::unmask_irq`] it once the cause is handled.
    pub fn enable_intx(&self, fd: &EventFd) -> Result<(), IrqError> {
        self.enable_irq(IrqIndex::Intx, 0, &[fd])
    }

    /// Enables MSI with one vector per eventfd (vector `k` signals `fds[k]`).
    pub fn enable_msi(&self, fds: &[&EventFd]) -> Result<(), IrqError> {
        self.enable_irq(IrqIndex::Msi, 0, fds)
    }

    /// Enables MSI-X with one vector per eventfd (vector `k` signals `fds[k]`).
    pub fn enable_msix(&self, fds: &[&EventFd]) -> Result<(), IrqError> {
        self.enable_irq(IrqIndex::Msix, 0, fds)
    }

    fn mask_action(
        &self,
        index: IrqIndex,
        start: u32,
        len: u32,
        action: u32,
        name: &'static str,
    ) -> Result<(), IrqError> {
        let info = self.irq(index)?;
        if !info.flags.maskable() {
            return Err(IrqError::NotMaskable {
                device: self.name().to_owned(),
                index,
            });
        }
        self.checked_vectors(index, start, len)?;
        let set = IrqSet::no_data(action, index.raw(), start, len);
        self.set_irqs(index, name, start, len, &set)
    }

    /// Masks vectors `start .. start + len` (vfio-pci: INTx only, by `DisINTx`): the device
    /// may still raise them, but no eventfd is signalled until they are unmasked.
    pub fn mask_irq(&self, index: IrqIndex, start: u32, len: u32) -> Result<(), IrqError> {
        self.mask_action(index, start, len, VFIO_IRQ_SET_ACTION_MASK, "mask")
    }

    /// Unmasks vectors `start .. start + len`; an INTx still pending fires again at once.
    pub fn unmask_irq(&self, index: IrqIndex, start: u32, len: u32) -> Result<(), IrqError> {
        self.mask_action(index, start, len, VFIO_IRQ_SET_ACTION_UNMASK, "unmask")
    }

    /// Makes the kernel unmask vector `vector` of `index` whenever `fd` is signalled (INTx's
    /// *resample* eventfd: a VMM gives the same eventfd to KVM as the irqfd's resamplefd, so
    /// the guest's EOI unmasks the line without a trip through the VMM). `None` removes it.
    pub fn set_unmask_eventfd(
        &self,
        index: IrqIndex,
        vector: u32,
        fd: Option<&EventFd>,
    ) -> Result<(), IrqError> {
        let info = self.irq(index)?;
        if !info.flags.maskable() {
            return Err(IrqError::NotMaskable {
                device: self.name().to_owned(),
                index,
            });
        }
        self.checked_vectors(index, vector, 1)?;
        let raw = [Some(fd.map_or(-1, AsRawFd::as_raw_fd))];
        let set = IrqSet::eventfds_for(VFIO_IRQ_SET_ACTION_UNMASK, index.raw(), vector, &raw);
        self.set_irqs(index, "set the unmask eventfd of", vector, 1, &set)
    }

    /// Signals the eventfds of vectors `start .. start + len` as if the device had raised
    /// them (the kernel's loopback, for tests of the wiring).
    pub fn trigger_irq(&self, index: IrqIndex, start: u32, len: u32) -> Result<(), IrqError> {
        self.checked_vectors(index, start, len)?;
        let set = IrqSet::no_data(VFIO_IRQ_SET_ACTION_TRIGGER, index.raw(), start, len);
        self.set_irqs(index, "trigger", start, len, &set)
    }

    fn notifier(&self, index: IrqIndex) -> Result<EventFd, IrqError> {
        let fd = EventFd::new(EFD_NONBLOCK).map_err(|source| IrqError::Eventfd {
            device: self.name().to_owned(),
            index,
            source,
        })?;
        self.enable_irq(index, 0, &[&fd])?;
        Ok(fd)
    }

    /// Wires the request index to a new non-blocking eventfd and returns it. The kernel
    /// signals it when someone unbinds the device from vfio-pci while this holder has it open
    /// (the unbind waits until every fd of the device is closed, re-signalling now and then):
    /// a holder that polls it learns to [`VfioDevice::close`] the device and give it back.
    pub fn request_notifier(&self) -> Result<EventFd, IrqError> {
        self.notifier(IrqIndex::Request)
    }

    /// Wires the error index (uncorrectable PCIe errors, AER) to a new non-blocking eventfd
    /// and returns it. Only PCIe devices have it.
    pub fn error_notifier(&self) -> Result<EventFd, IrqError> {
        self.notifier(IrqIndex::Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_flags() {
        let info = IrqInfo::from_kernel(&vfio_irq_info {
            argsz: 16,
            flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
            index: 2,
            count: 5,
        });
        assert_eq!(info.pci_name(), "MSI-X");
        assert_eq!(info.flags.names(), ["eventfd", "noresize"]);
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"index": 2, "flags": ["eventfd", "noresize"], "count": 5})
        );
        assert_eq!(serde_json::from_value::<IrqInfo>(json).unwrap(), info);
    }
}

#[cfg(test)]
mod set_tests {
    use super::*;

    #[test]
    fn an_eventfd_set_is_the_kernel_struct_then_one_int_per_vector() {
        let set = IrqSet::eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 2, &[Some(7), None, Some(9)]);
        assert_eq!(
            set.words(),
            [
                32, // argsz: 20-byte header + 3 x 4
                VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                2,
                2,
                3,
                7,
                u32::MAX, // -1: unwire
                9
            ]
        );
        // Read back through the bindings' struct, as the kernel would.
        let bytes: Vec<u8> = set.words().iter().flat_map(|w| w.to_ne_bytes()).collect();
        let field = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!(field(offset_of!(vfio_irq_set, argsz)), 32);
        assert_eq!(field(offset_of!(vfio_irq_set, index)), 2);
        assert_eq!(field(offset_of!(vfio_irq_set, start)), 2);
        assert_eq!(field(offset_of!(vfio_irq_set, count)), 3);
        assert_eq!(field(offset_of!(vfio_irq_set, data)), 7);
    }

    #[test]
    fn a_no_data_set_is_just_the_header() {
        let disable = IrqSet::no_data(VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSI_IRQ_INDEX, 0, 0);
        assert_eq!(
            disable.words(),
            [
                20,
                VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                1,
                0,
                0
            ]
        );
        let resample = IrqSet::eventfds_for(
            VFIO_IRQ_SET_ACTION_UNMASK,
            VFIO_PCI_INTX_IRQ_INDEX,
            0,
            &[Some(5)],
        );
        assert_eq!(
            resample.words(),
            [
                24,
                VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK,
                0,
                0,
                1,
                5
            ]
        );
        let unmask = IrqSet::no_data(VFIO_IRQ_SET_ACTION_UNMASK, VFIO_PCI_INTX_IRQ_INDEX, 0, 1);
        assert_eq!(
            unmask.words()[1],
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK
        );
        assert_eq!(unmask.words()[4], 1);
    }

    #[test]
    fn vector_ranges_are_checked_against_the_count() {
        assert!(vectors_fit(0, 1, 1));
        assert!(vectors_fit(3, 2, 5));
        assert!(!vectors_fit(0, 0, 5), "an empty range is refused");
        assert!(!vectors_fit(4, 2, 5));
        assert!(!vectors_fit(0, 1, 0));
        assert!(!vectors_fit(u32::MAX, 2, u32::MAX), "no overflow");
    }

    #[test]
    fn the_set_ioctl_refuses_a_buffer_shorter_than_its_argsz() {
        let file = tempfile::tempfile().unwrap();
        use std::os::fd::AsFd;
        let err = ioctl::device_set_irqs(file.as_fd(), &[64, 0, 0, 0, 0]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        let err = ioctl::device_set_irqs(file.as_fd(), &[20, 0, 0]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        // A well-formed set reaches the kernel, which says a plain file is no device.
        let set = IrqSet::no_data(VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0, 0);
        let err = ioctl::device_set_irqs(file.as_fd(), set.words()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
    }

    #[test]
    fn indexes_round_trip_and_errors_name_device_index_and_range() {
        for index in IrqIndex::ALL {
            assert_eq!(IrqIndex::from_raw(index.raw()), Some(index));
        }
        assert_eq!(IrqIndex::from_raw(9), None);
        assert_eq!(serde_json::to_value(IrqIndex::Msix).unwrap(), "msix");
        let err = IrqError::OutOfRange {
            device: "0000:01:00.0".into(),
            index: IrqIndex::Msix,
            start: 4,
            len: 8,
            count: 5,
        };
        assert_eq!(
            err.to_string(),
            "VFIO device 0000:01:00.0: MSI-X vectors 4..12 are outside the 5 it has"
        );
        let err = IrqError::SetIrqs {
            device: "0000:01:00.0".into(),
            index: IrqIndex::Msi,
            action: "mask",
            start: 0,
            len: 1,
            source: io::Error::from_raw_os_error(libc::ENOTTY),
        };
        assert_eq!(
            err.to_string(),
            "VFIO device 0000:01:00.0: mask MSI vectors 0..1 failed"
        );
        let source = std::error::Error::source(&err).unwrap();
        assert!(source.to_string().contains("ioctl"), "{source}");
    }
}
