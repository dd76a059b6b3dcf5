//! A bare QEMU for tests: q35 under TCG, no guest, empty root ports, a QMP socket.
//!
//! Enough for most QMP checks without a guest kernel: block nodes and devices go in,
//! `scsi-hd` unplugs at once, and `system_reset` finishes pending PCI unplugs. QEMU runs in
//! a temp dir, is SIGKILLed on drop and also dies with the thread that started it (see
//! `sys.rs`), so no test leaves one behind.
#![expect(
    clippy::expect_used,
    reason = "a test fixture: failing to set it up is the test's failure"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::cmdline;

/// The QEMU binary (`PLUGBOARD_QEMU` overrides).
pub fn qemu_binary() -> PathBuf {
    std::env::var_os("PLUGBOARD_QEMU").map_or_else(|| "qemu-system-x86_64".into(), PathBuf::from)
}

/// A running bare QEMU; killed on drop.
#[derive(Debug)]
pub struct BareQemu {
    child: Child,
    dir: tempfile::TempDir,
    qmp: PathBuf,
}

/// How to start a [`BareQemu`].
#[derive(Debug, Clone)]
pub struct BareQemuBuilder {
    ports: Vec<String>,
    memory_mib: u64,
    shared_memory: bool,
    paused: bool,
    extra: Vec<String>,
    user: Option<u32>,
}

impl Default for BareQemuBuilder {
    fn default() -> Self {
        Self {
            ports: ["hp1", "hp2", "hp3", "hp4"].map(String::from).to_vec(),
            memory_mib: 128,
            shared_memory: false,
            paused: true,
            extra: Vec::new(),
            user: None,
        }
    }
}

impl BareQemuBuilder {
    /// The empty root ports to create (default `hp1`…`hp4`).
    pub fn ports(mut self, ids: &[&str]) -> Self {
        self.ports = ids.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Back guest RAM with a shared memfd (for vhost-user).
    pub fn shared_memory(mut self, shared: bool) -> Self {
        self.shared_memory = shared;
        self
    }

    /// Start paused (`-S`, the default) or running (SeaBIOS spins, no OS).
    pub fn paused(mut self, paused: bool) -> Self {
        self.paused = paused;
        self
    }

    /// More arguments (coldplugged devices, `-machine nvdimm=on`, …).
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.extra.extend(args.into_iter().map(Into::into));
        self
    }

    /// Run QEMU as user and group `id` (an unprivileged QEMU, as libvirt and Kata run it),
    /// with no limit on locked memory, which VFIO DMA mappings are charged to. The scratch
    /// directory is made writable for it.
    pub fn user(mut self, id: u32) -> Self {
        self.user = Some(id);
        self
    }

    /// Starts QEMU and waits (at most 10 s) for its QMP socket.
    pub fn start(self) -> BareQemu {
        self.try_start().expect("start QEMU")
    }

    /// Starts QEMU; the error carries QEMU's stderr when it exits early.
    pub fn try_start(self) -> Result<BareQemu, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let qmp = dir.path().join("qmp.sock");
        let log = dir.path().join("qemu.log");
        let mut cmd = Command::new(qemu_binary());
        cmd.args([
            "-machine",
            "q35,accel=tcg",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()));
        if self.paused {
            cmd.arg("-S");
        }
        if self.shared_memory {
            cmd.args(cmdline::shared_memory_args(self.memory_mib));
        } else {
            cmd.args(["-m", &format!("{}M", self.memory_mib)]);
        }
        let ports: Vec<&str> = self.ports.iter().map(String::as_str).collect();
        cmd.args(cmdline::root_port_args(&ports, 1));
        cmd.args(&self.extra);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("QEMU log file"));
        crate::sys::kill_with_parent(&mut cmd);
        if let Some(id) = self.user {
            use std::os::unix::fs::PermissionsExt;
            use std::os::unix::process::CommandExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
                .map_err(|e| format!("cannot open {} to user {id}: {e}", dir.path().display()))?;
            cmd.uid(id).gid(id);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", qemu_binary().display()))?;
        if self.user.is_some() {
            // Before any device is plugged, so before any DMA mapping is charged.
            let unlimited = rustix::process::Rlimit {
                current: None,
                maximum: None,
            };
            let pid = rustix::process::Pid::from_raw(child.id().try_into().unwrap_or(i32::MAX));
            if let Err(e) =
                rustix::process::prlimit(pid, rustix::process::Resource::Memlock, unlimited)
            {
                let _ = child.kill();
                return Err(format!("cannot lift QEMU's locked-memory limit: {e}"));
            }
        }
        match wait_listening(&mut child, &qmp, &log) {
            Ok(()) => Ok(BareQemu { child, dir, qmp }),
            Err(NotListening::Exited { status, stderr }) => Err(format!(
                "QEMU exited ({status}) before its QMP socket appeared: {stderr}"
            )),
            Err(NotListening::TimedOut) => {
                Err("QEMU's QMP socket did not appear within 10 s".into())
            }
        }
    }
}

