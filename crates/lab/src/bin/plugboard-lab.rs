//! `plugboard-lab`: the lab's command line, behind `lab/run.sh` and `lab/run-tests.sh`.
//!
//! - `plugboard-lab kernel`: build the guest kernel if needed, print its path.
//! - `plugboard-lab run [OPTIONS] -- COMMAND...`: boot the guest, run COMMAND in it, stream
//!   its output, exit with its status (124: a timeout killed the guest; 125: lab failure).
//! - `plugboard-lab test [-p PACKAGE]... [-- TEST-ARGS...]`: build every package's `lab`
//!   test binary and `plugboard`, pack them into one initramfs, boot once, run each with
//!   `--ignored --test-threads=1` as root.
//! - `plugboard-lab initramfs OUT [--file ...]`: write the image for a hand-made QEMU run.
//!
//! Each stage's time goes to stderr.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
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
    /// Guest CPUs.
    #[arg(long, default_value_t = 2)]
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
    /// Deadline for each test binary, in seconds.
    #[arg(long, default_value_t = 1200)]
    timeout: u64,
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
    let (tests, plugboard) = stage("build", || {
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
        Ok((tests, cargo::build_plugboard(&root)?))
    })?;
    let img = stage("initramfs", || {
        let mut img = base_image(&args.machine)?;
        img.add_binary(&plugboard, "/usr/bin/plugboard")?;
        // Tests that use the host path of the binary (CARGO_BIN_EXE_*) find it too.
        img.add_symlink(&plugboard.display().to_string(), "/usr/bin/plugboard");
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
    let mut guest = Some(boot(&opts, &img)?);
    let extra: String = args
        .test_args
        .iter()
        .map(|a| format!(" {}", shell_quote(a)))
        .collect();
    let all = Instant::now();
    for t in &tests {
        let name = format!("{}-lab", t.package);
        let script =
            format!("cd /lab-tests && ./{name} --ignored --test-threads=1 --color never{extra}");
        // A binary that hung killed the guest: boot a fresh one for the next.
        let mut g = match guest.take() {
            Some(g) => g,
            None => match boot(&opts, &img) {
                Ok(g) => g,
                Err(e) => {
                    summary.push(format!(
                        "{name}: not run, the guest did not boot again: {e}"
                    ));
                    failed.push(name);
                    continue;
                }
            },
        };
        eprintln!("==> lab test binary {name} (in the guest, as root): {script}");
        let start = Instant::now();
        let result = g.exec_with(&script, Duration::from_secs(args.timeout), &mut |l| {
            println!("{l}");
        });
        let took = start.elapsed().as_secs_f64();
        match result {
            Ok(out) => {
                summary.push(format!("{name}: status {} in {took:.1}s", out.status));
                if !out.success() {
                    failed.push(name);
                }
                guest = Some(g);
            }
            Err(e) => {
                summary.push(format!("{name}: {e}"));
                failed.push(name);
            }
        }
    }
    eprintln!(
        "==> lab stage 'tests' took {:.1}s",
        all.elapsed().as_secs_f64()
    );
    for line in &summary {
        eprintln!("    {line}");
    }
    if let Some(g) = guest {
        let _ = g.shutdown();
    }
    if failed.is_empty() {
        Ok(0)
    } else {
        eprintln!("==> lab tests failed: {failed:?}");
        Ok(1)
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
