//! Runs **inside the lab guest** (see `tests/serve_lab.rs`): passes a real PCI function to a
//! nested QEMU through `plugboard serve` and the CLI, as an operator would, once per VFIO
//! interface the daemon is told to use.
//!
//! - `iommufd`: QEMU runs as `nobody`, so it cannot open `/dev/iommu` or the device cdev
//!   itself; the daemon opens both and hands them over (`getfd`), and QEMU's descriptors
//!   show it holds them.
//! - `legacy`: QEMU (as root: it opens `/dev/vfio/<group>` itself, which takes no
//!   descriptor) holds the group and the container.
//!
//! Each round: the daemon takes the NIC from e1000e (managed), plugs it, and on detach gives
//! it back. The nested QEMU has no guest OS, so the first detach times out (nobody
//! acknowledges) and a `system_reset` through a second QMP socket completes it, the same
//! dance as plugboard-qemu's `tests/bare_qemu.rs`.
//!
//! Usage: `nested_daemon_vfio <DDDD:BB:SS.F> <auto|legacy|iommufd>...`; prints
//! `NESTED-DAEMON-VFIO-OK` when every round passed.

use std::error::Error;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plugboard_qemu::qmp::QmpClient;
use plugboard_qemu::test_util::BareQemu;
use serde_json::{Value, json};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// `nobody` in the lab guest (and on Debian).
const NOBODY: u32 = 65534;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let bdf = args
        .next()
        .ok_or("usage: nested_daemon_vfio <bdf> <mode>...")?;
    let modes: Vec<String> = args.collect();
    if modes.is_empty() {
        return Err("name at least one mode".into());
    }
    for mode in &modes {
        round(&bdf, mode).map_err(|e| format!("{mode}: {e}"))?;
        println!("{mode} ok");
    }
    println!("NESTED-DAEMON-VFIO-OK");
    Ok(())
}

