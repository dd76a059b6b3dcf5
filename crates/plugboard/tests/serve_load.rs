//! Load and footprint of `plugboard serve`, printed, never asserted on time:
//!
//! - `load`: 64 concurrent clients (each its own keep-alive connection) for a bounded
//!   time, first on `GET /v1/vms/{name}/devices`, then each attaching and detaching a disk
//!   of its own, against **real QEMUs** (4 paused q35 VMs, 16 clients each, virtio-scsi
//!   disks, which unplug without a guest). Prints p50/p99 latency and throughput, and
//!   fails on any error answer.
//! - `idle_rss`: the daemon's `VmRSS` after start, from `/proc/<pid>/status`.
//!
//! Run (release build for meaningful figures):
//! ```sh
//! cargo build --release -p plugboard
//! PLUGBOARD_BIN=$PWD/target/release/plugboard \
//!   cargo test --release -p plugboard --test serve_load -- --ignored --nocapture --test-threads=1
//! ```
//! `PLUGBOARD_LOAD_SECS` sets each phase's length (default 5).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failure here is a test failure"
)]

mod serve_util;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use serve_util::{BIN, Daemon, Qemu, empty_sysfs, image};

const CLIENTS: usize = 64;
const VMS: usize = 4;

fn bin() -> String {
    std::env::var("PLUGBOARD_BIN").unwrap_or_else(|_| BIN.to_owned())
}

fn phase_length() -> Duration {
    let secs = std::env::var("PLUGBOARD_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(secs)
}

async fn connect(socket: &Path) -> SendRequest<Full<Bytes>> {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// One request on a kept-alive connection: status, body, latency.
async fn call(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value, Duration) {
    let started = Instant::now();
    sender.ready().await.unwrap();
    let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(serde_json::to_vec(b).unwrap()));
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "plugboard")
        .header("content-type", "application/json")
        .body(Full::new(bytes))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let took = started.elapsed();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
        took,
    )
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: Vec<String>,
}

fn report(name: &str, tally: &Tally, wall: Duration) {
    let mut l = tally.latencies.clone();
    l.sort();
    let pct = |p: usize| {
        l.get((l.len() * p / 100).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{name}: {} requests in {:.1} s by {CLIENTS} clients: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, errors {}",
        l.len(),
        wall.as_secs_f64(),
        l.len() as f64 / wall.as_secs_f64(),
        pct(50).as_secs_f64() * 1e3,
        pct(99).as_secs_f64() * 1e3,
        l.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        tally.errors.len(),
    );
}

/// One phase: `CLIENTS` tasks, task `i` from `client(i, deadline)`, run until they end
/// (each stops at the deadline, `length` from now). Their merged tally and the wall time.
async fn phase<F, Fut>(length: Duration, client: F) -> (Tally, Duration)
where
    F: Fn(usize, Instant) -> Fut,
    Fut: Future<Output = Tally> + Send + 'static,
{
    let started = Instant::now();
    let deadline = started + length;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client(i, deadline)))
        .collect();
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await.unwrap();
        all.latencies.extend(t.latencies);
        all.errors.extend(t.errors);
    }
    (all, started.elapsed())
}

/// [`report`], then fails on any error answer (the first five shown).
fn report_no_errors(name: &str, tally: &Tally, wall: Duration) {
    report(name, tally, wall);
    assert!(
        tally.errors.is_empty(),
        "{:?}",
        &tally.errors[..tally.errors.len().min(5)]
    );
}

#[test]
#[ignore = "load test: prints figures (see the file's header for the command)"]
fn load() {
    let dir = tempfile::tempdir().unwrap();
    let sysfs = empty_sysfs(dir.path());
    let qemus: Vec<Qemu> = (0..VMS).map(|_| Qemu::start(dir.path(), 1)).collect();
    let daemon = Daemon::start_bin(&bin(), dir.path(), &dir.path().join("state"), &sysfs, &[]);
    for (n, q) in qemus.iter().enumerate() {
        let (status, answer) = daemon.register_qemu(&format!("vm{n}"), &q.qmp);
        assert_eq!(status, 201, "{answer}");
    }
    let disks: Vec<PathBuf> = (0..CLIENTS)
        .map(|i| image(&dir.path().join(format!("d{i}.img"))))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let socket = daemon.socket.clone();
    let length = phase_length();

    // Phase 1: reads.
    let (tally, wall) = runtime.block_on(phase(length, |i, deadline| {
        let socket = socket.clone();
        async move {
            let mut sender = connect(&socket).await;
            let path = format!("/v1/vms/vm{}/devices", i % VMS);
            let mut t = Tally::default();
            while Instant::now() < deadline {
                let (status, body, took) = call(&mut sender, "GET", &path, None).await;
                t.latencies.push(took);
                if status != 200 {
                    t.errors.push(format!("GET {path}: {status} {body}"));
                }
            }
            t
        }
    }));
    report_no_errors("GET /v1/vms/{name}/devices", &tally, wall);

    // Phase 2: attach and detach, each client its own disk (on VM i % 4).
    let (tally, wall) = runtime.block_on(phase(length, |i, deadline| {
        let socket = socket.clone();
        let disk = disks[i].clone();
        async move {
            let mut sender = connect(&socket).await;
            let devices = format!("/v1/vms/vm{}/devices", i % VMS);
            let body = json!({"kind": "disk", "path": disk, "driver": "virtio-scsi"});
            let mut t = Tally::default();
            while Instant::now() < deadline {
                let (status, answer, took) = call(&mut sender, "POST", &devices, Some(&body)).await;
                t.latencies.push(took);
                if status != 201 {
                    t.errors
                        .push(format!("attach {}: {status} {answer}", disk.display()));
                    break;
                }
                let id = answer["device"]["id"].as_str().unwrap();
                let path = format!("{devices}/{id}");
                let (status, answer, took) = call(&mut sender, "DELETE", &path, None).await;
                t.latencies.push(took);
                if status != 200 {
                    t.errors.push(format!("detach {path}: {status} {answer}"));
                    break;
                }
            }
            t
        }
    }));
    report_no_errors(
        "POST+DELETE /v1/vms/{name}/devices (attach/detach)",
        &tally,
        wall,
    );
    let (_, vms) = daemon.request("GET", "/v1/vms", None);
    for vm in vms["vms"].as_array().unwrap() {
        assert_eq!(vm["devices"], 0, "every disk was detached: {vm}");
    }
    drop(qemus);
}

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
#[ignore = "footprint: prints the idle daemon's RSS (see the file's header for the command)"]
fn idle_rss() {
    let dir = tempfile::tempdir().unwrap();
    let sysfs = empty_sysfs(dir.path());
    let qemu = Qemu::start(dir.path(), 1);
    let daemon = Daemon::start_bin(&bin(), dir.path(), &dir.path().join("state"), &sysfs, &[]);
    std::thread::sleep(Duration::from_secs(1));
    let at_start = rss_kib(daemon.pid());
    let (status, _) = daemon.register_qemu("vm0", &qemu.qmp);
    assert_eq!(status, 201);
    for _ in 0..100 {
        daemon.request("GET", "/v1/vms", None);
    }
    // Idle blocking threads exit after 10 s.
    std::thread::sleep(Duration::from_secs(11));
    let after = rss_kib(daemon.pid());
    println!(
        "idle RSS of {}: {at_start} KiB ({:.1} MiB) after start; {after} KiB ({:.1} MiB) idle with one VM after 100 requests",
        bin(),
        at_start as f64 / 1024.0,
        after as f64 / 1024.0
    );
}
