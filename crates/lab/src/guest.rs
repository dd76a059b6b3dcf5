//! A running lab guest: QEMU started with the lab machine, the serial command channel, the
//! QMP socket path, and the guarantees that it never outlives its owner or its deadlines.
//!
//! Every boot has hard limits: the boot deadline, a deadline per command, and a lifetime
//! after which a watchdog thread SIGKILLs QEMU whatever the owner is doing. Dropping the
//! [`Guest`] kills QEMU; a killed owner takes QEMU with it (`PR_SET_PDEATHSIG`).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::accel::{Accel, AccelChoice};
use crate::console::{self, Console, READY, Stop};
use crate::error::{LabError, Result};
use crate::initramfs::Initramfs;
use crate::machine::{BootFiles, MachineConfig};
use crate::qmp::Qmp;
use crate::sys;

/// How to boot a guest. `Default` reads the `PLUGBOARD_LAB_*` environment variables.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// The machine (memory, CPUs, extra QEMU and kernel arguments).
    pub machine: MachineConfig,
    /// Which accelerator to use (`PLUGBOARD_LAB_ACCEL`).
    pub accel: AccelChoice,
    /// The kernel; `None`: `PLUGBOARD_LAB_KERNEL` or the cached build (built if missing).
    pub kernel: Option<PathBuf>,
    /// Deadline for the guest's ready line (`PLUGBOARD_LAB_BOOT_TIMEOUT`, seconds; 120).
    pub boot_timeout: Duration,
    /// Hard limit on the guest's whole life (`PLUGBOARD_LAB_LIFETIME`, seconds; 1800).
    pub lifetime: Duration,
    /// The QEMU binary (`PLUGBOARD_LAB_QEMU`; `qemu-system-x86_64`).
    pub qemu: PathBuf,
}

/// How long the guest's init may take to print its state after a missed deadline.
const DIAG_TIMEOUT: Duration = Duration::from_secs(60);

/// The boot deadline of a KVM attempt that can still fall back to TCG.
const KVM_BOOT_TIMEOUT: Duration = Duration::from_secs(30);

fn env_secs(name: &str, default: u64) -> Duration {
    let secs = std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Duration::from_secs(secs)
}

impl Default for BootOptions {
    fn default() -> Self {
        Self {
            machine: MachineConfig::default(),
            accel: AccelChoice::from_env(),
            kernel: None,
            boot_timeout: env_secs("PLUGBOARD_LAB_BOOT_TIMEOUT", 120),
            lifetime: env_secs("PLUGBOARD_LAB_LIFETIME", 1800),
            qemu: std::env::var_os("PLUGBOARD_LAB_QEMU")
                .map_or_else(|| PathBuf::from("qemu-system-x86_64"), PathBuf::from),
        }
    }
}

/// What a guest command returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Its exit status (as the guest shell reports it; 128+N for signal N).
    pub status: i32,
    /// Its stdout and stderr, interleaved as printed.
    pub output: String,
}

impl ExecOutput {
    /// Whether the status is 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// A booted lab guest, ready for commands.
#[derive(Debug)]
pub struct Guest {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    console: Console,
    watchdog: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    accel: Accel,
    accel_note: Option<String>,
    boot_time: Duration,
    qmp_socket: PathBuf,
    next_id: u64,
    gone: Option<&'static str>,
    run_dir: tempfile::TempDir,
}

impl Guest {
    /// Boots the standard lab image (busybox and `/init` only) with default options.
    pub fn boot_default() -> Result<Self> {
        Self::boot(&BootOptions::default(), &Initramfs::new()?)
    }

    /// Boots a guest from `initramfs` and waits until it serves commands. With KVM in the
    /// plan, a KVM guest that fails to boot is killed and TCG tried (see [`Guest::accel_note`]).
    pub fn boot(opts: &BootOptions, initramfs: &Initramfs) -> Result<Self> {
        let kernel = match &opts.kernel {
            Some(k) => k.clone(),
            None => crate::kernel::kernel()?,
        };
        let (plan, mut note) = opts.accel.plan();
        let mut result = Err(LabError::NotRunning("never started"));
        for (i, accel) in plan.iter().copied().enumerate() {
            let mut timeout = opts.boot_timeout;
            if accel == Accel::Kvm && i + 1 < plan.len() {
                // A KVM guest boots in seconds; one that does not is hung, not slow.
                timeout = timeout.min(KVM_BOOT_TIMEOUT);
            }
            result = Self::boot_once(opts, initramfs, &kernel, accel, timeout, note.clone());
            if let Err(e) = &result
                && e.is_qemu_abort_while_booting()
            {
                // QEMU 10.0's TCG can abort in `iotlb_to_section` while the guest sets up
                // its IOMMU and BARs: a QEMU race, not the guest's fault nor ours. Boot once
                // more, and say so; a second abort, or any other failure, stands.
                eprintln!(
                    "plugboard-lab: QEMU aborted while the guest was booting; booting once more: {}",
                    first_line(e)
                );
                result = Self::boot_once(opts, initramfs, &kernel, accel, timeout, note.clone());
            }
            match &result {
                Ok(_) => break,
                Err(e) if i + 1 < plan.len() => {
                    note = Some(format!(
                        "{accel} failed to boot, fell back: {}",
                        first_line(e)
                    ));
                }
                Err(_) => {}
            }
        }
        result
    }

