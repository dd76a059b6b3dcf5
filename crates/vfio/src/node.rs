//! Opening the kernel's VFIO and iommufd nodes.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

/// Opens a VFIO or iommufd node (`/dev/vfio/vfio`, `/dev/vfio/<group>`, a device cdev,
/// `/dev/iommu`) for reading and writing, as every one of them is used.
pub(crate) fn open_node(path: &Path) -> io::Result<OwnedFd> {
    Ok(OpenOptions::new().read(true).write(true).open(path)?.into())
}
