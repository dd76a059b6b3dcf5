//! The harness's own promises: exact status and output, and hard deadlines that kill QEMU
//! after the guest told what it was doing.

use std::time::Duration;

use plugboard_lab::{BootOptions, Guest, Initramfs, LabError};

use crate::boot;

fn alive(pid: u32) -> bool {
    // A reaped child has no /proc entry (and its pid is not reused this fast).
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
#[ignore = "boots the lab guest (lab/run-tests.sh)"]
fn exec_returns_status_and_exact_output_then_a_deadline_kills_the_guest() {
    let mut guest = boot();
    let out = guest
        .exec("printf 'a\\n\\nb\\n'; echo err >&2; exit 3")
        .unwrap();
    assert_eq!(out.status, 3);
    assert_eq!(out.output, "a\n\nb\nerr\n");
    let me = guest.exec("id -u; cat /proc/cmdline").unwrap();
    assert!(me.output.starts_with("0\n"), "{}", me.output);
    assert!(me.output.contains("intel_iommu=on"), "{}", me.output);

    let pid = guest.pid().unwrap();
    let err = guest
        .exec_with(
            "echo started; sleep 600",
            Duration::from_secs(3),
            &mut |_| {},
        )
        .unwrap_err();
    let LabError::ExecTimeout { diagnostics, .. } = &err else {
        panic!("{err}")
    };
    assert!(err.to_string().contains("started"), "{err}");
    // Before the kill, the guest told what it was doing: the command's processes with each
    // thread's kernel stack, and the kernel log with SysRq-w's blocked tasks.
    assert!(
        diagnostics.starts_with("The guest's state at the deadline"),
        "{diagnostics}"
    );
    assert!(diagnostics.contains(": sleep 600"), "{diagnostics}");
    assert!(
        diagnostics.contains("hrtimer_nanosleep"),
        "the sleeping thread's kernel stack: {diagnostics}"
    );
    assert!(
        diagnostics.contains("sysrq: Show Blocked State"),
        "{diagnostics}"
    );
    assert!(err.to_string().contains(diagnostics.as_str()));
    assert!(!alive(pid), "QEMU {pid} still running after the deadline");
    assert!(matches!(guest.exec("true"), Err(LabError::NotRunning(_))));
}

#[test]
#[ignore = "boots the lab guest (lab/run-tests.sh)"]
fn a_guest_that_does_not_boot_in_time_is_killed_and_reported() {
    let opts = BootOptions {
        boot_timeout: Duration::from_millis(200),
        ..BootOptions::default()
    };
    let err = Guest::boot(&opts, &Initramfs::new().unwrap()).unwrap_err();
    assert!(matches!(err, LabError::BootTimeout { .. }), "{err}");
}

#[test]
#[ignore = "boots the lab guest (lab/run-tests.sh)"]
fn dropping_the_guest_kills_qemu() {
    let guest = boot();
    let pid = guest.pid().unwrap();
    assert!(alive(pid));
    drop(guest);
    assert!(!alive(pid), "QEMU {pid} survived the drop");
}
