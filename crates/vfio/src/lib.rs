//! VFIO device access through either kernel interface, behind one address-space trait.
//!
//! VFIO gives a user-space driver (a VMM) a PCI device: its regions (BARs, config space),
//! its interrupts, and DMA through an IOMMU so that the device can only reach memory the
//! driver mapped. Linux offers two interfaces to it:
//!
//! - **legacy**: a *container* (`/dev/vfio/vfio`) is an IOMMU context; IOMMU *groups*
//!   (`/dev/vfio/<group>`, the smallest set of devices the IOMMU can isolate) join it, and
//!   devices are opened through their group. DMA is mapped in the container.
//! - **cdev + iommufd**: each device has its own node (`/dev/vfio/devices/vfioN`), which is
//!   bound to an iommufd (`/dev/iommu`) and attached to an *IOAS*, an I/O address space
//!   object; DMA is mapped in the IOAS.
//!
//! This crate puts both behind one trait and one device type:
//!
//! - [`AddressSpace`] (DMA map/unmap, with the unsafe contract documented on
//!   [`AddressSpace::map_dma`]) is implemented by [`Container`] (type1v2; it counts the
//!   devices of each group so that two devices of one group share the one group fd, and
//!   keeps its mappings across the moment its last group leaves unless told otherwise with
//!   [`DmaReplay`]) and by [`Iommufd`] (one IOAS
//!   shared by every device attached to it). [`DmaMapping`] is the RAII form.
//! - [`VfioDevice`] is the same type in both modes: info, regions with their capabilities
//!   (sparse mmap areas), IRQ info, config-space and region read/write, reset. It is built
//!   by a typed constructor per interface ([`VfioDevice::open_in_group`],
//!   [`VfioDevice::open_cdev`], [`VfioDevice::from_legacy_fds`],
//!   [`VfioDevice::from_iommufd_fds`]); nothing downcasts.
//! - [`Vfio`] is a VM's VFIO context: it opens devices by PCI address in the [`Mode`] asked
//!   for (`auto` = cdev + iommufd where the kernel has it for that device, else legacy), with
//!   clear errors for a device not on vfio-pci, a group that is not viable (naming the member
//!   in the way), and a mode the kernel lacks.
//! - What a VMM wires up on a [`VfioDevice`]: interrupts to eventfds
//!   ([`VfioDevice::enable_irq`] for INTx, MSI and MSI-X, mask/unmask, the INTx resample
//!   eventfd, and the [`VfioDevice::request_notifier`] by which the kernel asks for the device
//!   back), BARs mapped into the process ([`VfioDevice::map_region`] → [`MappedRegion`], with
//!   volatile accessors), the usable IOVA ranges ([`AddressSpace::iova_info`]; `map_dma`
//!   outside them is refused before the kernel sees it), and the file to register with KVM's
//!   VFIO device ([`VfioDevice::kvm_file`]).
//! - [`open_for_vmm`] opens and binds a device for an unprivileged VMM and returns
//!   [`VmmFds`], which can be sent over a Unix socket.
//!
//! Lifetimes hold by construction: a device's fd closes before its group lease ends (the
//! kernel refuses to detach a group while a device is open); an iommufd device detaches from
//! its IOAS before its cdev closes; devices and mappings hold their address space in an
//! `Arc`. `Drop` never panics; `close` methods report what drop can only log.
//!
//! The kernel's structs come from rust-vmm's `vfio-bindings` and `iommufd-bindings`; every
//! ioctl is in one private module with a `// SAFETY:` note each, and errno is kept in every
//! error. Paths come from a [`plugboard_sysfs::Sysfs`] handle (its sysfs and `/dev` roots).
//!
//! ```no_run
//! use plugboard_sysfs::Sysfs;
//! use plugboard_vfio::{Mode, Vfio};
//!
//! let mut vfio = Vfio::new(Sysfs::new("/sys"));
//! let nic = vfio.open("0000:01:00.0".parse()?, Mode::Auto)?;
//! let mut id = [0u8; 4];
//! nic.read_config(0, &mut id)?;
//! println!("{} via {}: {:02x?}", nic.name(), nic.interface(), id);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod books;
mod container;
mod device;
mod dma;
mod fds;
mod group;
mod info;
mod ioctl;
mod iommufd;
mod iova;
mod irq;
mod mmap;
mod mode;
mod node;
mod open;
mod refcount;
mod region;

pub use container::{Container, ContainerError, DmaReplay};
pub use device::{KvmFileKind, VfioDevice, VfioDeviceError};
pub use dma::{AddressSpace, DMA_PAGE_SIZE, DmaError, DmaMapping};
pub use fds::{FdsError, VmmFds, open_for_vmm};
pub use group::{Blocker, Group, GroupError};
pub use info::{DeviceFlags, DeviceInfo};
pub use iommufd::{CdevError, Iommufd, IommufdError};
pub use iova::{IovaInfo, IovaRange};
pub use irq::{IrqError, IrqFlags, IrqIndex, IrqInfo};
pub use mmap::{MappedArea, MappedRegion, MmapError};
pub use mode::{Interface, Mode, ModeError, ModeParseError, select, select_mdev};
pub use open::{OpenError, Vfio};
pub use refcount::{Acquired, RefCount, RefCountError, Released};
pub use region::{RegionCap, RegionError, RegionFlags, RegionInfo, SparseArea, pci_region_name};
pub use vmm_sys_util::eventfd::EventFd;
