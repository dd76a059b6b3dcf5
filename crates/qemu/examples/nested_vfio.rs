//! Runs **inside the lab guest** (see `tests/guest.rs`): passes a real PCI function, already
//! bound to vfio-pci in the guest, to a nested QEMU through the device manager and
//! `QemuHypervisor`, in legacy (group) and iommufd (cdev) mode, hot and cold.
//!
//! Usage: `nested_vfio <DDDD:BB:SS.F>` or `nested_vfio mdev:<UUID> [--cold-only]`; prints
//! `NESTED-VFIO-OK` when every step passed. An mdev goes in by `sysfsdev=` in legacy mode
//! only (plugboard opens mdevs through their group); `--cold-only` skips its hot plug. The
//! nested QEMU has no guest OS, so each hot unplug first times out (nobody acknowledges) and
//! `system_reset` completes it, the same dance as `tests/bare_qemu.rs`.
//!
//! `nested_vfio --group <DDDD:BB:SS.F>` hot-plugs the whole IOMMU group of the function
//! instead (every endpoint already on vfio-pci), described from sysfs by `HostDevices` as
//! a container runtime would (`/dev/vfio/<group>`, and each function's cdev
//! `/dev/vfio/devices/vfioN`): the group node and every cdev are one device, plugged once
//! (issue 17, item 4), and each function goes on a root port of its own, conventional PCI
//! functions too (issue 17, item 2); prints `NESTED-VFIO-GROUP-OK`.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plugboard_devices::{
    DeviceIdentity, DeviceKind, DeviceManager, DeviceSpec, HostFunction, ManagerConfig, MdevUuid,
    PciAddress, PlugMode, VfioBackend, VfioFunction, VfioSpec,
};
use plugboard_qemu::test_util::BareQemu;
use plugboard_qemu::{DeviceRole, QemuConfig, QemuHypervisor, QemuId};
use serde_json::json;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// The spec of an mdev (`sysfsdev=` its resolved sysfs directory, through its group).
fn mdev_spec(uuid: &str, mode: PlugMode) -> Result<DeviceSpec> {
    let sysfs = std::fs::canonicalize(format!("/sys/bus/mdev/devices/{uuid}"))?;
    let group: u32 = std::fs::read_link(sysfs.join("iommu_group"))?
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("no iommu_group")?
        .parse()?;
    Ok(DeviceSpec {
        identity: DeviceIdentity::Path(PathBuf::from(format!("/dev/vfio/{group}"))),
        mode,
        kind: DeviceKind::Vfio(VfioSpec {
            backend: VfioBackend::Group { group },
            functions: vec![VfioFunction {
                host: HostFunction::Mdev(uuid.parse::<MdevUuid>()?),
                sysfs_path: sysfs,
                class: None,
                is_pcie: false,
                large_bar: false,
            }],
        }),
    })
}

fn spec(target: &str, mode: PlugMode, cdev: bool) -> Result<DeviceSpec> {
    if let Some(uuid) = target.strip_prefix("mdev:") {
        return mdev_spec(uuid, mode);
    }
    let bdf = target;
    let sysfs = PathBuf::from(format!("/sys/bus/pci/devices/{bdf}"));
    let group: u32 = std::fs::read_link(sysfs.join("iommu_group"))?
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("no iommu_group")?
        .parse()?;
    let backend = if cdev {
        let name = std::fs::read_dir(sysfs.join("vfio-dev"))?
            .next()
            .ok_or("no vfio-dev (is the device on vfio-pci?)")??
            .file_name();
        let index = name
            .to_str()
            .and_then(|n| n.strip_prefix("vfio"))
            .ok_or("odd vfio-dev name")?;
        VfioBackend::Cdev {
            index: index.parse()?,
        }
    } else {
        VfioBackend::Group { group }
    };
    Ok(DeviceSpec {
        identity: DeviceIdentity::IommuGroup(group),
        mode,
        kind: DeviceKind::Vfio(VfioSpec {
            backend,
            functions: vec![VfioFunction {
                host: HostFunction::Pci(bdf.parse::<PciAddress>()?),
                sysfs_path: sysfs,
                class: None,
                is_pcie: true,
                large_bar: false,
            }],
        }),
    })
}

fn present(hv: &QemuHypervisor, name: &str) -> Result<bool> {
    let list =
        hv.with_client(|c| c.execute("qom-list", Some(&json!({"path": "/machine/peripheral"}))))??;
    Ok(list.to_string().contains(&format!("\"{name}\"")))
}

