//! Test fixtures: the standard fake host, a manager on it, hot-unplug, and a fake-kernel
//! server so that several OS processes can share one fake kernel.
//!
//! The fake kernel applies the kernel's semantics only to writes made through its own
//! `Sysfs` (in its process). For multi-process tests the parent serves writes on a Unix
//! socket and each child's `Sysfs` sends its writes there ([`RemoteWriter`]); reads go to
//! the shared tree directly. Writes are applied one at a time, as a kernel would.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use plugboard_sysfs::fake::{DriverSpec, FakeKernel, FakeKernelBuilder, PciSpec};
use plugboard_sysfs::{AttrWriter, PciAddress, Sysfs};

use crate::manager::HostdevManager;
use crate::owner::Owner;
use crate::pci_request::PrepareOptions;
use crate::registry::List;

/// Single-device groups 1-3: NICs on e1000e.
pub const NIC1: &str = "0000:01:00.0";
pub const NIC2: &str = "0000:02:00.0";
pub const NIC3: &str = "0000:03:00.0";
/// Group 5: a PCIe-to-PCI bridge and two NICs behind it.
pub const BRIDGE: &str = "0000:00:1e.0";
pub const SHARED1: &str = "0000:05:01.0";
pub const SHARED2: &str = "0000:05:02.0";
/// Group 6: an NVMe controller.
pub const NVME: &str = "0000:06:00.0";
/// Group 7: two functions of one card.
pub const FN0: &str = "0000:07:00.0";
pub const FN1: &str = "0000:07:00.1";

/// Prepare one device at a time, detaching it from its host driver.
pub const MANAGED: PrepareOptions = PrepareOptions {
    managed: true,
    whole_group: false,
};
/// Prepare one device at a time that must already be detached.
pub const UNMANAGED: PrepareOptions = PrepareOptions {
    managed: false,
    whole_group: false,
};

/// The standard fake host.
pub fn host_spec() -> FakeKernelBuilder {
    let nic = |a: &str, g: u32| {
        PciSpec::new(a, 0x8086, 0x10d3)
            .class(0x02_0000)
            .iommu_group(g)
            .driver("e1000e")
    };
    FakeKernel::builder()
        .pci(nic(NIC1, 1))
        .pci(nic(NIC2, 2))
        .pci(nic(NIC3, 3))
        .pci(PciSpec::bridge(BRIDGE).iommu_group(5))
        .pci(nic(SHARED1, 5).parent(BRIDGE))
        .pci(nic(SHARED2, 5).parent(BRIDGE))
        .pci(
            PciSpec::new(NVME, 0x1b36, 0x0010)
                .class(0x01_0802)
                .iommu_group(6)
                .driver("nvme"),
        )
        .pci(
            PciSpec::new(FN0, 0x8086, 0x1521)
                .class(0x02_0000)
                .iommu_group(7)
                .driver("igb"),
        )
        .pci(
            PciSpec::new(FN1, 0x8086, 0x1521)
                .class(0x02_0000)
                .iommu_group(7)
                .driver("igb"),
        )
        .driver(DriverSpec::new("e1000e").id(0x8086, 0x10d3))
}

/// A fake host and a state dir.
pub struct Fixture {
    pub kernel: FakeKernel,
    pub state: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        Self::with(host_spec())
    }

    #[expect(
        clippy::needless_pass_by_value,
        reason = "builders are passed by value"
    )]
    pub fn with(spec: FakeKernelBuilder) -> Self {
        Self {
            kernel: spec.build().unwrap(),
            state: tempfile::tempdir().unwrap(),
        }
    }

    pub fn manager(&self) -> HostdevManager {
        HostdevManager::open(self.kernel.sysfs(), self.state.path()).unwrap()
    }

    pub fn driver(&self, address: &str) -> Option<String> {
        self.kernel
            .sysfs()
            .pci_device(addr(address))
            .unwrap()
            .driver()
            .unwrap()
    }

    pub fn driver_override(&self, address: &str) -> Option<String> {
        self.kernel
            .sysfs()
            .pci_device(addr(address))
            .unwrap()
            .driver_override()
            .unwrap()
    }

    /// Removes a device from the tree, as a hot-unplug would.
    pub fn unplug(&self, address: &str) {
        unplug(&self.kernel.sysfs_root(), address);
    }
}