    fn boot_once(
        opts: &BootOptions,
        initramfs: &Initramfs,
        kernel: &Path,
        accel: Accel,
        boot_timeout: Duration,
        note: Option<String>,
    ) -> Result<Self> {
        let run_dir = tempfile::Builder::new()
            .prefix("plugboard-lab.")
            .tempdir()
            .map_err(|e| LabError::io("create run dir in", std::env::temp_dir(), e))?;
        let image = run_dir.path().join("initramfs.cpio");
        initramfs.write(&image)?;
        let files = BootFiles {
            kernel: kernel.to_path_buf(),
            initramfs: image,
            qmp_socket: run_dir.path().join("qmp.sock"),
        };
        let parts = Self::start(opts, &files, accel, &run_dir)?;
        let mut guest = Self::assemble(parts, accel, note, files.qmp_socket, run_dir);
        guest.wait_ready(boot_timeout)?;
        Ok(guest)
    }

    fn start(
        opts: &BootOptions,
        files: &BootFiles,
        accel: Accel,
        run_dir: &tempfile::TempDir,
    ) -> Result<Parts> {
        let _ = fs::remove_file(&files.qmp_socket);
        let stderr_path = run_dir.path().join("qemu.stderr");
        let stderr =
            fs::File::create(&stderr_path).map_err(|e| LabError::io("create", &stderr_path, e))?;
        let mut cmd = Command::new(&opts.qemu);
        cmd.args(opts.machine.qemu_args(accel, files))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        sys::die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|source| LabError::Spawn {
            program: opts.qemu.display().to_string(),
            source,
        })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let (tx, rx) = mpsc::channel();
        let log_path = run_dir.path().join("console.log");
        if let Some(mut out) = stdout {
            std::thread::spawn(move || {
                let mut log = fs::File::create(log_path).ok();
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = out.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Some(l) = log.as_mut() {
                        let _ = l.write_all(&buf[..n]);
                    }
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            });
        }
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let pid = child.id();
        let lifetime = opts.lifetime;
        let watchdog = std::thread::spawn(move || {
            if done_rx.recv_timeout(lifetime) == Err(mpsc::RecvTimeoutError::Timeout) {
                eprintln!(
                    "plugboard-lab: guest (QEMU pid {pid}) exceeded its lifetime of {lifetime:?}; killed it"
                );
                sys::kill_pid(pid);
            }
        });
        Ok(Parts {
            child,
            stdin,
            console: Console::new(rx),
            watchdog: (done_tx, watchdog),
        })
    }

    fn assemble(
        parts: Parts,
        accel: Accel,
        note: Option<String>,
        qmp_socket: PathBuf,
        run_dir: tempfile::TempDir,
    ) -> Self {
        Self {
            child: Some(parts.child),
            stdin: parts.stdin,
            console: parts.console,
            watchdog: Some(parts.watchdog),
            accel,
            accel_note: note,
            boot_time: Duration::ZERO,
            qmp_socket,
            next_id: 1,
            gone: None,
            run_dir,
        }
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        match self.console.wait_for(READY, start + timeout) {
            Ok(()) => {
                self.boot_time = start.elapsed();
                Ok(())
            }
            Err(Stop::Timeout) => {
                self.kill("killed after a boot timeout");
                Err(LabError::BootTimeout {
                    timeout,
                    accel: self.accel.to_string(),
                    tail: self.console.tail(),
                })
            }
            Err(Stop::Eof) => Err(self.exited("booting")),
        }
    }

    /// Runs `script` (a `sh` script: one command or several lines) in the guest with a
    /// 120-second deadline. See [`Guest::exec_with`].
    pub fn exec(&mut self, script: &str) -> Result<ExecOutput> {
        self.exec_with(script, Duration::from_secs(120), &mut |_| {})
    }

