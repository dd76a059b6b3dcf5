//! `plugboard-lab`: the lab's command line, behind `lab/run.sh` and `lab/run-tests.sh`.
//!
//! - `plugboard-lab kernel`: build the guest kernel if needed, print its path.
//! - `plugboard-lab run [OPTIONS] -- COMMAND...`: boot the guest, run COMMAND in it, stream
//!   its output, exit with its status (124: a timeout killed the guest; 125: lab failure).
//! - `plugboard-lab test [-p PACKAGE]... [-- TEST-ARGS...]`: build every package's `lab`
//!   test binary and `plugboard`, pack them into one initramfs, boot once, and run each
//!   binary's ignored tests as root, one guest command per test with its own deadline
//!   (`--test-timeout`; a guest that missed one is killed after printing its state, and the
//!   next test gets a fresh guest), under a deadline for the whole binary (`--timeout`).
//! - `plugboard-lab initramfs OUT [--file ...]`: write the image for a hand-made QEMU run.
//!
//! Each stage's time goes to stderr.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use plugboard_lab::libtest::{self, OneTestOutput};
use plugboard_lab::{BootOptions, Guest, Initramfs, LabError, cargo, shell_quote};

#[derive(Debug, Parser)]
#[command(
    name = "plugboard-lab",
    about = "Boot the Plugboard lab guest and run things in it"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the guest kernel if it is not cached; print its path.
    Kernel,
    /// Boot the guest, run a command in it, exit with the command's status.
    Run(RunArgs),
    /// Run every package's `lab` test binary in one guest (the CI stage).
    Test(TestArgs),
    /// Write the lab initramfs (busybox, /init, the given files) for use with your own QEMU.
    Initramfs(InitramfsArgs),
}

#[derive(Debug, Args)]
struct InitramfsArgs {
    #[command(flatten)]
    machine: MachineArgs,
    /// Where to write the image (an uncompressed newc cpio).
    output: PathBuf,
}

#[derive(Debug, Args)]
struct MachineArgs {
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    mem: u64,
    /// Guest CPUs (more than one loses interrupts under TCG now and then: see lab/README.md).
    #[arg(long, default_value_t = 1)]
    smp: u32,
    /// An extra QEMU argument (repeat for each).
    #[arg(long = "qemu-arg", allow_hyphen_values = true)]
    qemu_args: Vec<String>,
    /// An extra kernel command-line argument (repeat for each).
    #[arg(long = "append")]
    kernel_args: Vec<String>,
    /// A host file to put in the guest, as HOST or HOST:GUEST (programs get their libraries).
    #[arg(long = "file")]
    files: Vec<String>,
    /// Keep debug info in packed programs (bigger image).
    #[arg(long)]
    no_strip: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    machine: MachineArgs,
    /// Deadline for the command, in seconds; the guest is killed when it passes.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// The command to run in the guest (`sh` syntax once joined). A first word naming a host
    /// program is packed into the guest at its absolute path.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct TestArgs {
    #[command(flatten)]
    machine: MachineArgs,
    /// Deadline for each test binary, all its tests together, in seconds.
    #[arg(long, default_value_t = 1200)]
    timeout: u64,
    /// Deadline for each test, in seconds: each test runs as its own guest command. 0: each
    /// binary runs as one command, under --timeout only.
    #[arg(long, env = "PLUGBOARD_LAB_TEST_TIMEOUT", default_value_t = 300)]
    test_timeout: u64,
    /// Only this package's `lab` tests (repeat for several; default: every package).
    #[arg(short, long = "package")]
    packages: Vec<String>,
    /// Extra arguments for each test binary (a test name filter, `--nocapture`, ...).
    #[arg(last = true)]
    test_args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Kernel => plugboard_lab::kernel().map(|k| {
            println!("{}", k.display());
            0
        }),
        Cmd::Run(args) => run(&args),
        Cmd::Test(args) => test(&args),
        Cmd::Initramfs(args) => base_image(&args.machine)
            .and_then(|img| img.write(&args.output))
            .map(|size| {
                eprintln!("wrote {} ({size} bytes)", args.output.display());
                0
            }),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1)),
        Err(e) => {
            eprintln!("plugboard-lab: {e}");
            ExitCode::from(
                if matches!(
                    e,
                    LabError::ExecTimeout { .. } | LabError::BootTimeout { .. }
                ) {
                    124
                } else {
                    125
                },
            )
        }
    }
}

