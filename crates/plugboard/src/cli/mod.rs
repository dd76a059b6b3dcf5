//! Command-line parsing, the options every subcommand shares, and output helpers.
//!
//! Each subcommand family lives in its own module (`host`, `hostdev`, `vfio`, `vm`,
//! `serve`) with a clap `Subcommand` enum and a `run` function that parses, asks the core
//! for the answer (`daemon.rs` chooses where it comes from) and hands it to the command's
//! one renderer (`render/`).

mod daemon;
mod host;
mod hostdev;
#[cfg(test)]
mod parity_tests;
mod render;
mod serve;
mod table;
mod vfio;
mod vm;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Plugboard: attach host devices to VMs and keep the books on who uses what.
#[derive(Debug, Parser)]
#[command(name = "plugboard", version, about, propagate_version = true)]
pub struct Cli {
    /// Options shared by every subcommand.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every subcommand.
#[derive(Debug, Args)]
pub struct Global {
    /// Root of the sysfs tree to read and write (a fake kernel's tree in tests).
    #[arg(
        long,
        global = true,
        env = "PLUGBOARD_SYSFS_ROOT",
        default_value = "/sys"
    )]
    pub sysfs_root: PathBuf,
    /// Root of the device-node tree (`/dev`).
    #[arg(
        long,
        global = true,
        env = "PLUGBOARD_DEV_ROOT",
        default_value = "/dev"
    )]
    pub dev_root: PathBuf,
    /// Directory of Plugboard's persistent state (the hostdev registry).
    #[arg(
        long,
        global = true,
        env = "PLUGBOARD_STATE_DIR",
        default_value = "/var/lib/plugboard"
    )]
    pub state_dir: PathBuf,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The subcommand families.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Host inventory: PCI devices, IOMMU groups, device nodes.
    #[command(subcommand)]
    Host(host::HostCommand),
    /// Host-wide ownership of passthrough devices: who uses what, detach, give back.
    #[command(subcommand)]
    Hostdev(hostdev::HostdevCommand),
    /// VFIO devices: open one and show what the kernel reports.
    #[command(subcommand)]
    Vfio(vfio::VfioCommand),
    /// VMs and their devices, through the daemon.
    Vm(vm::VmArgs),
    /// Run the host daemon: HTTP/JSON on a Unix socket.
    Serve(serve::ServeArgs),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Host(cmd) => host::run(&cli.global, cmd),
        Command::Hostdev(cmd) => hostdev::run(&cli.global, cmd),
        Command::Vfio(cmd) => vfio::run(&cli.global, cmd),
        Command::Vm(args) => vm::run(&cli.global, args),
        Command::Serve(args) => serve::run(&cli.global, args),
    }
}

/// Sends logs to stderr; `-v` is info, `-vv` debug, `-vvv` trace; `RUST_LOG` wins.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only for a person at a terminal, never into a daemon's log file.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Prints an error and its causes on one line each, as `plugboard: error: …` then
/// `  caused by: …`.
pub fn print_error_chain(err: &anyhow::Error) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "plugboard: error: {err}");
    for cause in err.chain().skip(1) {
        let _ = writeln!(stderr, "  caused by: {cause}");
    }
}
