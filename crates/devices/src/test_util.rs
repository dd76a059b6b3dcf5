//! An in-memory [`Hypervisor`] for tests: it records every call, keeps the VM's view of what
//! is plugged, fails on command, and can hold calls to imitate a slow hotplug.
//!
//! Like QEMU on q35 (its default kind) it refuses to hot-plug a PCI function (virtio-blk,
//! a vhost-user PCI device, every VFIO function) without a root port of its own
//! ([`PortRefusal`]); other kinds place PCI devices themselves. Cold plugs may go on the
//! root bus.
//!
//! Like QEMU it keeps fd sets: files handed over with [`InMemoryHypervisor::add_fd`] stay
//! open in it, a block device passed by descriptor ([`crate::PassedFd`]) plugs only when
//! its set is there, and its removal closes the set. A test can look at the file a set
//! holds ([`InMemoryHypervisor::fd_set_metadata`]): the file the VM really got.
//!
//! Other crates get it with `plugboard-devices = { features = ["test-util"] }` in their
//! `[dev-dependencies]`.

use std::collections::BTreeMap;
use std::fs::{File, Metadata};
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use plugboard_sysfs::DevKind;

use crate::hypervisor::{
    GuestView, Hypervisor, HypervisorError, HypervisorKind, Plug, PlugRequest,
};
use crate::id::DeviceId;
use crate::kind::{
    BlockDriver, BlockSpec, DeviceIdentity, DeviceKind, DeviceNode, DeviceSpec, GenericSpec,
    HostFunction, PciAddress, PlugMode, VfioBackend, VfioFunction, VfioSpec, VhostUserDevice,
    VhostUserSpec,
};
use crate::pci_path::{PciPath, PciSlot};

/// A host block device `8:minor` (`/dev/sdx<minor>`) with `driver`, hot-plugged.
#[must_use]
pub fn block_spec(minor: u32, driver: BlockDriver) -> DeviceSpec {
    DeviceSpec {
        identity: DeviceIdentity::Node(DeviceNode::new(DevKind::Block, 8, minor)),
        mode: PlugMode::Hot,
        kind: DeviceKind::Block(BlockSpec::new(format!("/dev/sdx{minor}"), driver)),
    }
}

/// An image file at `path` (no device node) with `driver`, hot-plugged.
#[must_use]
pub fn image_spec(path: &str, driver: BlockDriver) -> DeviceSpec {
    DeviceSpec {
        identity: DeviceIdentity::Path(PathBuf::from(path)),
        mode: PlugMode::Hot,
        kind: DeviceKind::Block(BlockSpec::new(path, driver)),
    }
}

/// A VFIO group `group` (`/dev/vfio/<group>`, identity [`DeviceIdentity::IommuGroup`]) whose functions are
/// `0000:<group % 256>:00.<n>`, PCIe or not as given (at most 8), hot-plugged.
#[must_use]
pub fn vfio_spec(group: u32, pcie: &[bool]) -> DeviceSpec {
    let bus = u8::try_from(group % 256).unwrap_or(0);
    let functions = pcie
        .iter()
        .zip(0u8..)
        .filter_map(|(&is_pcie, f)| {
            let address = PciAddress::new(0, bus, 0, f).ok()?;
            Some(VfioFunction {
                host: HostFunction::Pci(address),
                sysfs_path: PathBuf::from(format!("/sys/bus/pci/devices/{address}")),
                class: Some(0x02_0000),
                is_pcie,
                large_bar: false,
            })
        })
        .collect();
    DeviceSpec {
        identity: DeviceIdentity::IommuGroup(group),
        mode: PlugMode::Hot,
        kind: DeviceKind::Vfio(VfioSpec {
            backend: VfioBackend::Group { group },
            functions,
        }),
    }
}

/// A vhost-user device behind `socket` (no device node), hot-plugged.
#[must_use]
pub fn vhost_user_spec(socket: &str, device: VhostUserDevice) -> DeviceSpec {
    DeviceSpec {
        identity: DeviceIdentity::Path(PathBuf::from(socket)),
        mode: PlugMode::Hot,
        kind: DeviceKind::VhostUser(VhostUserSpec {
            socket: PathBuf::from(socket),
            device,
        }),
    }
}

/// A generic character device `major:minor` at `path`.
#[must_use]
pub fn generic_spec(path: &str, major: u32, minor: u32) -> DeviceSpec {
    DeviceSpec {
        identity: DeviceIdentity::Node(DeviceNode::new(DevKind::Char, major, minor)),
        mode: PlugMode::Hot,
        kind: DeviceKind::Generic(GenericSpec {
            path: PathBuf::from(path),
        }),
    }
}