/// Removes a device from the tree at `sys`, as a hot-unplug would.
pub fn unplug(sys: &Path, address: &str) {
    let link = sys.join("bus/pci/devices").join(address);
    let dir = std::fs::canonicalize(&link).unwrap();
    if let Ok(driver) = std::fs::canonicalize(dir.join("driver")) {
        let _ = std::fs::remove_file(driver.join(address));
    }
    if let Ok(group) = std::fs::canonicalize(dir.join("iommu_group")) {
        let _ = std::fs::remove_file(group.join("devices").join(address));
    }
    std::fs::remove_file(&link).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

pub fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

pub fn owner(s: &str) -> Owner {
    s.parse().unwrap()
}

/// `(address, list, owner)` of every PCI row, for "nothing changed" checks.
pub fn books(m: &mut HostdevManager) -> Vec<(String, List, Option<String>, bool)> {
    let listing = m.list().unwrap();
    assert!(
        listing.pending.is_empty(),
        "pending intents: {:?}",
        listing.pending
    );
    listing
        .pci
        .into_iter()
        .map(|r| (r.address, r.list, r.owner.map(|o| o.to_string()), r.managed))
        .collect()
}

/// Serves fake-kernel writes to other processes on `<kernel root>/kernel.sock`.
pub struct KernelServer {
    pub socket: PathBuf,
}

impl KernelServer {
    pub fn start(kernel: &FakeKernel) -> Self {
        let socket = kernel.root().join("kernel.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let sysfs = kernel.sysfs();
        let lock = Arc::new(Mutex::new(()));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let sysfs = sysfs.clone();
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || serve(stream, &sysfs, &lock));
            }
        });
        Self { socket }
    }
}

fn serve(mut stream: UnixStream, sysfs: &Sysfs, lock: &Mutex<()>) {
    while let (Ok(path), Ok(value)) = (read_frame(&mut stream), read_frame(&mut stream)) {
        let errno = {
            let _one_at_a_time = lock.lock().unwrap();
            match sysfs.write_attribute(Path::new(&path), &value) {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().unwrap_or(libc_eio()),
            }
        };
        if stream.write_all(&errno.to_le_bytes()).is_err() {
            break;
        }
    }
}

fn libc_eio() -> i32 {
    5
}

fn read_frame(stream: &mut UnixStream) -> io::Result<String> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
    stream.read_exact(&mut buf)?;
    String::from_utf8(buf).map_err(io::Error::other)
}

fn write_frame(stream: &mut UnixStream, s: &str) -> io::Result<()> {
    stream.write_all(&u32::try_from(s.len()).unwrap().to_le_bytes())?;
    stream.write_all(s.as_bytes())
}

/// A child process's writer: every write goes to the parent's [`KernelServer`].
#[derive(Debug)]
pub struct RemoteWriter {
    stream: Mutex<UnixStream>,
}

impl AttrWriter for RemoteWriter {
    fn write_attr(&self, path: &Path, value: &str) -> io::Result<()> {
        let mut stream = self.stream.lock().unwrap();
        write_frame(&mut stream, &path.display().to_string())?;
        write_frame(&mut stream, value)?;
        let mut errno = [0u8; 4];
        stream.read_exact(&mut errno)?;
        match i32::from_le_bytes(errno) {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// A `Sysfs` on the shared tree at `root` whose writes go to the server at `socket`.
pub fn remote_sysfs(root: &Path, socket: &Path) -> Sysfs {
    let stream = UnixStream::connect(socket).unwrap();
    Sysfs::with_parts(
        root.join("sys"),
        root.join("dev"),
        Arc::new(RemoteWriter {
            stream: Mutex::new(stream),
        }),
    )
}

/// Re-runs this test binary as a child that runs only test `name`, with `env` set.
pub fn child(name: &str, env: &[(&str, String)]) -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        name,
        "--exact",
        "--nocapture",
        "--test-threads=1",
        "--include-ignored",
    ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}