/// A `plugboard serve` child, killed on drop.
struct Daemon {
    child: Child,
    socket: PathBuf,
    state: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, mode: &str) -> Result<Self> {
        let socket = dir.join("plugboard.sock");
        let state = dir.join("state");
        let child = Command::new("plugboard")
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state)
            .args(["--vfio-mode", mode, "--unplug-timeout", "1"])
            .stdin(Stdio::null())
            .spawn()?;
        let daemon = Self {
            child,
            socket,
            state,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !daemon.socket.exists() {
            if Instant::now() > deadline {
                return Err("the daemon's socket did not appear within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(daemon)
    }

    /// `plugboard <args> --json` through this daemon: its exit status and JSON answer.
    fn cli(&self, args: &[&str]) -> Result<(bool, Value)> {
        let out = Command::new("plugboard")
            .args(args)
            .arg("--json")
            .env("PLUGBOARD_SOCKET", &self.socket)
            .env("PLUGBOARD_STATE_DIR", &self.state)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text.into_owned()));
        if !out.status.success() {
            eprintln!(
                "plugboard {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok((out.status.success(), json))
    }

    fn ok(&self, args: &[&str]) -> Result<Value> {
        match self.cli(args)? {
            (true, json) => Ok(json),
            (false, json) => Err(format!("plugboard {} failed: {json}", args.join(" ")).into()),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn round(bdf: &str, mode: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start(dir.path(), mode)?;
    let unprivileged = mode != "legacy";
    let test_qmp = dir.path().join("test-qmp.sock");
    let mut qemu = BareQemu::builder().ports(&["hp1"]);
    if unprivileged {
        qemu = qemu.user(NOBODY);
        // QEMU creates the second monitor's socket here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
    }
    // A second monitor for this program's own checks: the daemon holds the first.
    let qemu = qemu
        .args([
            "-qmp".to_owned(),
            format!("unix:{},server=on,wait=off", test_qmp.display()),
        ])
        .try_start()?;
    wait_for_path(&test_qmp)?;
    let mut monitor = QmpClient::connect(&test_qmp, Duration::from_secs(10))?;
    let qmp = qemu.qmp_socket().to_str().ok_or("odd QMP path")?.to_owned();
    daemon.ok(&["vm", "register", "nested", "--qmp", &qmp])?;

    let attached = daemon.ok(&["vm", "attach", "nested", "--pci", bdf])?;
    let id = attached["device"]["id"]
        .as_str()
        .ok_or_else(|| format!("no device id in {attached}"))?
        .to_owned();
    let backend = attached["device"]["spec"]["kind"]["backend"].clone();
    let expected = if unprivileged { "cdev" } else { "group" };
    if backend["type"] != expected {
        return Err(format!("backend {backend}, expected a {expected}").into());
    }
    let driver = driver_of(bdf)?;
    if driver.as_deref() != Some("vfio-pci") {
        return Err(format!("{bdf} is on {driver:?} after attach, not vfio-pci").into());
    }
    let held = open_files(qemu.pid())?;
    let peripherals = monitor.execute("qom-list", Some(&json!({"path": "/machine/peripheral"})))?;
    let name = format!("vfio-0-{id}");
    if !peripherals.to_string().contains(&format!("\"{name}\"")) {
        return Err(format!("{name} not in the nested QEMU: {peripherals}").into());
    }
    let holds = |prefix: &str| held.iter().any(|p| p.starts_with(prefix));
    if unprivileged {
        let objects = monitor.execute("qom-list", Some(&json!({"path": "/objects"})))?;
        if !objects.to_string().contains(plugboard_qemu::VM_IOMMUFD) {
            return Err(format!("no {} object: {objects}", plugboard_qemu::VM_IOMMUFD).into());
        }
        if !(holds("/dev/iommu") && holds("/dev/vfio/devices/vfio")) || holds("/dev/vfio/vfio") {
            return Err(format!(
                "QEMU (as nobody) should hold /dev/iommu and the cdev only: {held:?}"
            )
            .into());
        }
        println!("{mode}: backend {backend}; QEMU runs as uid {NOBODY} and holds {held:?}");
    } else {
        if !holds("/dev/vfio/vfio") || holds("/dev/iommu") {
            return Err(
                format!("QEMU should hold the legacy container and group: {held:?}").into(),
            );
        }
        println!("{mode}: backend {backend}; QEMU holds {held:?}");
    }
    let owners = daemon.ok(&["hostdev", "ls"])?;
    let owner = &owners["pci"][0]["owner"];
    if owners["pci"][0]["address"] != bdf
        || owner["driver"] != "plugboard"
        || owner["domain"] != "nested"
    {
        return Err(format!("hostdev ls does not show the VM as owner: {owners}").into());
    }

    // No guest OS acknowledges the unplug: the first detach times out, a reset completes it.
    let (detached, answer) = daemon.cli(&["vm", "detach", "nested", &id])?;
    if detached {
        return Err(format!("a detach without a guest should time out: {answer}").into());
    }
    monitor.execute("system_reset", None)?;
    daemon.ok(&["vm", "detach", "nested", &id])?;
    let driver = driver_of(bdf)?;
    if driver.as_deref() != Some("e1000e") {
        return Err(format!("{bdf} is on {driver:?} after detach, not back on e1000e").into());
    }
    let peripherals = monitor.execute("qom-list", Some(&json!({"path": "/machine/peripheral"})))?;
    if peripherals.to_string().contains(&format!("\"{name}\"")) {
        return Err(format!("{name} still in the nested QEMU after detach").into());
    }
    daemon.ok(&["vm", "unregister", "nested"])?;
    Ok(())
}

fn driver_of(bdf: &str) -> Result<Option<String>> {
    let link = PathBuf::from(format!("/sys/bus/pci/devices/{bdf}/driver"));
    Ok(std::fs::read_link(link)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())))
}

/// The device files process `pid` holds open.
fn open_files(pid: u32) -> Result<Vec<String>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        if let Ok(target) = std::fs::read_link(entry?.path()) {
            let target = target.display().to_string();
            if target.starts_with("/dev/") {
                files.push(target);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn wait_for_path(path: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        if Instant::now() > deadline {
            return Err(format!("{} did not appear within 10 s", path.display()).into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
