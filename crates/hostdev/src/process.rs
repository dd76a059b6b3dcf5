//! Which process wrote an intent, and whether it still runs.
//!
//! A pid alone is reused by the kernel, so a stamp is the pid plus the process's start
//! time in clock ticks since boot (field 22 of `/proc/<pid>/stat`). `recover` leaves alone
//! the intents of a process whose stamp still matches and that has not exited: that
//! operation is still running. A process that exited but was not yet reaped by its parent
//! (a zombie, state `Z`, or `X` while it is being reaped) still has its `/proc` entry and
//! its start time, yet it runs no more code: it counts as dead.

use std::path::Path;

/// Where the kernel shows processes.
const PROC: &str = "/proc";

/// A process identity that survives pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessStamp {
    /// The process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (0 when unknown).
    pub start: u64,
}

impl ProcessStamp {
    /// This process.
    pub fn current() -> Self {
        let pid = std::process::id();
        Self {
            pid,
            start: stat(Path::new(PROC), pid).map_or(0, |s| s.start),
        }
    }

    /// True while the process that wrote the stamp still runs: it exists, its start time
    /// matches, and it is not a zombie.
    pub fn is_alive(&self) -> bool {
        self.is_alive_in(Path::new(PROC))
    }

    /// [`is_alive`](Self::is_alive) with `/proc` at `proc_root`.
    pub(crate) fn is_alive_in(&self, proc_root: &Path) -> bool {
        match stat(proc_root, self.pid) {
            Some(stat) => !stat.exited() && (self.start == 0 || stat.start == self.start),
            None => false,
        }
    }
}

/// What recover needs from `/proc/<pid>/stat`.
struct Stat {
    /// Field 3, `state`: `R`, `S`, `D`, `Z`, `X`, ...
    state: char,
    /// Field 22, `starttime`.
    start: u64,
}

impl Stat {
    /// A zombie (`Z`) or a process being reaped (`X`, `x`): it runs no more code.
    fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Fields 3 and 22 of `<proc_root>/<pid>/stat`; `None` when the process is gone.
fn stat(proc_root: &Path, pid: u32) -> Option<Stat> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: skip past it.
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    // `rest` starts at field 3, so field 22 is 19 further.
    let state = rest.next()?.chars().next()?;
    let start = rest.nth(18)?.parse().ok()?;
    Some(Stat { state, start })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_changed_stamp_is_not() {
        let me = ProcessStamp::current();
        assert!(me.start > 0);
        assert!(me.is_alive());
        let reused = ProcessStamp {
            start: me.start + 1,
            ..me
        };
        assert!(!reused.is_alive());
    }

    /// Field 3 (`state`) of `/proc/<pid>/stat`, read the test's own way.
    fn state_of(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat[stat.rfind(')')? + 1..].trim_start().chars().next()
    }

    #[test]
    fn a_zombie_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not waited for: once `true` exits it stays a zombie until reaped.
        let stamp = ProcessStamp {
            pid,
            start: stat(Path::new(PROC), pid).unwrap().start,
        };
        let mut polls = 0;
        while state_of(pid) != Some('Z') {
            polls += 1;
            assert!(polls < 10_000, "{pid} never became a zombie");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let alive = stamp.is_alive();
        child.wait().unwrap();
        assert!(!alive, "a zombie counts as running");
    }

    #[test]
    fn an_exited_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let stamp = ProcessStamp {
            pid: child.id(),
            start: stat(Path::new(PROC), child.id()).map_or(1, |s| s.start),
        };
        child.wait().unwrap();
        assert!(!stamp.is_alive());
    }

    #[test]
    fn the_state_decides_under_a_fake_proc() {
        let root = tempfile::tempdir().unwrap();
        let write = |pid: u32, state: char| {
            let dir = root.path().join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            // A command name with spaces and a parenthesis, as the kernel allows.
            let tail = (4..22).map(|f| f.to_string()).collect::<Vec<_>>().join(" ");
            std::fs::write(
                dir.join("stat"),
                format!("{pid} (a (b) c) {state} {tail} 4242 0 0\n"),
            )
            .unwrap();
        };
        let stamp = |pid| ProcessStamp { pid, start: 4242 };
        for (pid, state, alive) in [
            (10, 'R', true),
            (11, 'S', true),
            (12, 'D', true),
            (13, 'T', true),
            (14, 'Z', false),
            (15, 'X', false),
        ] {
            write(pid, state);
            assert_eq!(stamp(pid).is_alive_in(root.path()), alive, "state {state}");
        }
        let reused = ProcessStamp { pid: 10, start: 1 };
        assert!(!reused.is_alive_in(root.path()));
        assert!(!stamp(99).is_alive_in(root.path()), "no such process");
    }
}
