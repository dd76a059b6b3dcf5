//! Which process wrote an intent, and whether it still runs.
//!
//! A pid alone is reused by the kernel, so a stamp is the pid plus the process's start
//! time in clock ticks since boot (field 22 of `/proc/<pid>/stat`). `recover` leaves alone
//! the intents of a process whose stamp still matches: that operation is still running.

use std::path::Path;

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
            start: start_time(pid).unwrap_or(0),
        }
    }

    /// True while the process that wrote the stamp still runs.
    pub fn is_alive(&self) -> bool {
        match start_time(self.pid) {
            Some(start) => self.start == 0 || start == self.start,
            None => false,
        }
    }
}

/// Field 22 (`starttime`) of `/proc/<pid>/stat`; `None` when the process is gone.
fn start_time(pid: u32) -> Option<u64> {
    let stat =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: skip past it.
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3, so field 22 is the 20th here.
    rest.split_whitespace().nth(19)?.parse().ok()
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

    #[test]
    fn an_exited_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let stamp = ProcessStamp {
            pid: child.id(),
            start: start_time(child.id()).unwrap_or(1),
        };
        child.wait().unwrap();
        assert!(!stamp.is_alive());
    }
}