/// The settings of a VM with eight root ports: what [`InMemoryHypervisor`] (QEMU's rules)
/// needs to hot-plug PCI devices.
pub const EIGHT_PORTS: crate::config::ManagerConfig = crate::config::ManagerConfig {
    root_ports: 8,
    name_offset: 0,
};

/// Which trait method a call was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HypervisorOp {
    /// [`Hypervisor::hotplug_add`].
    HotplugAdd,
    /// [`Hypervisor::hotplug_remove`].
    HotplugRemove,
    /// [`Hypervisor::coldplug`].
    Coldplug,
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The method.
    pub op: HypervisorOp,
    /// What it was given.
    pub request: PlugRequest,
    /// Whether it failed.
    pub failed: bool,
}

/// The error of an injected failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("injected {0:?} failure")]
pub struct InjectedFailure(pub HypervisorOp);

/// The error of a hot plug that QEMU on q35 refuses: a PCI device without a root port (the
/// root bus `pcie.0` has no hotplug, QEMU's "Bus 'pcie.0' does not support hotplugging"),
/// or onto a root port that already holds a device (one function per port).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortRefusal {
    /// A PCI function without a root port.
    #[error("{0} needs a root port for hotplug and the request has none")]
    NoPort(String),
    /// A root port that holds another device's function already.
    #[error("root port {port} already holds a function of device {holder}")]
    Taken {
        /// The port.
        port: crate::ports::RootPort,
        /// The device on it.
        holder: DeviceId,
    },
}

/// The error of a plug whose block device was passed by descriptor in an fd set the VM
/// does not hold (QEMU cannot open `/dev/fdset/<n>` then).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the VM holds no fd set {0}")]
pub struct NoFdSet(pub u32);

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    plugged: BTreeMap<DeviceId, PlugRequest>,
    /// Fail this many upcoming calls of each op.
    fail_next: BTreeMap<HypervisorOp, usize>,
    /// Fail this many upcoming hot plugs without undoing them (the device stays plugged).
    incomplete_next: usize,
    /// The VM runs and cannot remove cold-plugged devices (QEMU's root bus).
    cold_stays: bool,
    /// Ops whose calls wait until released.
    held: Vec<HypervisorOp>,
    /// Calls waiting in a hold.
    waiting: usize,
    /// Files handed over by descriptor, by fd set id.
    fd_sets: BTreeMap<u32, File>,
}

/// A hypervisor that lives in memory. See the module documentation.
#[derive(Debug)]
pub struct InMemoryHypervisor {
    kind: HypervisorKind,
    log_calls: bool,
    state: Mutex<State>,
    changed: Condvar,
}

impl Default for InMemoryHypervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryHypervisor {
    /// An empty VM that says it is QEMU.
    #[must_use]
    pub fn new() -> Self {
        Self::with_kind(HypervisorKind::Qemu)
    }

