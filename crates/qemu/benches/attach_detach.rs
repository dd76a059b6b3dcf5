//! Attach + detach of a virtio-blk disk through the device manager and `QemuHypervisor`,
//! beside the same QMP commands sent by a minimal client, alternating in one run.
//!
//! Both talk to the same lab guest (so the guest really acknowledges each unplug), each on a
//! QMP monitor of its own, each on its own root port. One round is, for each side in turn
//! (the side that goes first alternates): attach (2 × `blockdev-add`, `device_add`) and
//! detach (`device_del`, wait for the device's `DEVICE_DELETED`, 2 × `blockdev-del`); the
//! sample is the attach time plus the detach time. Between the two the guest gets an untimed
//! pause to finish probing the new disk: a detach sent while the guest is still handling the
//! hot-add can be missed by it (the manager then asks again after a second, the minimal
//! client would wait forever), which would measure the guest, not us. The goal is a ratio of
//! at most 1.05.
//!
//! ```sh
//! cargo bench -p plugboard-qemu --bench attach_detach            # 40 rounds
//! PLUGBOARD_BENCH_ROUNDS=100 cargo bench -p plugboard-qemu --bench attach_detach
//! PLUGBOARD_BENCH_DEBUG=1 ...   # also print every line the minimal client reads
//! ```

use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use plugboard_devices::{
    BlockDriver, BlockSpec, DeviceIdentity, DeviceKind, DeviceManager, DeviceSpec, ManagerConfig,
    PlugMode,
};
use plugboard_lab::{BootOptions, Guest, Initramfs};
use plugboard_qemu::{QemuConfig, QemuHypervisor};
use serde_json::{Value, json};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// The untimed pause between attach and detach, for the guest to probe the new disk
/// (about 220 ms under TCG).
const SETTLE: Duration = Duration::from_millis(400);

/// The smallest QMP client that does the job: blocking reads, no ids, events skipped
/// except the one waited for.
struct RawClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl RawClient {
    fn connect(path: &Path) -> Result<Self> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut c = Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        c.line()?;
        c.execute(&json!({"execute": "qmp_capabilities"}))?;
        Ok(c)
    }

    fn line(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err("QEMU closed the raw monitor".into());
        }
        if std::env::var_os("PLUGBOARD_BENCH_DEBUG").is_some() {
            eprint!("raw <- {line}");
        }
        Ok(serde_json::from_str(&line)?)
    }

    fn execute(&mut self, cmd: &Value) -> Result<()> {
        writeln!(self.writer, "{cmd}")?;
        loop {
            let msg = self.line()?;
            if msg.get("event").is_some() {
                continue;
            }
            if let Some(err) = msg.get("error") {
                return Err(format!("{cmd}: {err}").into());
            }
            return Ok(());
        }
    }

    fn wait_deleted(&mut self, id: &str) -> Result<()> {
        loop {
            let msg = self.line()?;
            if msg["event"] == "DEVICE_DELETED" && msg["data"]["device"] == id {
                return Ok(());
            }
        }
    }

    fn attach(&mut self, image: &Path, port: &str) -> Result<()> {
        self.execute(&json!({"execute": "blockdev-add", "arguments": {
            "node-name": "raw0-file", "driver": "file", "filename": image, "read-only": false}}))?;
        self.execute(&json!({"execute": "blockdev-add", "arguments": {
            "node-name": "raw0-fmt", "driver": "raw", "file": "raw0-file", "read-only": false}}))?;
        self.execute(&json!({"execute": "device_add", "arguments": {
            "driver": "virtio-blk-pci", "id": "raw0", "drive": "raw0-fmt", "bus": port, "addr": "0x0"}}))?;
        Ok(())
    }

    fn detach(&mut self) -> Result<()> {
        self.execute(&json!({"execute": "device_del", "arguments": {"id": "raw0"}}))?;
        self.wait_deleted("raw0")?;
        self.execute(&json!({"execute": "blockdev-del", "arguments": {"node-name": "raw0-fmt"}}))?;
        self.execute(&json!({"execute": "blockdev-del", "arguments": {"node-name": "raw0-file"}}))?;
        Ok(())
    }
}

fn image(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::File::create(&path)?.set_len(16 << 20)?;
    Ok(path)
}

