//! Running a libtest binary one test at a time, so that each test gets its own deadline
//! (libtest has no per-test timeout): list the tests with `--list`, then run each with
//! `--exact NAME`. This module holds the pure parts: sorting the caller's test arguments
//! into filters and flags, the commands, reading the list, and trimming libtest's per-run
//! framing from the output.

use crate::shell_quote;

/// The caller's extra test-binary arguments, sorted for listing and for running.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestArgs {
    /// What selects tests: the name filters, `--exact`, `--skip NAME`. Passed to `--list`.
    pub select: Vec<String>,
    /// Every other flag (`--nocapture`, `--show-output`, ...). Passed to each test's run.
    pub run: Vec<String>,
}

/// libtest options that take a separate value (`--skip NAME`, not `--skip=NAME`).
const WITH_VALUE: [&str; 7] = [
    "--skip",
    "--logfile",
    "--test-threads",
    "--format",
    "--color",
    "--shuffle-seed",
    "-Z",
];

impl TestArgs {
    /// Sorts `args` as libtest reads them: words not starting with `-` are name filters.
    pub fn split(args: &[String]) -> Self {
        let mut out = Self::default();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let name = arg.split('=').next().unwrap_or(arg);
            let selects = !arg.starts_with('-') || name == "--exact" || name == "--skip";
            let target = if selects {
                &mut out.select
            } else {
                &mut out.run
            };
            target.push(arg.clone());
            if WITH_VALUE.contains(&arg.as_str())
                && let Some(value) = it.next()
            {
                target.push(value.clone());
            }
        }
        out
    }

    /// The guest command that lists binary `exe`'s ignored (lab) tests, one `NAME: test`
    /// line each.
    pub fn list_command(&self, exe: &str) -> String {
        format!(
            "{} --ignored --list --format terse{}",
            shell_quote(exe),
            quoted(&self.select)
        )
    }

    /// The guest command that runs test `name` of `exe` alone.
    pub fn run_command(&self, exe: &str, name: &str) -> String {
        format!(
            "{} --ignored --exact --test-threads=1 --color never{} {}",
            shell_quote(exe),
            quoted(&self.run),
            shell_quote(name)
        )
    }
}

fn quoted(args: &[String]) -> String {
    args.iter()
        .map(|a| format!(" {}", shell_quote(a)))
        .collect()
}

/// The test names in the output of [`TestArgs::list_command`].
pub fn parse_list(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_string)
        .collect()
}

/// Drops the framing libtest prints around a one-test run (`running 1 test`, the `test
/// result:` line and the blank lines around them), so that one test per run reads like
/// one run of all: a `test NAME ... ok` line each, and a failure's report in full.
#[derive(Debug, Default)]
pub struct OneTestOutput {
    blanks: usize,
    printed: bool,
}

impl OneTestOutput {
    /// A filter for the next run.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one output line; returns the lines to show now.
    pub fn line(&mut self, line: &str) -> Vec<String> {
        if line == "running 1 test" || line.starts_with("test result: ") {
            self.blanks = 0;
            return Vec::new();
        }
        if line.is_empty() {
            self.blanks += 1;
            return Vec::new();
        }
        let mut out = Vec::new();
        if self.printed {
            out.extend(std::iter::repeat_n(String::new(), self.blanks));
        }
        self.blanks = 0;
        self.printed = true;
        out.push(line.to_string());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn filters_and_selection_go_to_the_list_other_flags_to_each_run() {
        let args = TestArgs::split(&strings(&[
            "two_devices",
            "--nocapture",
            "--skip",
            "slow",
            "--exact",
            "--skip=other",
            "--format",
            "pretty",
            "-q",
        ]));
        assert_eq!(
            args.select,
            strings(&["two_devices", "--skip", "slow", "--exact", "--skip=other"])
        );
        assert_eq!(
            args.run,
            strings(&["--nocapture", "--format", "pretty", "-q"])
        );
        assert_eq!(
            args.list_command("./plugboard-vfio-lab"),
            "./plugboard-vfio-lab --ignored --list --format terse two_devices --skip slow --exact --skip=other"
        );
        assert_eq!(
            args.run_command("./plugboard-vfio-lab", "a b"),
            "./plugboard-vfio-lab --ignored --exact --test-threads=1 --color never --nocapture --format pretty -q 'a b'"
        );
    }

    #[test]
    fn the_list_is_the_lines_naming_a_test() {
        let out = "a_device_is_refused: test\nbench_x: benchmark\ntwo_devices_share: test\n\n2 tests, 1 benchmark\n";
        assert_eq!(
            parse_list(out),
            strings(&["a_device_is_refused", "two_devices_share"])
        );
        assert!(parse_list("0 tests, 0 benchmarks\n").is_empty());
    }

    #[test]
    fn one_test_framing_is_dropped_and_a_failure_report_kept() {
        let run = |lines: &[&str]| {
            let mut f = OneTestOutput::new();
            lines.iter().flat_map(|l| f.line(l)).collect::<Vec<_>>()
        };
        let ok = [
            "",
            "running 1 test",
            "test a ... ok",
            "",
            "test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 11 filtered out; finished in 0.52s",
            "",
        ];
        assert_eq!(run(&ok), strings(&["test a ... ok"]));
        let failed = [
            "",
            "running 1 test",
            "test b ... FAILED",
            "",
            "failures:",
            "",
            "---- b stdout ----",
            "panicked at x.rs:1:1",
            "",
            "failures:",
            "    b",
            "",
            "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 11 filtered out",
            "",
        ];
        assert_eq!(
            run(&failed),
            strings(&[
                "test b ... FAILED",
                "",
                "failures:",
                "",
                "---- b stdout ----",
                "panicked at x.rs:1:1",
                "",
                "failures:",
                "    b",
            ])
        );
    }
}
