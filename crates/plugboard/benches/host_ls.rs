//! `plugboard host ls` against `lspci -Dnnk` on this machine, side by side in one run.
//!
//! Both commands list the same devices with names and drivers. They run alternately, many
//! times, each as a fresh process with stdout discarded, so both pay process start-up and
//! see the same caches. Printed: median and mean wall time of each, and the ratio
//! plugboard / lspci (goal: at most 0.5). Also measured: `host ls --json`, and
//! `host ls --no-names` to show what the name lookup costs.
//!
//! Run: `cargo bench -p plugboard --bench host_ls` (`PLUGBOARD_BENCH_ITERS` to change the
//! iteration count, default 300). Read-only: nothing is written to /sys.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failure here is a test failure"
)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn time(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let took = start.elapsed();
    assert!(status.success(), "{cmd:?} failed: {status}");
    took
}

struct Stats {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Stats {
    fn median(&self) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        s[s.len() / 2]
    }

    fn mean(&self) -> Duration {
        self.samples.iter().sum::<Duration>() / u32::try_from(self.samples.len()).unwrap()
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is ignored.
    let iterations: usize = std::env::var("PLUGBOARD_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let plugboard = env!("CARGO_BIN_EXE_plugboard");
    let have_lspci = Command::new("lspci")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_lspci {
        eprintln!("host_ls bench: lspci is not installed; nothing to compare against");
        std::process::exit(1);
    }
    let mut runs: Vec<(Stats, Box<dyn Fn() -> Command>)> = vec![
        (
            Stats {
                name: "lspci -Dnnk",
                samples: vec![],
            },
            Box::new(|| {
                let mut c = Command::new("lspci");
                c.arg("-Dnnk");
                c
            }),
        ),
        (
            Stats {
                name: "plugboard host ls",
                samples: vec![],
            },
            Box::new(move || {
                let mut c = Command::new(plugboard);
                c.args(["host", "ls"]);
                c
            }),
        ),
        (
            Stats {
                name: "plugboard host ls --json",
                samples: vec![],
            },
            Box::new(move || {
                let mut c = Command::new(plugboard);
                c.args(["--json", "host", "ls"]);
                c
            }),
        ),
        (
            Stats {
                name: "plugboard host ls --no-names",
                samples: vec![],
            },
            Box::new(move || {
                let mut c = Command::new(plugboard);
                c.args(["host", "ls", "--no-names"]);
                c
            }),
        ),
    ];
    // Warm-up: page cache, dynamic loader.
    for (_, make) in &runs {
        for _ in 0..5 {
            time(&mut make());
        }
    }
    for i in 0..iterations {
        // Alternate the order each round so neither side always runs second.
        let n = runs.len();
        for k in 0..n {
            let j = if i % 2 == 0 { k } else { n - 1 - k };
            let (stats, make) = &mut runs[j];
            stats.samples.push(time(&mut make()));
        }
    }
    let lspci_median = runs[0].0.median();
    println!("host_ls: {iterations} alternating iterations on this machine");
    println!(
        "{:<32} {:>12} {:>12} {:>18}",
        "command", "median", "mean", "median / lspci"
    );
    for (stats, _) in &runs {
        println!(
            "{:<32} {:>10.3}ms {:>10.3}ms {:>18.3}",
            stats.name,
            stats.median().as_secs_f64() * 1e3,
            stats.mean().as_secs_f64() * 1e3,
            stats.median().as_secs_f64() / lspci_median.as_secs_f64()
        );
    }
    let ratio = runs[1].0.median().as_secs_f64() / lspci_median.as_secs_f64();
    println!(
        "RATIO plugboard host ls / lspci -Dnnk = {ratio:.3} (goal <= 0.5: {})",
        if ratio <= 0.5 { "met" } else { "NOT met" }
    );
}