fn config() -> QemuConfig {
    QemuConfig {
        unplug_timeout: Duration::from_millis(500),
        ..QemuConfig::default()
    }
}

fn hot(bdf: &str, cdev: bool) -> Result<()> {
    let qemu = BareQemu::builder().ports(&["hp1"]).try_start()?;
    let hv = QemuHypervisor::connect(qemu.qmp_socket(), config())?;
    let m = DeviceManager::new(
        hv,
        ManagerConfig {
            root_ports: 1,
            name_offset: 0,
        },
    );
    let id = m.new_device(spec(bdf, PlugMode::Hot, cdev)?)?.id();
    m.attach(id)?;
    let name = QemuId::for_device(id, DeviceRole::VfioFunction(0)).to_string();
    if !present(m.hypervisor(), &name)? {
        return Err(format!("{name} not in the nested QEMU after attach").into());
    }
    if cdev {
        let objects = m
            .hypervisor()
            .with_client(|c| c.execute("qom-list", Some(&json!({"path": "/objects"}))))??;
        if !objects.to_string().contains("-iofd") {
            return Err(format!("no iommufd object: {objects}").into());
        }
    }
    if m.detach(id).is_ok() {
        return Err("detach without a guest should time out".into());
    }
    m.hypervisor()
        .with_client(|c| c.execute("system_reset", None))??;
    m.detach(id)?;
    if present(m.hypervisor(), &name)? {
        return Err(format!("{name} still in the nested QEMU after detach").into());
    }
    println!("hot {} ok", if cdev { "iommufd" } else { "legacy" });
    Ok(())
}

fn cold(bdf: &str, cdev: bool) -> Result<()> {
    let hv = QemuHypervisor::new(QemuConfig {
        root_ports: vec!["hp1".into()],
        ..config()
    });
    let m = DeviceManager::new(
        hv,
        ManagerConfig {
            root_ports: 1,
            name_offset: 0,
        },
    );
    let id = m.new_device(spec(bdf, PlugMode::Cold, cdev)?)?.id();
    m.attach(id)?;
    let args = m.hypervisor().boot_args();
    println!("cold args: {}", args.join(" "));
    let qemu = BareQemu::builder().ports(&["hp1"]).args(args).try_start()?;
    m.hypervisor().attach(qemu.qmp_socket())?;
    if !present(
        m.hypervisor(),
        &QemuId::for_device(id, DeviceRole::VfioFunction(0)).to_string(),
    )? {
        return Err("the cold-plugged vfio-pci is not in the nested QEMU".into());
    }
    println!("cold {} ok", if cdev { "iommufd" } else { "legacy" });
    Ok(())
}