/// Times one stage and prints it.
fn stage<T>(name: &str, f: impl FnOnce() -> Result<T, LabError>) -> Result<T, LabError> {
    let start = Instant::now();
    eprintln!("==> lab stage '{name}'");
    let r = f();
    let verdict = if r.is_ok() { "" } else { " (failed)" };
    eprintln!(
        "==> lab stage '{name}' took {:.1}s{verdict}",
        start.elapsed().as_secs_f64()
    );
    r
}

fn boot_options(m: &MachineArgs, kernel: PathBuf) -> BootOptions {
    let mut opts = BootOptions {
        kernel: Some(kernel),
        ..BootOptions::default()
    };
    opts.machine.memory_mib = m.mem;
    opts.machine.smp = m.smp;
    opts.machine.extra_qemu_args.clone_from(&m.qemu_args);
    opts.machine.kernel_args.clone_from(&m.kernel_args);
    opts
}

fn base_image(m: &MachineArgs) -> Result<Initramfs, LabError> {
    let mut img = Initramfs::new()?;
    img.strip_debug(!m.no_strip);
    for spec in &m.files {
        let (host, guest) = match spec.split_once(':') {
            Some((h, g)) => (PathBuf::from(h), g.to_string()),
            None => {
                let abs = absolute(Path::new(spec));
                let g = abs.display().to_string();
                (abs, g)
            }
        };
        add_host_file(&mut img, &host, &guest)?;
    }
    Ok(img)
}

fn add_host_file(img: &mut Initramfs, host: &Path, guest: &str) -> Result<(), LabError> {
    if is_executable(host) {
        img.add_binary(host, guest)?;
    } else {
        img.add_file(host, guest, 0o644);
    }
    Ok(())
}

fn boot(opts: &BootOptions, img: &Initramfs) -> Result<Guest, LabError> {
    let guest = stage("boot", || Guest::boot(opts, img))?;
    eprintln!(
        "==> lab guest up in {:.1}s, accelerator: {}{}",
        guest.boot_time().as_secs_f64(),
        guest.accel(),
        guest
            .accel_note()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    );
    Ok(guest)
}

fn run(args: &RunArgs) -> Result<i32, LabError> {
    let kernel = stage("kernel", plugboard_lab::kernel)?;
    let mut command = args.command.clone();
    let img = stage("initramfs", || {
        let mut img = base_image(&args.machine)?;
        if let Some(first) = command.first_mut() {
            let p = Path::new(first.as_str());
            if first.contains('/') && p.is_file() {
                let abs = absolute(p);
                add_host_file(&mut img, &abs, &abs.display().to_string())?;
                *first = abs.display().to_string();
            }
        }
        Ok(img)
    })?;
    let mut guest = boot(&boot_options(&args.machine, kernel), &img)?;
    let script = command
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    let out = stage("command", || {
        guest.exec_with(&script, Duration::from_secs(args.timeout), &mut |line| {
            println!("{line}");
        })
    })?;
    eprintln!("==> lab command exited with status {}", out.status);
    let _ = guest.shutdown();
    Ok(out.status)
}

