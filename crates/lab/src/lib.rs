//! The Plugboard lab: a small Linux guest with an emulated IOMMU, booted under QEMU, that
//! runs commands and Plugboard's own test binaries and reports back.
//!
//! Everything that writes to sysfs or opens `/dev/vfio` is proven inside this guest, never on
//! the build machine. Host-side tests use this crate to boot a guest, run commands in it over
//! the serial console and hot-plug devices over QMP:
//!
//! ```no_run
//! # fn main() -> Result<(), plugboard_lab::LabError> {
//! let mut guest = plugboard_lab::Guest::boot_default()?;
//! let out = guest.exec("ls /sys/kernel/iommu_groups")?;
//! assert!(out.success());
//! let mut qmp = guest.qmp()?;
//! qmp.execute("query-pci", serde_json::Value::Null)?;
//! guest.shutdown()?;
//! # Ok(()) }
//! ```
//!
//! The machine, the guest's device topology and the scripts are described in `lab/README.md`.

mod accel;
pub mod cargo;
mod console;
mod cpio;
mod error;
mod guest;
mod initramfs;
mod kernel;
pub mod libtest;
pub mod machine;
mod paths;
mod qmp;
mod sys;

pub use accel::{Accel, AccelChoice, kvm_unusable};
pub use console::READY;
pub use cpio::CpioWriter;
pub use error::{LabError, Result};
pub use guest::{BootOptions, ExecOutput, Guest};
pub use initramfs::{Initramfs, shared_libraries};
pub use kernel::kernel;
pub use machine::{
    BootFiles, E1000E_ID, GUINEA_PIGS, HOTPLUG_PORTS, MTTY_PARENT, MachineConfig, NVME_ID,
    NVME_NAMESPACES, SCSI_VENDOR, USB_DEVICE_ID,
};
pub use paths::{cache_dir, lab_dir, workspace_root};
pub use qmp::Qmp;

/// Quotes `arg` for the guest's `sh` (single quotes).
pub fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return arg.to_string();
    }
    format!("'{}'", arg.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("ls"), "ls");
        assert_eq!(shell_quote("/sys/block"), "/sys/block");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
