//! The CDI spec a prepared claim gets: one file per claim in the CDI directory, read by
//! the container runtime (containerd, CRI-O) when the kubelet hands it the CDI ids.
//!
//! The types are named after the CDI specification (`cdiVersion`, `kind`, `devices`,
//! `containerEdits`, `deviceNodes`, `env`); only the fields this driver writes are here.
//! The `container-device-interface` crate (1.1) was not used: its `Spec` can only be made by
//! deserializing (its fields are private), and it pulls jsonschema, reqwest and a C-built
//! TLS library into a node plugin for what is a few serde structs.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::offer::OfferName;

/// The CDI vendor/class of our devices: ids are `plugboard.dev/vfio=<name>`.
pub const CDI_KIND: &str = "plugboard.dev/vfio";

/// The CDI version written: 0.6.0 has `hostPath` on device nodes and annotations, and is
/// read by containerd 1.7+ and CRI-O 1.28+.
pub const CDI_VERSION: &str = "0.6.0";

/// A CDI spec file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// The CDI version.
    pub cdi_version: String,
    /// `vendor/class`.
    pub kind: String,
    /// Free annotations (ours: the claim).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The devices.
    pub devices: Vec<Device>,
}

/// One CDI device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// Its name within the kind.
    pub name: String,
    /// Free annotations (ours: the PCI addresses).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// What the runtime adds to the container.
    pub container_edits: ContainerEdits,
}

/// Changes to a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    /// Environment variables, `NAME=value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Device nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
}

/// A device node made in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    /// Its path in the container.
    pub path: String,
    /// Its path on the host, when not the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    /// `c` (character device).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    pub kind: Option<String>,
}

impl Spec {
    /// The fully qualified CDI id of device `name`: `plugboard.dev/vfio=<name>`.
    #[must_use]
    pub fn id(name: &str) -> String {
        format!("{CDI_KIND}={name}")
    }
}

/// The environment a prepared device gives the container, for the VMM in it to find the
/// device: `PLUGBOARD_<KEY>_ADDRESSES` (the PCI addresses, joined by `,`) and
/// `PLUGBOARD_<KEY>_IOMMU_GROUP` (the group), where `<KEY>` is `PCI_<address>` for a
/// function alone in its group and `GROUP_<n>` for a group offered whole, with every
/// character that is not a letter or digit as `_`:
///
/// ```text
/// PLUGBOARD_PCI_0000_02_00_0_ADDRESSES=0000:02:00.0
/// PLUGBOARD_PCI_0000_02_00_0_IOMMU_GROUP=7
/// PLUGBOARD_GROUP_5_ADDRESSES=0000:01:01.0,0000:01:02.0
/// PLUGBOARD_GROUP_5_IOMMU_GROUP=5
/// ```
///
/// Every device of a container has its own names (a container may hold several), and
/// every device has both.
#[must_use]
pub fn device_env(name: &OfferName, addresses: &[String], group: u32) -> Vec<String> {
    let key = match name {
        OfferName::Function(address) => format!("PCI_{address}"),
        OfferName::Group(n) => format!("GROUP_{n}"),
    };
    let key: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    vec![
        format!("PLUGBOARD_{key}_ADDRESSES={}", addresses.join(",")),
        format!("PLUGBOARD_{key}_IOMMU_GROUP={group}"),
    ]
}

/// The spec file of claim `uid` in `dir`.
#[must_use]
pub fn spec_path(dir: &Path, uid: &str) -> PathBuf {
    dir.join(format!("plugboard.dev-vfio-{uid}.json"))
}

/// Writes `spec` to `path` atomically (a temp file renamed over it), so a runtime never
/// reads half a spec.
///
/// # Errors
/// The directory or file cannot be written.
pub fn write(path: &Path, spec: &Spec) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(spec).map_err(std::io::Error::other)?;
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&text)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Removes the spec at `path`; a missing one is fine.
///
/// # Errors
/// The file exists and cannot be removed.
pub fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
