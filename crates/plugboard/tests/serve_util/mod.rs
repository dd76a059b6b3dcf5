//! Helpers for the `serve_*` tests: the daemon as a real process, a paused QEMU with
//! hotplug ports and a SCSI controller, and the CLI's own HTTP client.

#![allow(dead_code, reason = "each test binary uses a part of these helpers")]
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failure here is a test failure"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use plugboard_qemu::qmp::QmpClient;
use serde_json::Value;

#[path = "../../src/client.rs"]
mod client;

pub use client::Client;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_plugboard");

/// A running `plugboard serve`.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    /// Its socket.
    pub socket: PathBuf,
    /// Its stderr (logs at debug level).
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `plugboard serve` with its socket and log in `dir`, its state in `state`, the
    /// host seen through `sysfs_root`, and `extra` arguments; waits until it answers.
    pub fn start(dir: &Path, state: &Path, sysfs_root: &Path, extra: &[&str]) -> Self {
        Self::start_bin(BIN, dir, state, sysfs_root, extra)
    }

    /// Like [`Daemon::start`] with another build of the binary.
    pub fn start_bin(
        bin: &str,
        dir: &Path,
        state: &Path,
        sysfs_root: &Path,
        extra: &[&str],
    ) -> Self {
        let socket = dir.join("plugboard.sock");
        let log = dir.join(format!("daemon-{}.log", unique()));
        let child = Command::new(bin)
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(state)
            .arg("--sysfs-root")
            .arg(sysfs_root)
            .args(extra)
            .env("RUST_LOG", "debug")
            .env("NO_COLOR", "1")
            .env_remove("PLUGBOARD_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut daemon = Self {
            child: Some(child),
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::os::unix::net::UnixStream::connect(&daemon.socket).is_ok() {
                break;
            }
            if let Some(status) = daemon.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the daemon exited ({status}) before listening:\n{}",
                    daemon.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not listen:\n{}",
                daemon.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Its logs so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client of it.
    pub fn client(&self) -> Client {
        Client::new(&self.socket).unwrap()
    }

    /// One request; the answer's status and body (JSON, or a string for text).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(|b| serde_json::to_vec(b).unwrap());
        let answer = self.client().send(method, path, body).unwrap();
        let value = serde_json::from_str(&answer.body).unwrap_or(Value::String(answer.body));
        (answer.status, value)
    }

    /// `POST /v1/vms`: registers VM `name` on the QEMU at `qmp`; the answer's status and body.
    pub fn register_qemu(&self, name: &str, qmp: &Path) -> (u16, Value) {
        let body =
            serde_json::json!({"name": name, "endpoint": {"kind": "qemu", "qmp_socket": qmp}});
        self.request("POST", "/v1/vms", Some(&body))
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(self) -> ExitStatus {
        self.terminate();
        self.wait()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the exit.
    pub fn wait(mut self) -> ExitStatus {
        self.child.take().unwrap().wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A paused q35 QEMU (no guest) with hotplug root ports `hp1…` and a virtio-scsi
/// controller `scsi0`, its QMP socket in `dir`.
#[derive(Debug)]
pub struct Qemu {
    child: Child,
    /// The QMP socket.
    pub qmp: PathBuf,
}

impl Qemu {
    /// Starts it with `ports` root ports.
    pub fn start(dir: &Path, ports: u8) -> Self {
        Self::start_at(&dir.join(format!("qmp-{}.sock", unique())), ports)
    }

    /// Starts it with `ports` root ports and its QMP socket at `qmp`.
    pub fn start_at(qmp: &Path, ports: u8) -> Self {
        let qmp = qmp.to_path_buf();
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-machine",
            "q35,accel=tcg",
            "-nodefaults",
            "-display",
            "none",
            "-S",
            "-m",
            "128",
            "-device",
            "virtio-scsi-pci,id=scsi0,bus=pcie.0,addr=0x3",
        ]);
        for n in 0..ports {
            cmd.arg("-device").arg(format!(
                "pcie-root-port,id=hp{},chassis={},bus=pcie.0,addr=0x{:x}",
                n + 1,
                n + 1,
                n + 4
            ));
        }
        cmd.arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "qemu-system-x86_64 must be installed for the serve tests (lab/install-deps.sh)",
            );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !qmp.exists() {
            assert!(
                Instant::now() < deadline,
                "QEMU did not create {}",
                qmp.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, qmp }
    }

    /// Runs one QMP command on a session of our own (the daemon must not hold one).
    pub fn execute(&self, command: &str, args: Option<&Value>) -> Value {
        let mut c = QmpClient::connect(&self.qmp, Duration::from_secs(10)).unwrap();
        c.execute(command, args).unwrap()
    }

    /// The ids under `/machine/peripheral`.
    pub fn device_ids(&self) -> Vec<String> {
        let list = self.execute(
            "qom-list",
            Some(&serde_json::json!({"path": "/machine/peripheral"})),
        );
        list.as_array()
            .unwrap()
            .iter()
            .filter(|p| p["type"].as_str().is_some_and(|t| t.starts_with("child<")))
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sparse disk image of 16 MiB at `path`.
pub fn image(path: &Path) -> PathBuf {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(16 << 20).unwrap();
    path.to_path_buf()
}

/// An empty fake sysfs tree (no devices): enough for a daemon that only handles VMs.
pub fn empty_sysfs(dir: &Path) -> PathBuf {
    let root = dir.join("sys");
    for sub in [
        "bus/pci/devices",
        "bus/pci/drivers",
        "kernel/iommu_groups",
        "dev/block",
        "dev/char",
    ] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    root
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
