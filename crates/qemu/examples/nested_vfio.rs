//! Runs **inside the lab guest** (see `tests/guest.rs`): passes a real PCI function, already
//! bound to vfio-pci in the guest, to a nested QEMU through the device manager and
//! `QemuHypervisor`, in legacy (group) and iommufd (cdev) mode, hot and cold.
//!
//! Usage: `nested_vfio <DDDD:BB:SS.F>` or `nested_vfio mdev:<UUID> [--cold-only]`; prints
//! `NESTED-VFIO-OK` when every step passed. An mdev goes in by `sysfsdev=` in legacy mode
//! only (plugboard opens mdevs through their group); `--cold-only` skips its hot plug. The
//! nested QEMU has no guest OS, so each hot unplug first times out (nobody acknowledges) and
//! `system_reset` completes it, the same dance as `tests/bare_qemu.rs`.

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
        identity: DeviceIdentity::Path(PathBuf::from(format!("/dev/vfio/{group}"))),
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

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let target = args
        .first()
        .ok_or("usage: nested_vfio <DDDD:BB:SS.F> | mdev:<UUID> [--cold-only]")?;
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