fn test(args: &TestArgs) -> Result<i32, LabError> {
    let root = plugboard_lab::workspace_root();
    let kernel = stage("kernel", plugboard_lab::kernel)?;
    let mut failed = Vec::new();
    let mut summary = Vec::new();
    let (tests, binaries) = stage("build", || {
        let mut packages = cargo::packages_with_lab_tests(&root)?;
        if !args.packages.is_empty() {
            packages.retain(|p| args.packages.contains(p));
        }
        eprintln!("==> packages with a `lab` test: {packages:?}");
        // One package at a time, so one that does not compile fails alone.
        let mut tests = Vec::new();
        for p in &packages {
            match cargo::build_lab_tests(&root, std::slice::from_ref(p)) {
                Ok(built) => tests.extend(built),
                Err(e) => {
                    summary.push(format!("{p}-lab: not built: {e}"));
                    failed.push(format!("{p}-lab"));
                }
            }
        }
        let binaries = [
            cargo::build_plugboard(&root)?,
            cargo::build_bin(&root, "plugboard-dra", "plugboard-dra")?,
        ];
        Ok((tests, binaries))
    })?;
    let img = stage("initramfs", || {
        let mut img = base_image(&args.machine)?;
        for binary in &binaries {
            let name = binary.file_name().unwrap_or_default().to_string_lossy();
            let packed = format!("/usr/bin/{name}");
            img.add_binary(binary, &packed)?;
            // Tests that use the host path of a binary (CARGO_BIN_EXE_*) find it too.
            img.add_symlink(&binary.display().to_string(), &packed);
        }
        for t in &tests {
            img.add_binary(&t.executable, &format!("/lab-tests/{}-lab", t.package))?;
        }
        Ok(img)
    })?;
    if tests.is_empty() {
        eprintln!(
            "==> no package has a `lab` test (crates/*/tests/lab.rs); nothing to run in the guest"
        );
        for line in &summary {
            eprintln!("    {line}");
        }
        return Ok(i32::from(!failed.is_empty()));
    }
    let opts = boot_options(&args.machine, kernel);
    let mut lab = Lab {
        opts,
        img,
        guest: None,
    };
    lab.guest = Some(boot(&lab.opts, &lab.img)?);
    let all = Instant::now();
    for t in &tests {
        let name = format!("{}-lab", t.package);
        let outcome = if args.test_timeout == 0 {
            lab.run_binary_whole(&name, args)
        } else {
            lab.run_binary_per_test(&name, args)
        };
        summary.push(format!(
            "{name}: {} in {:.1}s",
            outcome.verdict, outcome.took
        ));
        if !outcome.ok {
            failed.push(name);
        }
    }
    eprintln!(
        "==> lab stage 'tests' took {:.1}s",
        all.elapsed().as_secs_f64()
    );
    for line in &summary {
        eprintln!("    {line}");
    }
    if let Some(g) = lab.guest.take() {
        let _ = g.shutdown();
    }
    if failed.is_empty() {
        Ok(0)
    } else {
        eprintln!("==> lab tests failed: {failed:?}");
        Ok(1)
    }
}

/// The guest the tests run in, and what it takes to boot a fresh one after a guest was
/// killed (a missed deadline).
struct Lab {
    opts: BootOptions,
    img: Initramfs,
    guest: Option<Guest>,
}

/// How one test binary went.
struct BinaryOutcome {
    ok: bool,
    verdict: String,
    took: f64,
}

/// How one guest command went.
enum Ran {
    Done(plugboard_lab::ExecOutput),
    /// It missed its deadline (the error, with the guest's state, was printed); the guest
    /// was killed.
    TimedOut,
    /// The guest failed otherwise (it could not boot, or QEMU exited).
    LabFailed(String),
}

impl Lab {
    /// Runs `script` with `timeout` in the guest, booting one first if the last was killed.
    fn exec(
        &mut self,
        label: &str,
        script: &str,
        timeout: Duration,
        on_line: &mut dyn FnMut(&str),
    ) -> Ran {
        let mut g = match self.guest.take() {
            Some(g) => g,
            None => match boot(&self.opts, &self.img) {
                Ok(g) => g,
                Err(e) => return Ran::LabFailed(format!("the guest did not boot again: {e}")),
            },
        };
        match g.exec_with(script, timeout, on_line) {
            Ok(out) => {
                self.guest = Some(g);
                Ran::Done(out)
            }
            Err(e @ LabError::ExecTimeout { .. }) => {
                eprintln!("==> lab: {label}: {e}");
                Ran::TimedOut
            }
            Err(e) => Ran::LabFailed(e.to_string()),
        }
    }

    /// The whole binary as one guest command, under `--timeout` only.
    fn run_binary_whole(&mut self, name: &str, args: &TestArgs) -> BinaryOutcome {
        let extra: String = args
            .test_args
            .iter()
            .map(|a| format!(" {}", shell_quote(a)))
            .collect();
        let script =
            format!("cd /lab-tests && ./{name} --ignored --test-threads=1 --color never{extra}");
        eprintln!("==> lab test binary {name} (in the guest, as root): {script}");
        let start = Instant::now();
        let ran = self.exec(name, &script, Duration::from_secs(args.timeout), &mut |l| {
            println!("{l}");
        });
        let took = start.elapsed().as_secs_f64();
        let (ok, verdict) = match ran {
            Ran::Done(out) => (out.success(), format!("status {}", out.status)),
            Ran::TimedOut => (
                false,
                format!(
                    "timed out after {}s (the guest's state is printed above)",
                    args.timeout
                ),
            ),
            Ran::LabFailed(e) => (false, e),
        };
        BinaryOutcome { ok, verdict, took }
    }