    /// Runs `script` in the guest as root with `sh`, in `/`, stdin from `/dev/null`, and
    /// returns its status and output; `on_line` sees each output line as it arrives. If it
    /// does not finish within `timeout`, the guest's init is asked for its state (blocked
    /// tasks and kernel stacks, every user thread's stack and open files, the kernel log;
    /// up to a minute more), the guest is killed, and `ExecTimeout` returned with that
    /// state in its `diagnostics`.
    pub fn exec_with(
        &mut self,
        script: &str,
        timeout: Duration,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<ExecOutput> {
        if let Some(why) = self.gone {
            return Err(LabError::NotRunning(why));
        }
        let id = self.next_id;
        self.next_id += 1;
        let request = console::request(id, script);
        let sent = self
            .stdin
            .as_mut()
            .map(|s| s.write_all(request.as_bytes()).and_then(|()| s.flush()));
        if !matches!(sent, Some(Ok(()))) {
            return Err(self.exited("sending a command"));
        }
        let mut output = String::new();
        match self
            .console
            .collect(id, Instant::now() + timeout, on_line, &mut output)
        {
            Ok(status) => Ok(ExecOutput { status, output }),
            Err(Stop::Timeout) => {
                let diagnostics = self.diagnose(id);
                self.kill("killed after a command timeout");
                let tail: String = output
                    .chars()
                    .rev()
                    .take(2000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                Err(LabError::ExecTimeout {
                    command: script.chars().take(200).collect(),
                    timeout,
                    tail,
                    diagnostics,
                })
            }
            Err(Stop::Eof) => Err(self.exited("running a command")),
        }
    }

    /// Asks the guest's init for its state while command `id` runs past its deadline (see
    /// `lab/guest/init`) and returns it, headed by a line saying what it is, or saying why
    /// the guest gave none within [`DIAG_TIMEOUT`]. The guest keeps running.
    fn diagnose(&mut self, id: u64) -> String {
        let sent = self.stdin.as_mut().map(|s| {
            s.write_all(console::diag_request(id).as_bytes())
                .and_then(|()| s.flush())
        });
        if !matches!(sent, Some(Ok(()))) {
            return "The guest's state: not asked for, its console is closed.".into();
        }
        let started = Instant::now();
        let heading =
            "The guest's state at the deadline (blocked tasks, user threads, kernel log):";
        match self.console.diagnostics(id, started + DIAG_TIMEOUT) {
            Ok(text) => format!("{heading}\n{text}"),
            Err((why, text)) => {
                let why = match why {
                    Stop::Timeout => {
                        format!("its init gave no full answer within {DIAG_TIMEOUT:?}")
                    }
                    Stop::Eof => "QEMU exited while it answered".into(),
                };
                format!("{heading} ({why})\n{text}")
            }
        }
    }

    /// Powers the guest off and waits (up to 30 s, then kills it).
    pub fn shutdown(mut self) -> Result<()> {
        if self.gone.is_some() {
            return Ok(());
        }
        if let Some(s) = self.stdin.as_mut() {
            let _ = s.write_all(b"poweroff\n").and_then(|()| s.flush());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.gone = Some("powered off");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill("killed: no poweroff within 30 s");
        Err(LabError::NotRunning("killed: no poweroff within 30 s"))
    }

    /// The QMP socket (one client at a time); [`Guest::qmp`] connects to it.
    pub fn qmp_socket(&self) -> &Path {
        &self.qmp_socket
    }

    /// A QMP session with this guest's QEMU.
    pub fn qmp(&self) -> Result<Qmp> {
        Qmp::connect(&self.qmp_socket, Duration::from_secs(10))
    }

    /// The accelerator that runs this guest.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// Why KVM was not used (or why it fell back), if it was not.
    pub fn accel_note(&self) -> Option<&str> {
        self.accel_note.as_deref()
    }

    /// Time from QEMU start to the guest's ready line.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// This guest's private directory (initramfs, QMP socket, `console.log`, `qemu.stderr`);
    /// removed on drop. A good place for disk images.
    pub fn run_dir(&self) -> &Path {
        self.run_dir.path()
    }

    /// QEMU's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills QEMU now (idempotent).
    pub fn kill(&mut self, why: &'static str) {
        self.stop_watchdog();
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stdin = None;
        if self.gone.is_none() {
            self.gone = Some(why);
        }
    }

    fn stop_watchdog(&mut self) {
        if let Some((done, handle)) = self.watchdog.take() {
            drop(done);
            let _ = handle.join();
        }
    }

    fn exited(&mut self, during: &str) -> LabError {
        // The console is closed: QEMU is gone or going; reap it.
        let status = self
            .child
            .as_mut()
            .map(|c| {
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    match c.try_wait() {
                        Ok(Some(st)) => break st.to_string(),
                        Ok(None) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        _ => break "still running, killed".into(),
                    }
                }
            })
            .unwrap_or_default();
        self.kill("exited");
        let stderr =
            fs::read_to_string(self.run_dir.path().join("qemu.stderr")).unwrap_or_default();
        LabError::GuestExited {
            status,
            during: during.to_string(),
            tail: self.console.tail(),
            stderr,
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill("dropped");
    }
}

/// The pieces of a started QEMU.
struct Parts {
    child: Child,
    stdin: Option<ChildStdin>,
    console: Console,
    watchdog: (mpsc::Sender<()>, JoinHandle<()>),
}

fn first_line(e: &LabError) -> String {
    e.to_string().lines().next().unwrap_or("").to_string()
}