/// One attach + detach, timed in two parts.
#[derive(Debug, Clone, Copy)]
struct Sample {
    attach: Duration,
    detach: Duration,
}

fn median(mut values: Vec<Duration>) -> f64 {
    values.sort();
    values[values.len() / 2].as_secs_f64() * 1000.0
}

/// Prints and returns the medians (attach, detach, total) in milliseconds.
fn report(who: &str, samples: &[Sample]) -> (f64, f64, f64) {
    let attach = median(samples.iter().map(|s| s.attach).collect());
    let detach = median(samples.iter().map(|s| s.detach).collect());
    let total = median(samples.iter().map(|s| s.attach + s.detach).collect());
    println!("  {who:<34} {attach:>14.2} {detach:>14.2} {total:>14.2}");
    (attach, detach, total)
}

fn main() -> Result<()> {
    let rounds: usize = std::env::var("PLUGBOARD_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
        .max(3);
    let mut opts = BootOptions::default();
    opts.machine.memory_mib = 512;
    let dir = tempfile::tempdir()?;
    let raw_monitor = dir.path().join("raw-qmp.sock");
    opts.machine.extra_qemu_args = vec![
        "-chardev".into(),
        format!(
            "socket,id=rawqmp,path={},server=on,wait=off",
            raw_monitor.display()
        ),
        "-mon".into(),
        "chardev=rawqmp,mode=control".into(),
    ];
    let guest = Guest::boot(&opts, &Initramfs::new()?)?;
    eprintln!(
        "lab guest up in {:?} ({:?})",
        guest.boot_time(),
        guest.accel()
    );

    let config = QemuConfig {
        root_ports: vec!["hp1".into(), "hp2".into(), "hp3".into()],
        unplug_timeout: Duration::from_secs(30),
        ..QemuConfig::default()
    };
    let hv = QemuHypervisor::connect(guest.qmp_socket(), config)?;
    let manager = DeviceManager::new(
        hv,
        ManagerConfig {
            root_ports: 3,
            name_offset: 0,
        },
    );
    let mut raw = RawClient::connect(&raw_monitor)?;

    let managed_image = image(dir.path(), "managed.raw")?;
    let raw_image = image(dir.path(), "raw.raw")?;
    let id = manager
        .new_device(DeviceSpec {
            identity: DeviceIdentity::Path(managed_image.clone()),
            mode: PlugMode::Hot,
            kind: DeviceKind::Block(BlockSpec::new(&managed_image, BlockDriver::VirtioBlk)),
        })?
        .id();

    let mut managed = Vec::with_capacity(rounds);
    let mut minimal = Vec::with_capacity(rounds);
    let run_managed = || -> Result<Sample> {
        let t = Instant::now();
        manager.attach(id)?;
        let attach = t.elapsed();
        std::thread::sleep(SETTLE);
        let t = Instant::now();
        manager.detach(id)?;
        Ok(Sample {
            attach,
            detach: t.elapsed(),
        })
    };
    let run_raw = |raw: &mut RawClient| -> Result<Sample> {
        let t = Instant::now();
        raw.attach(&raw_image, "hp4")?;
        let attach = t.elapsed();
        std::thread::sleep(SETTLE);
        let t = Instant::now();
        raw.detach()?;
        Ok(Sample {
            attach,
            detach: t.elapsed(),
        })
    };
    // One warm-up round each (first hotplug into a port, page cache), not counted.
    run_managed()?;
    run_raw(&mut raw)?;
    for round in 0..rounds {
        if round % 2 == 0 {
            managed.push(run_managed()?);
            minimal.push(run_raw(&mut raw)?);
        } else {
            minimal.push(run_raw(&mut raw)?);
            managed.push(run_managed()?);
        }
    }
    println!(
        "attach+detach of a virtio-blk disk in the lab guest, {rounds} alternating rounds (ms):"
    );
    println!(
        "  {:<34} {:>14} {:>14} {:>14}",
        "", "attach median", "detach median", "total median"
    );
    let m = report("device manager + QemuHypervisor", &managed);
    let r = report("minimal QMP client", &minimal);
    println!(
        "  {:<34} {:>14.3} {:>14.3} {:>14.3}",
        "ratio (manager / minimal)",
        m.0 / r.0,
        m.1 / r.1,
        m.2 / r.2
    );
    guest.shutdown()?;
    Ok(())
}