    /// Each test of the binary as its own guest command with its own deadline
    /// (`--test-timeout`), all of them within `--timeout`.
    fn run_binary_per_test(&mut self, name: &str, args: &TestArgs) -> BinaryOutcome {
        let start = Instant::now();
        let binary_deadline = start + Duration::from_secs(args.timeout);
        let exe = format!("./{name}");
        let targs = libtest::TestArgs::split(&args.test_args);
        let list = format!("cd /lab-tests && {}", targs.list_command(&exe));
        let listed = self.exec(
            name,
            &list,
            Duration::from_secs(120).min(binary_deadline.saturating_duration_since(Instant::now())),
            &mut |_| {},
        );
        let names = match listed {
            Ran::Done(out) if out.success() => libtest::parse_list(&out.output),
            Ran::Done(out) => {
                return BinaryOutcome {
                    ok: false,
                    verdict: format!(
                        "listing its tests failed (status {}): {}",
                        out.status,
                        out.output.trim()
                    ),
                    took: start.elapsed().as_secs_f64(),
                };
            }
            Ran::TimedOut => {
                return BinaryOutcome {
                    ok: false,
                    verdict: "listing its tests timed out".into(),
                    took: start.elapsed().as_secs_f64(),
                };
            }
            Ran::LabFailed(e) => {
                return BinaryOutcome {
                    ok: false,
                    verdict: format!("listing its tests failed: {e}"),
                    took: start.elapsed().as_secs_f64(),
                };
            }
        };
        eprintln!(
            "==> lab test binary {name} (in the guest, as root): {} tests, each alone with a {}s deadline: cd /lab-tests && {}",
            names.len(),
            args.test_timeout,
            targs.run_command(&exe, "NAME")
        );
        let (mut passed, mut failed, mut timed_out, mut not_run) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for test in &names {
            let left = binary_deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                not_run.push(test.clone());
                continue;
            }
            let deadline = Duration::from_secs(args.test_timeout).min(left);
            let script = format!("cd /lab-tests && {}", targs.run_command(&exe, test));
            let mut filter = OneTestOutput::new();
            let ran = self.exec(&format!("{name} {test}"), &script, deadline, &mut |l| {
                for line in filter.line(l) {
                    println!("{line}");
                }
            });
            match ran {
                Ran::Done(out) if out.success() => passed.push(test.clone()),
                Ran::Done(_) => failed.push(test.clone()),
                Ran::TimedOut => {
                    println!(
                        "test {test} ... TIMED OUT after {}s (the guest's state is printed on stderr)",
                        deadline.as_secs()
                    );
                    timed_out.push(test.clone());
                }
                Ran::LabFailed(e) => {
                    println!("test {test} ... LAB FAILED: {e}");
                    failed.push(test.clone());
                }
            }
        }
        let mut verdict = format!(
            "{} passed, {} failed, {} timed out",
            passed.len(),
            failed.len(),
            timed_out.len()
        );
        if !not_run.is_empty() {
            verdict.push_str(&format!(
                ", {} not run (the binary's {}s deadline passed)",
                not_run.len(),
                args.timeout
            ));
        }
        for (what, list) in [
            ("failed", &failed),
            ("timed out", &timed_out),
            ("not run", &not_run),
        ] {
            if !list.is_empty() {
                verdict.push_str(&format!("; {what}: {}", list.join(", ")));
            }
        }
        if names.is_empty() {
            // A filter may match tests of another binary only; without one, a binary with
            // no lab test to list is broken.
            return BinaryOutcome {
                ok: !targs.select.is_empty(),
                verdict: "no test matched".into(),
                took: start.elapsed().as_secs_f64(),
            };
        }
        BinaryOutcome {
            ok: failed.is_empty() && timed_out.is_empty() && not_run.is_empty(),
            verdict,
            took: start.elapsed().as_secs_f64(),
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