impl BareQemu {
    /// A builder with four empty root ports, paused, 128 MiB of private RAM.
    pub fn builder() -> BareQemuBuilder {
        BareQemuBuilder::default()
    }

    /// The QMP socket.
    pub fn qmp_socket(&self) -> &Path {
        &self.qmp
    }

    /// A scratch directory that lives as long as this QEMU.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILLs QEMU now and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether QEMU is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Creates an image with `qemu-img create -f <format>` in the scratch directory.
    pub fn image(&self, name: &str, format: &str, size: &str) -> PathBuf {
        let path = self.dir().join(name);
        if let Err(e) = create_image(&path, format, size) {
            panic!("{e}");
        }
        path
    }
}

impl Drop for BareQemu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates an image at `path` with `qemu-img create -f <format>`; the error carries
/// qemu-img's stderr.
pub fn create_image(path: &Path, format: &str, size: &str) -> Result<(), String> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", format])
        .arg(path)
        .arg(size)
        .output()
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "qemu-img: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A vhost-user backend process for tests (qemu-storage-daemon or virtiofsd), listening on
/// a socket in its own temp dir; SIGKILLed on drop.
#[derive(Debug)]
pub struct BackendProcess {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl BackendProcess {
    /// qemu-storage-daemon exporting a fresh raw image of `size` as vhost-user-blk.
    pub fn storage_daemon(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("disk.raw");
        let socket = dir.path().join("vhost-user-blk.sock");
        create_image(&image, "raw", size)?;
        let mut cmd = Command::new("qemu-storage-daemon");
        cmd.arg("--blockdev")
            .arg(format!("driver=file,node-name=file0,filename={}", image.display()))
            .args(["--blockdev", "driver=raw,node-name=disk0,file=file0"])
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=exp0,node-name=disk0,writable=on,addr.type=unix,addr.path={}",
                socket.display()
            ));
        Self::spawn(cmd, dir, socket, "qemu-storage-daemon")
    }

    /// virtiofsd sharing a fresh directory (see [`BackendProcess::shared_dir`]).
    pub fn virtiofsd() -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).expect("shared dir");
        let socket = dir.path().join("virtiofsd.sock");
        let mut cmd = Command::new(virtiofsd_binary());
        cmd.arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&shared)
            .args(["--sandbox", "none", "--cache", "never"]);
        Self::spawn(cmd, dir, socket, "virtiofsd")
    }

    fn spawn(
        mut cmd: Command,
        dir: tempfile::TempDir,
        socket: PathBuf,
        what: &str,
    ) -> Result<Self, String> {
        let log = dir.path().join("backend.log");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("backend log"));
        crate::sys::kill_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| {
            format!("cannot run {what}: {e} (lab/install-deps.sh and scripts/install-virtiofsd.sh install the backends)")
        })?;
        match wait_listening(&mut child, &socket, &log) {
            Ok(()) => Ok(Self { child, dir, socket }),
            Err(NotListening::Exited { status, stderr }) => {
                Err(format!("{what} exited ({status}): {stderr}"))
            }
            Err(NotListening::TimedOut) => Err(format!(
                "{what} did not listen on {} within 10 s",
                socket.display()
            )),
        }
    }

    /// The listening socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// virtiofsd's shared directory.
    pub fn shared_dir(&self) -> PathBuf {
        self.dir.path().join("shared")
    }

    /// Whether the backend still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why a started process is not listening on its socket.
enum NotListening {
    /// It exited first; `stderr` is what it wrote to its log.
    Exited { status: ExitStatus, stderr: String },
    /// It did not listen within 10 s; it has been killed and reaped.
    TimedOut,
}

/// Waits (at most 10 s) until `child` listens on `socket`; `log` is where its stderr goes.
fn wait_listening(child: &mut Child, socket: &Path, log: &Path) -> Result<(), NotListening> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::check_listening(socket).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let stderr = std::fs::read_to_string(log).unwrap_or_default();
            return Err(NotListening::Exited { status, stderr });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(NotListening::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// The virtiofsd binary: `PLUGBOARD_VIRTIOFSD`, else on PATH, else cargo's bin directory
/// (where `scripts/install-virtiofsd.sh` puts it).
pub fn virtiofsd_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PLUGBOARD_VIRTIOFSD") {
        return p.into();
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("virtiofsd"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
            .unwrap_or_default();
        home.join("bin").join("virtiofsd")
    })
}
