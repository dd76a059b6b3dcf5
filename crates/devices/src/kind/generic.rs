//! Generic devices: character devices the container sees, which never reach the hypervisor.
//!
//! Kata's `GenericDevice` only counts attachments; so do we. They exist in the manager so
//! that references, dedupe and save/load treat every device alike.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A generic (character) device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenericSpec {
    /// The host path of the node (`/dev/fuse`).
    pub path: PathBuf,
}