/// The whole group of `bdf` hot-plugged, one root port per function, then removed.
fn group(bdf: &str) -> Result<()> {
    let sysfs = PathBuf::from(format!("/sys/bus/pci/devices/{bdf}"));
    let group: u32 = std::fs::read_link(sysfs.join("iommu_group"))?
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("no iommu_group")?
        .parse()?;
    let host = plugboard_devices::HostDevices::new(
        plugboard_sysfs::Sysfs::new("/sys"),
        plugboard_devices::BlockDriver::VirtioBlk,
    );
    let request = |node: String| plugboard_devices::DeviceRequest {
        container_path: PathBuf::from(&node),
        node_type: plugboard_devices::DevKind::Char,
        number: None,
        host_path: Some(PathBuf::from(node)),
        read_only: false,
        mode: PlugMode::Hot,
    };
    let spec = host.spec(&request(format!("/dev/vfio/{group}")))?;
    // Every function's cdev names the same group (issue 17, item 4).
    let mut cdevs = Vec::new();
    for member in std::fs::read_dir(sysfs.join("iommu_group/devices"))? {
        let vfio_dev = member?.path().join("vfio-dev");
        if let Ok(mut names) = std::fs::read_dir(&vfio_dev)
            && let Some(name) = names.next()
        {
            let name = name?.file_name();
            let name = name.to_str().ok_or("odd vfio-dev name")?;
            cdevs.push(host.spec(&request(format!("/dev/vfio/devices/{name}")))?);
        }
    }
    if cdevs.len() < 2 {
        return Err(format!("{} cdevs in group {group}; two are the point", cdevs.len()).into());
    }
    let DeviceKind::Vfio(vfio) = &spec.kind else {
        return Err("not a VFIO device".into());
    };
    let functions = vfio.functions.len();
    let conventional = vfio.functions.iter().filter(|f| !f.is_pcie).count();
    println!("group {group}: {functions} functions, {conventional} conventional PCI");
    if conventional == 0 {
        return Err("the group has no conventional PCI function to show".into());
    }
    let ports = ["hp1", "hp2", "hp3", "hp4"];
    let qemu = BareQemu::builder().ports(&ports).try_start()?;
    let hv = QemuHypervisor::connect(qemu.qmp_socket(), config())?;
    let m = DeviceManager::new(
        hv,
        ManagerConfig {
            root_ports: 4,
            name_offset: 0,
        },
    );
    // The first cdev creates the device (iommufd mode); the other cdevs and the group node
    // are the same device, and attaching through them only counts.
    let mut cdevs = cdevs.into_iter();
    let first = cdevs.next().ok_or("no cdev")?;
    let id = m.new_device(first)?.id();
    for other in cdevs.chain([spec]) {
        let named = other.identity.clone();
        if m.new_device(other)? != plugboard_devices::NewDevice::Existing(id) {
            return Err(format!("{named} became a second device").into());
        }
    }
    let users = m.device(id).ok_or("device gone")?.references.get();
    for _ in 0..users {
        m.attach(id)?;
    }
    println!("one device for the group node and every cdev, attached {users} times, plugged once");
    for (n, port) in (0u8..).zip(ports.iter().take(functions)) {
        let name = QemuId::for_device(id, DeviceRole::VfioFunction(n)).to_string();
        let bus = m.hypervisor().with_client(|c| {
            c.execute(
                "qom-get",
                Some(&json!({"path": format!("/machine/peripheral/{name}"), "property": "parent_bus"})),
            )
        })??;
        if bus != json!(format!("/machine/peripheral/{port}/{port}")) {
            return Err(format!("{name} is on {bus}, not on root port {port}").into());
        }
        println!("{name} on {port}");
    }
    let plugged = m
        .hypervisor()
        .with_client(|c| c.execute("qom-list", Some(&json!({"path": "/machine/peripheral"}))))??;
    let vfio_devices = plugged.to_string().matches("child<vfio-pci>").count();
    if vfio_devices != functions {
        return Err(format!("{vfio_devices} vfio-pci devices for {functions} functions").into());
    }
    for _ in 1..users {
        m.detach(id)?;
    }
    if m.detach(id).is_ok() {
        return Err("detach without a guest should time out".into());
    }
    m.hypervisor()
        .with_client(|c| c.execute("system_reset", None))??;
    // A reset completes the unplug requested so far; the removal stops at the first
    // function not let go of (last function first), so with no guest each function needs
    // a reset of its own: retry, resetting again, a bounded number of times.
    let mut tries = 0;
    while let Err(e) = m.detach(id) {
        tries += 1;
        if tries == 2 * functions {
            return Err(format!("the group did not leave the nested QEMU: {e}").into());
        }
        println!("removal not finished yet ({e}); reset and retry");
        m.hypervisor()
            .with_client(|c| c.execute("system_reset", None))??;
    }
    println!("NESTED-VFIO-GROUP-OK");
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: nested_vfio <DDDD:BB:SS.F> | --group <DDDD:BB:SS.F> | mdev:<UUID> [--cold-only]";
    let target = args.first().ok_or(usage)?;
    if target == "--group" {
        return group(args.get(1).ok_or(usage)?);
    }
    let cold_only = args.iter().any(|a| a == "--cold-only");
    let modes: &[bool] = if let Some(uuid) = target.strip_prefix("mdev:") {
        if !Path::new(&format!("/sys/bus/mdev/devices/{uuid}")).exists() {
            return Err(format!("no mdev {uuid}").into());
        }
        &[false]
    } else {
        if !Path::new(&format!("/sys/bus/pci/drivers/vfio-pci/{target}")).exists() {
            return Err(format!("{target} is not bound to vfio-pci").into());
        }
        &[false, true]
    };
    for &cdev in modes {
        if !cold_only {
            hot(target, cdev)?;
        }
        cold(target, cdev)?;
    }
    println!("NESTED-VFIO-OK");
    Ok(())
}
