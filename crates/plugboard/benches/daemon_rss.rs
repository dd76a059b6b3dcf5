//! The daemon's memory under load: `plugboard serve`'s resident set (VmRSS) idle, after
//! 100 requests, after 1,000 and after 10,000 mixed read requests on its Unix socket.
//!
//! The daemon serves a fake kernel's tree (64 PCI functions in 16 IOMMU groups, names
//! from the system's `pci.ids`) with a state directory in a temp dir. With
//! `PLUGBOARD_BENCH_SYSFS=/sys` it reads this machine's real sysfs instead: every request
//! is a GET, so nothing is written there (the registry lives in the temp state directory).
//!
//! The requests cycle through the host listing (with and without names), one device, the
//! IOMMU groups, the hostdev registry, the VMs, health and metrics. The first 1,000 come
//! from one client on one connection; the rest from four clients at once, each opening a
//! new connection every 250 requests, so the blocking pool runs several threads as it
//! would for several users. Every answer must be 200.
//!
//! Printed: the RSS after each phase in KiB and MiB, and whether the last one is at most
//! 10 MiB (the goal), with its anonymous (heap, stacks) and file-backed (code) parts and
//! the thread count. Run: `cargo bench -p plugboard --bench daemon_rss`
//! (`PLUGBOARD_BENCH_REQUESTS` changes the total, default 10,000; `PLUGBOARD_BENCH_BINARY`
//! runs another `plugboard` binary, e.g. an older build, for a before/after curve).

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark: a failure is a failed run"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plugboard_sysfs::fake::FakeKernel;

/// One HTTP/1.1 GET on a kept-alive connection; returns the status.
fn get(stream: &mut BufReader<UnixStream>, path: &str) -> u16 {
    write!(
        stream.get_mut(),
        "GET {path} HTTP/1.1\r\nHost: plugboard\r\nAccept: application/json\r\n\r\n"
    )
    .unwrap();
    let mut line = String::new();
    stream.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (mut length, mut chunked) = (None, false);
    loop {
        line.clear();
        stream.read_line(&mut line).unwrap();
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = Some(value.trim().parse::<usize>().unwrap()),
            "transfer-encoding" => chunked = value.trim().eq_ignore_ascii_case("chunked"),
            _ => {}
        }
    }
    if chunked {
        loop {
            line.clear();
            stream.read_line(&mut line).unwrap();
            let size = usize::from_str_radix(line.trim(), 16).unwrap();
            let mut body = vec![0; size + 2];
            stream.read_exact(&mut body).unwrap();
            if size == 0 {
                break;
            }
        }
    } else {
        let mut body = vec![0; length.unwrap_or(0)];
        stream.read_exact(&mut body).unwrap();
    }
    status
}

fn connect(socket: &Path) -> BufReader<UnixStream> {
    BufReader::new(UnixStream::connect(socket).unwrap())
}

/// The daemon's memory now, in KiB: VmRSS, and its parts RssAnon (heap, stacks) and
/// RssFile (the binary's and libraries' pages), and its thread count.
fn rss_kib(daemon: &Child) -> [u64; 4] {
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.id())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    [
        field("VmRSS:"),
        field("RssAnon:"),
        field("RssFile:"),
        field("Threads:"),
    ]
}

/// The `i`th request of the mix.
fn request(i: usize, device: &str) -> String {
    match i % 9 {
        0 => "/v1/host/devices".to_owned(),
        1 => format!("/v1/host/devices/{device}"),
        2 => "/v1/host/iommu-groups".to_owned(),
        3 => "/v1/hostdevs".to_owned(),
        4 => "/healthz".to_owned(),
        5 => "/metrics".to_owned(),
        6 => "/v1/host/devices?names=false".to_owned(),
        7 => "/v1/vms".to_owned(),
        _ => "/v1/host/iommu-groups?names=false".to_owned(),
    }
}

/// Sends requests `from..to` of the mix from one client, a new connection every `per`.
fn client(socket: &Path, device: &str, from: usize, to: usize, per: usize) {
    let mut stream = connect(socket);
    for i in from..to {
        if i > from && (i - from).is_multiple_of(per) {
            stream = connect(socket);
        }
        let path = request(i, device);
        let status = get(&mut stream, &path);
        assert_eq!(status, 200, "GET {path}");
    }
}

fn main() {
    let total: usize = std::env::var("PLUGBOARD_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let temp = tempfile::tempdir().unwrap();
    let (sysfs_root, dev_root, _kernel) = match std::env::var_os("PLUGBOARD_BENCH_SYSFS") {
        Some(root) => (PathBuf::from(root), PathBuf::from("/dev"), None),
        None => {
            let kernel = FakeKernel::builder()
                .synthetic_pci(64)
                .legacy_vfio_only()
                .build()
                .unwrap();
            (kernel.sysfs_root(), kernel.dev_root(), Some(kernel))
        }
    };
    let device = std::fs::read_dir(sysfs_root.join("bus/pci/devices"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .min()
        .expect("a PCI device to ask about");
    let socket = temp.path().join("plugboard.sock");
    let binary = std::env::var_os("PLUGBOARD_BENCH_BINARY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_plugboard")),
        PathBuf::from,
    );
    let mut daemon = Command::new(&binary)
        .arg("--sysfs-root")
        .arg(&sysfs_root)
        .arg("--dev-root")
        .arg(&dev_root)
        .arg("--state-dir")
        .arg(temp.path().join("state"))
        .arg("serve")
        .arg("--socket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while UnixStream::connect(&socket).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the daemon did not start"
        );
        assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    println!(
        "daemon_rss: {} serve on {} ({device} asked about), {total} requests",
        binary.display(),
        sysfs_root.display()
    );
    let mut curve = vec![("idle".to_owned(), rss_kib(&daemon))];
    let first = 100.min(total);
    client(&socket, &device, 0, first, first);
    curve.push((format!("after {first}"), rss_kib(&daemon)));
    let second = 1_000.min(total);
    client(&socket, &device, first, second, second);
    curve.push((format!("after {second}"), rss_kib(&daemon)));
    let clients = 4;
    let rest = total - second;
    let took = Instant::now();
    std::thread::scope(|scope| {
        for c in 0..clients {
            let (socket, device) = (&socket, &device);
            let from = second + c * rest / clients;
            let to = second + (c + 1) * rest / clients;
            scope.spawn(move || client(socket, device, from, to, 250));
        }
    });
    curve.push((format!("after {total}"), rss_kib(&daemon)));
    println!(
        "  ({} requests from {clients} clients in {:.1}s)",
        rest,
        took.elapsed().as_secs_f64()
    );
    for (when, [rss, anon, file, threads]) in &curve {
        println!(
            "{when:>14}: VmRSS {rss:>6} KiB = {:>4.1} MiB (anon {anon:>5} KiB, file {file:>5} KiB), {threads} threads",
            f64::from(u32::try_from(*rss).unwrap()) / 1024.0
        );
    }
    let last = curve.last().unwrap().1[0];
    println!(
        "RSS after {total} requests = {:.1} MiB (goal <= 10 MiB: {})",
        f64::from(u32::try_from(last).unwrap()) / 1024.0,
        if last <= 10 * 1024 { "met" } else { "NOT met" }
    );
    // SIGTERM: the daemon finishes and removes its socket.
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&daemon),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    daemon.wait().unwrap();
}