    /// An empty VM of this kind.
    #[must_use]
    pub fn with_kind(kind: HypervisorKind) -> Self {
        Self {
            kind,
            log_calls: true,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    }

    /// The same hypervisor, but keeping no call log (for benchmarks, where the log would
    /// grow without bound).
    #[must_use]
    pub fn without_call_log(mut self) -> Self {
        self.log_calls = false;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the state from the others.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every call so far, in order, failed ones included.
    #[must_use]
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Forgets the recorded calls (the plugged view stays).
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// What the VM holds now, by device.
    #[must_use]
    pub fn plugged(&self) -> BTreeMap<DeviceId, PlugRequest> {
        self.lock().plugged.clone()
    }

    /// Keeps `file` open in a new fd set, as QEMU's `add-fd` does, and returns the set's id
    /// (the lowest free one, as QEMU picks).
    pub fn add_fd(&self, file: File) -> u32 {
        let mut state = self.lock();
        let id = (0..)
            .find(|n| !state.fd_sets.contains_key(n))
            .unwrap_or(u32::MAX);
        state.fd_sets.insert(id, file);
        id
    }

    /// Closes fd set `fdset` (QEMU's `remove-fd`); false when there was none.
    pub fn remove_fd(&self, fdset: u32) -> bool {
        self.lock().fd_sets.remove(&fdset).is_some()
    }

    /// The ids of the fd sets the VM holds.
    #[must_use]
    pub fn fd_set_ids(&self) -> Vec<u32> {
        self.lock().fd_sets.keys().copied().collect()
    }

    /// The metadata (`fstat`) of the file in fd set `fdset`: what the VM really got.
    #[must_use]
    pub fn fd_set_metadata(&self, fdset: u32) -> Option<Metadata> {
        self.lock().fd_sets.get(&fdset)?.metadata().ok()
    }

    /// Whether the VM holds `device`.
    #[must_use]
    pub fn is_plugged(&self, device: DeviceId) -> bool {
        self.lock().plugged.contains_key(&device)
    }

    /// Makes the next call of `op` fail (adds to any failures already armed).
    pub fn fail_next(&self, op: HypervisorOp) {
        *self.lock().fail_next.entry(op).or_default() += 1;
    }

    /// Makes the next hot plug fail with [`HypervisorError::Incomplete`] and leave the device
    /// in the VM, as a QEMU whose guest never lets go of a function already plugged when a
    /// later one fails. A `hotplug_remove` of the request takes it out.
    pub fn fail_next_incomplete(&self) {
        self.lock().incomplete_next += 1;
    }

    /// From now on the VM runs and cannot remove a cold-plugged device, as QEMU's q35 root
    /// bus cannot: its removal is [`HypervisorError::NotRemovable`] and it stays plugged.
    pub fn keep_cold_devices(&self) {
        self.lock().cold_stays = true;
    }

    /// Disarms every armed failure.
    pub fn clear_failures(&self) {
        let mut state = self.lock();
        state.fail_next.clear();
        state.incomplete_next = 0;
    }

    /// Makes every later call of `op` wait in the hypervisor until [`Self::release`].
    pub fn hold(&self, op: HypervisorOp) {
        self.lock().held.push(op);
    }

    /// Lets held calls of `op` go on.
    pub fn release(&self, op: HypervisorOp) {
        self.lock().held.retain(|&o| o != op);
        self.changed.notify_all();
    }

    /// Waits until `count` calls are waiting in a hold.
    pub fn wait_for_held_calls(&self, count: usize) {
        let mut state = self.lock();
        while state.waiting < count {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn call(&self, op: HypervisorOp, request: &PlugRequest) -> Result<GuestView, HypervisorError> {
        let mut state = self.lock();
        if state.held.contains(&op) {
            state.waiting += 1;
            self.changed.notify_all();
            while state.held.contains(&op) {
                state = self
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            state.waiting -= 1;
        }
        let result = Self::apply(&mut state, self.kind, op, request);
        if self.log_calls {
            state.calls.push(Call {
                op,
                request: request.clone(),
                failed: result.is_err(),
            });
        }
        result
    }

    fn apply(
        state: &mut State,
        kind: HypervisorKind,
        op: HypervisorOp,
        request: &PlugRequest,
    ) -> Result<GuestView, HypervisorError> {
        let device = request.device;
        if let Some(n) = state.fail_next.get_mut(&op)
            && *n > 0
        {
            *n -= 1;
            return Err(HypervisorError::Backend {
                device,
                source: Box::new(InjectedFailure(op)),
            });
        }
        let passed = match &request.plug {
            Plug::Block(b) => b.spec.passed_fd.map(|p| p.fdset),
            Plug::VhostUser(_) | Plug::Vfio(_) => None,
        };
        match op {
            HypervisorOp::HotplugAdd | HypervisorOp::Coldplug => {
                if state.plugged.contains_key(&device) {
                    return Err(HypervisorError::AlreadyPlugged { device });
                }
                if op == HypervisorOp::HotplugAdd
                    && kind == HypervisorKind::Qemu
                    && let Err(refusal) = qemu_port_rule(&state.plugged, request)
                {
                    return Err(HypervisorError::Backend {
                        device,
                        source: Box::new(refusal),
                    });
                }
                if op == HypervisorOp::HotplugAdd && state.incomplete_next > 0 {
                    state.incomplete_next -= 1;
                    state.plugged.insert(device, request.clone());
                    return Err(HypervisorError::Incomplete {
                        device,
                        source: Box::new(InjectedFailure(op)),
                    });
                }
                if let Some(fdset) = passed.filter(|n| !state.fd_sets.contains_key(n)) {
                    return Err(HypervisorError::Backend {
                        device,
                        source: Box::new(NoFdSet(fdset)),
                    });
                }
                state.plugged.insert(device, request.clone());
                Ok(guest_view(request))
            }
            HypervisorOp::HotplugRemove => match state.plugged.get(&device) {
                Some(held)
                    if held == request && state.cold_stays && held.mode == PlugMode::Cold =>
                {
                    Err(HypervisorError::NotRemovable { device })
                }
                Some(held) if held == request => {
                    state.plugged.remove(&device);
                    // The removal closes the device's fd set, as QEMU's backend does.
                    if let Some(fdset) = passed {
                        state.fd_sets.remove(&fdset);
                    }
                    Ok(GuestView::default())
                }
                // A remove must name exactly what was added (the trait's contract).
                Some(_) | None => Err(HypervisorError::NotPlugged { device }),
            },
        }
    }
}

/// QEMU's rule for a hot plug on q35: every PCI function of the request sits on a root
/// port of its own, one no plugged device holds.
fn qemu_port_rule(
    plugged: &BTreeMap<DeviceId, PlugRequest>,
    request: &PlugRequest,
) -> Result<(), PortRefusal> {
    let functions: Vec<(String, Option<crate::ports::RootPort>)> = match &request.plug {
        Plug::Block(b) if b.spec.driver.is_pci() => vec![(b.name_id.clone(), b.port)],
        Plug::VhostUser(v) if v.spec.device.is_pci() => vec![(v.name_id.clone(), v.port)],
        Plug::Block(_) | Plug::VhostUser(_) => Vec::new(),
        Plug::Vfio(v) => v
            .functions
            .iter()
            .map(|f| (f.name_id.clone(), f.port))
            .collect(),
    };
    for (name, port) in functions {
        let port = port.ok_or(PortRefusal::NoPort(name))?;
        if let Some((holder, _)) = plugged
            .iter()
            .find(|(_, held)| held.ports().contains(&port))
        {
            return Err(PortRefusal::Taken {
                port,
                holder: *holder,
            });
        }
    }
    Ok(())
}

/// Invents guest PCI paths: a function on root port N sits at `(N+1 mod 32)/00`, others at
/// slot 0x1f on the root bus.
fn guest_view(request: &PlugRequest) -> GuestView {
    let path = |port: Option<crate::ports::RootPort>| {
        let slot = port.map_or(31, |p| u8::try_from((p.get() + 1) % 32).unwrap_or(31));
        let mut slots = vec![PciSlot::new(slot).ok()];
        if port.is_some() {
            slots.push(PciSlot::new(0).ok());
        }
        PciPath::new(slots.into_iter().flatten().collect()).ok()
    };
    match &request.plug {
        Plug::Block(b) => GuestView {
            pci_paths: if b.spec.driver.is_pci() {
                path(b.port).into_iter().collect()
            } else {
                Vec::new()
            },
            scsi_address: b.scsi_address,
            drive_name: b.drive_name.clone(),
        },
        Plug::VhostUser(v) => GuestView {
            pci_paths: if v.spec.device.is_pci() {
                path(v.port).into_iter().collect()
            } else {
                Vec::new()
            },
            scsi_address: None,
            drive_name: v.drive_name.clone(),
        },
        Plug::Vfio(v) => GuestView {
            pci_paths: v.functions.iter().filter_map(|f| path(f.port)).collect(),
            scsi_address: None,
            drive_name: None,
        },
    }
}

impl Hypervisor for InMemoryHypervisor {
    fn kind(&self) -> HypervisorKind {
        self.kind
    }

    fn hotplug_add(&self, request: &PlugRequest) -> Result<GuestView, HypervisorError> {
        self.call(HypervisorOp::HotplugAdd, request)
    }

    fn hotplug_remove(&self, request: &PlugRequest) -> Result<(), HypervisorError> {
        self.call(HypervisorOp::HotplugRemove, request).map(|_| ())
    }

    fn coldplug(&self, request: &PlugRequest) -> Result<GuestView, HypervisorError> {
        self.call(HypervisorOp::Coldplug, request)
    }

    fn guest_view(&self, request: &PlugRequest) -> Result<GuestView, HypervisorError> {
        match self.lock().plugged.get(&request.device) {
            Some(held) if held == request => Ok(guest_view(request)),
            Some(_) | None => Err(HypervisorError::NotPlugged {
                device: request.device,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::sync::Arc;

    use super::*;
    use crate::hypervisor::BlockPlug;
    use crate::index::BlockIndex;
    use crate::kind::{BlockDriver, BlockSpec, PlugMode};

    fn request(id: u64) -> PlugRequest {
        PlugRequest {
            device: DeviceId::from_raw(id),
            mode: PlugMode::Hot,
            plug: Plug::Block(BlockPlug {
                name_id: DeviceId::from_raw(id).name_id("drive"),
                spec: BlockSpec::new("/dev/sdb", BlockDriver::VirtioBlk),
                index: BlockIndex::try_from(0).unwrap(),
                drive_name: None,
                scsi_address: None,
                port: Some(crate::ports::RootPort::new(0)),
            }),
        }
    }

    #[test]
    fn records_and_tracks() {
        let h = InMemoryHypervisor::new();
        let r = request(1);
        h.hotplug_add(&r).unwrap();
        assert!(h.is_plugged(r.device));
        assert!(matches!(
            h.hotplug_add(&r),
            Err(HypervisorError::AlreadyPlugged { .. })
        ));
        h.hotplug_remove(&r).unwrap();
        assert!(!h.is_plugged(r.device));
        assert!(matches!(
            h.hotplug_remove(&r),
            Err(HypervisorError::NotPlugged { .. })
        ));
        let ops: Vec<_> = h.calls().iter().map(|c| (c.op, c.failed)).collect();
        assert_eq!(
            ops,
            [
                (HypervisorOp::HotplugAdd, false),
                (HypervisorOp::HotplugAdd, true),
                (HypervisorOp::HotplugRemove, false),
                (HypervisorOp::HotplugRemove, true),
            ]
        );
    }

    #[test]
    fn like_qemu_a_pci_hotplug_needs_a_root_port_of_its_own() {
        let h = InMemoryHypervisor::new();
        let mut portless = request(1);
        let Plug::Block(b) = &mut portless.plug else {
            unreachable!()
        };
        b.port = None;
        let name = b.name_id.clone();
        let err = h.hotplug_add(&portless).unwrap_err();
        assert_eq!(
            err.source().unwrap().to_string(),
            format!("{name} needs a root port for hotplug and the request has none")
        );
        h.hotplug_add(&request(1)).unwrap();
        // Port 0 is taken by device 1.
        let err = h.hotplug_add(&request(2)).unwrap_err();
        assert!(
            err.source().unwrap().to_string().contains("already holds"),
            "{err}"
        );
        // Cold plugs may go on the root bus; a VMM of another kind places devices itself.
        let mut cold = portless.clone();
        cold.device = DeviceId::from_raw(3);
        cold.mode = PlugMode::Cold;
        h.coldplug(&cold).unwrap();
        let ch = InMemoryHypervisor::with_kind(HypervisorKind::CloudHypervisor);
        ch.hotplug_add(&portless).unwrap();
    }

    #[test]
    fn injected_failure_changes_nothing_and_fires_once() {
        let h = InMemoryHypervisor::new();
        h.fail_next(HypervisorOp::HotplugAdd);
        h.hotplug_add(&request(1)).unwrap_err();
        assert!(h.plugged().is_empty());
        h.hotplug_add(&request(1)).unwrap();
    }

    #[test]
    fn a_disk_passed_by_fd_needs_its_fd_set_and_its_removal_closes_it() {
        let h = InMemoryHypervisor::new();
        let file = tempfile::tempfile().unwrap();
        let inode = std::os::unix::fs::MetadataExt::ino(&file.metadata().unwrap());
        let mut r = request(1);
        let Plug::Block(b) = &mut r.plug else {
            unreachable!()
        };
        b.spec.passed_fd = Some(crate::kind::PassedFd {
            fdset: 0,
            file_type: crate::kind::PassedFileType::File,
        });
        let err = h.hotplug_add(&r).unwrap_err();
        assert!(
            err.source().unwrap().to_string().contains("no fd set 0"),
            "{err}"
        );
        assert_eq!(h.add_fd(file), 0);
        let ino = h
            .fd_set_metadata(0)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        assert_eq!(ino, Some(inode));
        h.hotplug_add(&r).unwrap();
        h.hotplug_remove(&r).unwrap();
        assert!(h.fd_set_ids().is_empty());
        assert!(!h.remove_fd(0));
    }

    #[test]
    fn held_calls_wait_for_release() {
        let h = Arc::new(InMemoryHypervisor::new());
        h.hold(HypervisorOp::HotplugAdd);
        let h2 = Arc::clone(&h);
        let t = std::thread::spawn(move || h2.hotplug_add(&request(1)).map(|_| ()));
        h.wait_for_held_calls(1);
        assert!(!h.is_plugged(DeviceId::from_raw(1)));
        h.release(HypervisorOp::HotplugAdd);
        t.join().unwrap().unwrap();
        assert!(h.is_plugged(DeviceId::from_raw(1)));
    }
}
