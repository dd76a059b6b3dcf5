//! Mediated devices (`bus/mdev/devices/<uuid>`): their type, parent and device API.
//!
//! An mdev is a slice of a parent device (a vGPU, a crypto queue) that VFIO hands out like a
//! PCI function. Its `mdev_type` link points into the parent's
//! `mdev_supported_types/<type>/`, which holds the type's `name` and `device_api`.

use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::address::PciAddress;
use crate::attr;
use crate::error::{SysfsError, check_name};
use crate::sysfs::Sysfs;

/// One mediated device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mdev {
    /// Its UUID (the directory name).
    pub uuid: String,
    /// The type ID, e.g. `nvidia-63` or `i915-GVTg_V5_4`.
    pub type_id: String,
    /// The type's human name, if the parent gives one.
    pub type_name: Option<String>,
    /// `vfio-pci`, `vfio-ccw` or `vfio-ap`.
    pub device_api: String,
    /// The parent PCI device, when the parent is one.
    pub parent: Option<PciAddress>,
    /// Its IOMMU group.
    pub iommu_group: Option<u32>,
    /// Its sysfs directory (`bus/mdev/devices/<uuid>`).
    pub path: PathBuf,
}

fn is_uuid(name: &str) -> bool {
    let parts: Vec<&str> = name.split('-').collect();
    parts.len() == 5
        && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Sysfs {
    /// The mdev UUIDs under `bus/mdev/devices`, sorted.
    pub fn mdev_uuids(&self) -> Result<Vec<String>, SysfsError> {
        Ok(attr::list_dir(&self.path("bus/mdev/devices"))?
            .into_iter()
            .filter(|n| is_uuid(n))
            .collect())
    }

    /// The mdev `uuid`.
    pub fn mdev(&self, uuid: &str) -> Result<Mdev, SysfsError> {
        check_name("mdev", uuid)?;
        let path = self.path("bus/mdev/devices").join(uuid);
        if !is_uuid(uuid) || fs::symlink_metadata(&path).is_err() {
            return Err(SysfsError::NotFound {
                what: format!("mdev {uuid}"),
                path,
            });
        }
        let type_link = path.join("mdev_type");
        let type_id = attr::link_basename(&type_link)?.ok_or_else(|| SysfsError::NotFound {
            what: format!("type of mdev {uuid}"),
            path: type_link.clone(),
        })?;
        let type_name = attr::read_optional(&type_link.join("name"))?;
        let device_api = attr::read_trimmed(&type_link.join("device_api"))?;
        let real = fs::canonicalize(&path).map_err(|e| SysfsError::read(&path, e))?;
        let parent = real
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok());
        let group_link = path.join("iommu_group");
        let iommu_group = attr::link_basename(&group_link)?
            .map(|n| {
                n.parse().map_err(|_| {
                    SysfsError::parse(&group_link, &n, "a link to kernel/iommu_groups/<N>")
                })
            })
            .transpose()?;
        Ok(Mdev {
            uuid: uuid.to_owned(),
            type_id,
            type_name,
            device_api,
            parent,
            iommu_group,
            path,
        })
    }

    /// Every mdev, sorted by UUID.
    pub fn mdevs(&self) -> Result<Vec<Mdev>, SysfsError> {
        self.mdev_uuids()?.iter().map(|u| self.mdev(u)).collect()
    }
}
