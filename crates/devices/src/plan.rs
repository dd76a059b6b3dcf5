//! Turning a device into a [`PlugRequest`]: take its block index and root ports, work out its
//! drive name and SCSI address, name its hypervisor objects.
//!
//! Everything taken is given back when a later step fails (the [`Taken`] guard releases in
//! reverse order on drop), so a failed plan leaves the allocators exactly as they were.

use crate::config::ManagerConfig;
use crate::drive_name::DriveName;
use crate::error::DeviceError;
use crate::hypervisor::{BlockPlug, Plug, PlugRequest, VfioFunctionPlug, VfioPlug, VhostUserPlug};
use crate::id::DeviceId;
use crate::index::{BLOCK_INDEX_LIMIT, BlockIndex, IndexError, IndexPool};
use crate::kind::{BlockDriver, DeviceKind, DeviceSpec, VhostUserDevice};
use crate::ports::{RootPort, RootPortPool};
use crate::scsi::GuestScsiAddress;

/// The block indexes and root ports in use, for checks and reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocations {
    /// Block indexes in use, in order.
    pub block_indexes: Vec<BlockIndex>,
    /// Root ports in use, in order.
    pub root_ports: Vec<RootPort>,
}

/// The allocators of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Allocators {
    pub(crate) config: ManagerConfig,
    pub(crate) block: IndexPool,
    pub(crate) ports: RootPortPool,
}

impl Allocators {
    pub(crate) fn new(config: ManagerConfig) -> Self {
        Self {
            config,
            block: IndexPool::new(BLOCK_INDEX_LIMIT),
            ports: RootPortPool::new(config.root_ports),
        }
    }

    /// The request that plugs `spec` as device `id`, with its allocations taken; `None` for a
    /// generic device, which never reaches the hypervisor.
    pub(crate) fn plan(
        &mut self,
        id: DeviceId,
        spec: &DeviceSpec,
    ) -> Result<Option<PlugRequest>, DeviceError> {
        let name_offset = self.config.name_offset;
        let mut taken = Taken {
            alloc: self,
            id,
            index: None,
            ports: Vec::new(),
        };
        let plug = match &spec.kind {
            DeviceKind::Generic(_) => return Ok(None),
            DeviceKind::Block(block) => {
                let index = taken.index()?;
                let drive_name = if block.driver.is_virtio_blk_family() {
                    Some(drive_name(id, index, name_offset)?)
                } else {
                    None
                };
                let scsi_address = if block.driver == BlockDriver::VirtioScsi {
                    Some(
                        GuestScsiAddress::from_index(index.get().into())
                            .map_err(|source| DeviceError::ScsiAddress { id, source })?,
                    )
                } else {
                    None
                };
                let port = taken.port_if(block.driver.is_pci())?;
                Plug::Block(BlockPlug {
                    name_id: id.name_id("drive"),
                    spec: block.clone(),
                    index,
                    drive_name,
                    scsi_address,
                    port,
                })
            }
            DeviceKind::VhostUser(vhost) => {
                let index = if vhost.device.takes_block_index() {
                    Some(taken.index()?)
                } else {
                    None
                };
                let drive_name = index.map(|i| drive_name(id, i, name_offset)).transpose()?;
                let port = taken.port_if(vhost.device.is_pci())?;
                let prefix = match vhost.device {
                    VhostUserDevice::Blk { .. } => "blk",
                    VhostUserDevice::Scsi => "scsi",
                    VhostUserDevice::Net { .. } => "net",
                    VhostUserDevice::Fs { .. } => "fs",
                };
                Plug::VhostUser(VhostUserPlug {
                    name_id: id.name_id(prefix),
                    spec: vhost.clone(),
                    index,
                    drive_name,
                    port,
                })
            }
            DeviceKind::Vfio(vfio) => {
                let mut functions = Vec::with_capacity(vfio.functions.len());
                for (n, function) in vfio.functions.iter().enumerate() {
                    functions.push(VfioFunctionPlug {
                        name_id: id.name_id(&format!("vfio-{n}")),
                        function: function.clone(),
                        // Conventional PCI functions (256-byte config space: a GPU's audio
                        // function, older NICs) and mdevs too: QEMU's q35 hot-plugs nothing
                        // on its root bus, and takes a conventional endpoint on a root port.
                        port: taken.port_if(true)?,
                    });
                }
                Plug::Vfio(VfioPlug {
                    backend: vfio.backend,
                    functions,
                })
            }
        };
        taken.keep();
        Ok(Some(PlugRequest {
            device: id,
            mode: spec.mode,
            plug,
        }))
    }

