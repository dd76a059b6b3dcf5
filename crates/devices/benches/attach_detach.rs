//! Attach + detach of one device on a manager that holds 10 devices, and on one that holds
//! 10,000 (all attached, so the allocators and the hypervisor's view are full too). The goal:
//! the 10,000 case costs at most twice the 10 case. After criterion's report this prints the
//! ratio of the two medians, measured in the same run.

#![expect(
    clippy::expect_used,
    reason = "benchmark setup: a failure is a broken benchmark"
)]

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion};
use plugboard_devices::test_util::{InMemoryHypervisor, image_spec};
use plugboard_devices::{BlockDriver, DeviceId, DeviceManager, HypervisorKind, ManagerConfig};

const SIZES: [usize; 2] = [10, 10_000];
const GROUP: &str = "attach_detach";

/// A manager holding `size` devices: `size - 1` attached virtio-blk images, and the one
/// the benchmark attaches and detaches.
fn manager(size: usize) -> (DeviceManager<InMemoryHypervisor>, DeviceId) {
    let m = DeviceManager::new(
        // A VMM that places PCI devices itself: no port pool to run out of at 10,000 disks.
        InMemoryHypervisor::with_kind(HypervisorKind::CloudHypervisor).without_call_log(),
        ManagerConfig {
            root_ports: 0,
            name_offset: 1,
        },
    );
    for n in 0..size - 1 {
        let spec = image_spec(&format!("/img/held-{n}.raw"), BlockDriver::VirtioBlk);
        let id = m.new_device(spec).expect("new device").id();
        m.attach(id).expect("attach");
    }
    let target = m
        .new_device(image_spec("/img/target.raw", BlockDriver::VirtioBlk))
        .expect("new device")
        .id();
    assert_eq!(m.len(), size);
    assert_eq!(m.allocations().block_indexes.len(), size - 1);
    (m, target)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group(GROUP);
    for size in SIZES {
        let (m, target) = manager(size);
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                black_box(m.attach(black_box(target)).expect("attach"));
                black_box(m.detach(black_box(target)).expect("detach"));
            });
        });
    }
    group.finish();
}

/// The median of one benchmark from criterion's saved estimates, in nanoseconds.
fn median_ns(size: usize) -> Option<f64> {
    let dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        Into::into,
    );
    let path = dir.join(format!("criterion/{GROUP}/{size}/new/estimates.json"));
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    if let (Some(small), Some(large)) = (median_ns(SIZES[0]), median_ns(SIZES[1])) {
        println!(
            "attach+detach median: {} devices {small:.0} ns, {} devices {large:.0} ns, ratio {:.2} (goal <= 2.00)",
            SIZES[0],
            SIZES[1],
            large / small
        );
    }
}
