//! Which accelerator runs the guest: KVM where it really works, TCG otherwise.
//!
//! These build machines have a `/dev/kvm` from `kvm_pvm` (no vmx/svm): QEMU with `-cpu host`
//! dies there on an MSR assertion, so PVM is detected by `/sys/module/kvm_pvm` and skipped.
//! Elsewhere KVM is tried first and the guest falls back to TCG if QEMU fails to boot with it.
//! `PLUGBOARD_LAB_ACCEL=tcg|kvm|auto` overrides (kvm: try KVM even under PVM, then fall back).

use std::fmt;
use std::path::Path;

/// The accelerator a guest actually ran with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization (`-accel kvm -cpu host`).
    Kvm,
    /// QEMU's emulator (`-accel tcg -cpu max`).
    Tcg,
}

impl Accel {
    /// The QEMU arguments that select it.
    pub fn qemu_args(self) -> [&'static str; 4] {
        match self {
            Self::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Self::Tcg => ["-accel", "tcg", "-cpu", "max"],
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        })
    }
}

/// What the caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// KVM if usable and not PVM (falling back to TCG if it fails), else TCG.
    #[default]
    Auto,
    /// Try KVM even where it looks unusable, fall back to TCG.
    Kvm,
    /// TCG only.
    Tcg,
}

impl AccelChoice {
    /// Reads `PLUGBOARD_LAB_ACCEL` (auto when unset or unknown).
    pub fn from_env() -> Self {
        match std::env::var("PLUGBOARD_LAB_ACCEL").as_deref() {
            Ok("kvm") => Self::Kvm,
            Ok("tcg") => Self::Tcg,
            _ => Self::Auto,
        }
    }

    /// The accelerators to try, in order, and why KVM was left out (if it was).
    pub fn plan(self) -> (Vec<Accel>, Option<String>) {
        match self {
            Self::Tcg => (vec![Accel::Tcg], Some("PLUGBOARD_LAB_ACCEL=tcg".into())),
            Self::Kvm => (vec![Accel::Kvm, Accel::Tcg], None),
            Self::Auto => match kvm_unusable(Path::new("/")) {
                None => (vec![Accel::Kvm, Accel::Tcg], None),
                Some(why) => (vec![Accel::Tcg], Some(why)),
            },
        }
    }
}

/// Why KVM cannot run a stock guest on the machine rooted at `root`, or `None` if it may.
pub fn kvm_unusable(root: &Path) -> Option<String> {
    if root.join("sys/module/kvm_pvm").exists() {
        return Some("/dev/kvm is kvm_pvm (no vmx/svm), which cannot run a stock guest".into());
    }
    let dev = root.join("dev/kvm");
    if !dev.exists() {
        return Some("no /dev/kvm".into());
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)
    {
        Ok(_) => None,
        Err(e) => Some(format!("cannot open {}: {e}", dev.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_is_detected_by_its_module() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("sys/module/kvm_pvm")).unwrap();
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("dev/kvm"), "").unwrap();
        assert!(kvm_unusable(root.path()).unwrap().contains("kvm_pvm"));
        std::fs::remove_dir_all(root.path().join("sys")).unwrap();
        assert_eq!(kvm_unusable(root.path()), None);
        std::fs::remove_file(root.path().join("dev/kvm")).unwrap();
        assert_eq!(kvm_unusable(root.path()).as_deref(), Some("no /dev/kvm"));
    }

    #[test]
    fn tcg_choice_never_tries_kvm() {
        assert_eq!(AccelChoice::Tcg.plan().0, vec![Accel::Tcg]);
        assert_eq!(AccelChoice::Kvm.plan().0, vec![Accel::Kvm, Accel::Tcg]);
        assert_eq!(Accel::Tcg.qemu_args(), ["-accel", "tcg", "-cpu", "max"]);
    }
}