    /// The block indexes and root ports in use, in order.
    pub(crate) fn in_use(&self) -> Allocations {
        Allocations {
            block_indexes: self
                .block
                .used()
                .filter_map(|i| BlockIndex::try_from(i).ok())
                .collect(),
            root_ports: self.ports.used().collect(),
        }
    }

    /// Gives back what `request` took, in reverse order of taking.
    pub(crate) fn release(&mut self, request: &PlugRequest) -> Result<(), IndexError> {
        for port in request.ports().into_iter().rev() {
            self.ports.release(port)?;
        }
        if let Some(index) = request.block_index() {
            self.block.release(index.get())?;
        }
        Ok(())
    }

    /// Takes exactly what `request` holds (loading saved state).
    pub(crate) fn take_exact(&mut self, request: &PlugRequest) -> Result<(), IndexError> {
        if let Some(index) = request.block_index() {
            self.block.take_exact(index.get())?;
        }
        for port in request.ports() {
            self.ports.take_exact(port)?;
        }
        Ok(())
    }
}

fn drive_name(id: DeviceId, index: BlockIndex, offset: u32) -> Result<DriveName, DeviceError> {
    DriveName::from_index(i64::from(index.get()) + i64::from(offset))
        .map_err(|source| DeviceError::DriveName { id, source })
}

/// What a plan has taken so far; released in reverse on drop unless kept.
struct Taken<'a> {
    alloc: &'a mut Allocators,
    id: DeviceId,
    index: Option<BlockIndex>,
    ports: Vec<RootPort>,
}

impl Taken<'_> {
    fn index(&mut self) -> Result<BlockIndex, DeviceError> {
        let id = self.id;
        let raw = self
            .alloc
            .block
            .take()
            .map_err(|source| DeviceError::BlockIndex { id, source })?;
        let index = BlockIndex::try_from(raw).map_err(|_| DeviceError::BlockIndex {
            id,
            source: IndexError::Exhausted {
                limit: BLOCK_INDEX_LIMIT,
            },
        });
        match index {
            Ok(index) => {
                self.index = Some(index);
                Ok(index)
            }
            Err(e) => {
                // Unreachable with the pool's limit, but never leak what was taken.
                let _ = self.alloc.block.release(raw);
                Err(e)
            }
        }
    }

    /// A root port when the device is a PCI function and the VM has a port pool.
    fn port_if(&mut self, is_pci: bool) -> Result<Option<RootPort>, DeviceError> {
        if !is_pci || self.alloc.ports.count() == 0 {
            return Ok(None);
        }
        let id = self.id;
        let port = self
            .alloc
            .ports
            .take()
            .map_err(|source| DeviceError::RootPort { id, source })?;
        self.ports.push(port);
        Ok(Some(port))
    }

    fn keep(mut self) {
        self.index = None;
        self.ports.clear();
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        for port in self.ports.drain(..).rev() {
            if let Err(e) = self.alloc.ports.release(port) {
                tracing::error!(device = %self.id, %port, error = %e, "rolling back a root port failed");
            }
        }
        if let Some(index) = self.index.take()
            && let Err(e) = self.alloc.block.release(index.get())
        {
            tracing::error!(device = %self.id, %index, error = %e, "rolling back a block index failed");
        }
    }
}
