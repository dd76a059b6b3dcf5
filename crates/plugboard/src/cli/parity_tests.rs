//! Every `host`, `hostdev` and `vfio` command answers the same locally and through the
//! daemon: each command's core call is made on both paths over one fixture (one fake
//! kernel, one registry), both answers go through the command's one renderer, and the
//! table and the `--json` must be identical; the local rendering is pinned by a snapshot.
//!
//! The daemon runs in this process (the real router on a real Unix socket, its service
//! over the fake kernel's sysfs), because only an in-process `Sysfs` gets the fake
//! kernel's semantics for writes.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugboard_service::{
    Caller, DeviceQuery, HostConfig, HostService, HostdevRequest, NamesQuery, Service,
    ServiceConfig, VfioQuery,
};
use plugboard_sysfs::fake::{FakeKernel, NodeSpec, PciSpec};
use plugboard_vfio::Mode;
use serde::Serialize;

use super::daemon::Core;
use super::render::{self, emit_to};
use crate::client::Client;
use crate::serve::{ServeOptions, serve};

const PCI_IDS: &str = "\
1af4  Red Hat, Inc.
\t1041  Virtio 1.0 network device
8086  Intel Corporation
\t10d3  82574L Gigabit Network Connection
\t244e  82801 PCI Bridge
\t29c0  82G33/G31/P35/P31 Express DRAM Controller
10de  NVIDIA Corporation
\t2330  GH100 [H100 SXM5 80GB]
C 02  Network controller
\t00  Ethernet controller
C 03  Display controller
\t02  3D controller
C 06  Bridge
\t00  Host bridge
\t04  PCI bridge
";

struct Fixture {
    kernel: FakeKernel,
    _dir: tempfile::TempDir,
    local: Core,
    daemon: Core,
}

fn fixture() -> Fixture {
    let e1000e = |a: &str| {
        PciSpec::new(a, 0x8086, 0x10d3)
            .class(0x02_0000)
            .driver("e1000e")
    };
    let kernel = FakeKernel::builder()
        .pci(
            PciSpec::new("0000:00:00.0", 0x8086, 0x29c0)
                .class(0x06_0000)
                .iommu_group(0),
        )
        .pci(PciSpec::bridge("0000:00:1e.0").iommu_group(5))
        .pci(e1000e("0000:01:01.0").parent("0000:00:1e.0").iommu_group(5))
        .pci(e1000e("0000:01:02.0").parent("0000:00:1e.0").iommu_group(5))
        .pci(e1000e("0000:02:00.0").iommu_group(7).numa_node(0))
        .pci(
            PciSpec::new("0000:3b:00.0", 0x10de, 0x2330)
                .class(0x03_0200)
                .iommu_group(8)
                .numa_node(1)
                .bar(0, 0xfb00_0000, 16 << 20)
                .driver("vfio-pci"),
        )
        .pci(
            PciSpec::new("0000:04:00.0", 0x1af4, 0x1041)
                .class(0x02_0000)
                .unbound(),
        )
        .node(NodeSpec::block("loop0", 7, 0))
        .legacy_vfio_only()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pci_ids = dir.path().join("pci.ids");
    std::fs::write(&pci_ids, PCI_IDS).unwrap();
    let config = HostConfig {
        state_dir: dir.path().join("state"),
        sysfs_root: kernel.sysfs_root(),
        dev_root: kernel.dev_root(),
        pci_ids: Some(pci_ids),
    };
    let caller = Caller::new(rustix::process::geteuid().as_raw());
    let local = Core::Local {
        host: Box::new(HostService::with_sysfs(config.clone(), kernel.sysfs())),
        caller,
    };
    let socket = dir.path().join("plugboard.sock");
    start_daemon(&kernel, &config, &socket);
    let daemon = Core::Daemon(Client::new(&socket).unwrap());
    Fixture {
        kernel,
        _dir: dir,
        local,
        daemon,
    }
}

/// The daemon on `socket`, in a thread of this process, until the test process exits.
fn start_daemon(kernel: &FakeKernel, config: &HostConfig, socket: &Path) {
    let service_config = ServiceConfig {
        host: config.clone(),
        unplug_timeout: Duration::from_secs(1),
        vfio_mode: Mode::Auto,
    };
    let host = HostService::with_sysfs(config.clone(), kernel.sysfs());
    let (service, _) = Service::open_with(service_config.clone(), host).unwrap();
    let options = ServeOptions {
        socket: socket.to_path_buf(),
        group: None,
        service: service_config,
    };
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(serve(
                Arc::new(service),
                &options,
                std::future::pending::<()>(),
            ))
            .unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(Instant::now() < deadline, "the daemon did not listen");
        std::thread::sleep(Duration::from_millis(10));
    }
}

type Table<T> = fn(&T, &mut dyn Write) -> std::io::Result<()>;

/// One core call and the renderer of its answer.
type Step<'a, T> = (&'a dyn Fn(&Core) -> anyhow::Result<T>, Table<T>);

/// The table and the JSON of `answer`, temp paths replaced by `<root>`.
fn rendered<T: Serialize>(f: &Fixture, answer: &T, table: Table<T>) -> String {
    let mut out = Vec::new();
    emit_to(&mut out, false, answer, table).unwrap();
    out.extend_from_slice(b"--- json\n");
    emit_to(&mut out, true, answer, table).unwrap();
    String::from_utf8(out)
        .unwrap()
        .replace(&f.kernel.root().display().to_string(), "<root>")
}

/// Renders the local answer and the daemon's; they must be identical.
fn same<T: Serialize>(
    f: &Fixture,
    call: impl Fn(&Core) -> anyhow::Result<T>,
    table: Table<T>,
) -> String {
    let local = rendered(f, &call(&f.local).unwrap(), table);
    let daemon = rendered(f, &call(&f.daemon).unwrap(), table);
    assert_eq!(local, daemon, "local (left) and daemon (right) differ");
    local
}

/// An operation and its undo: done and undone locally, then through the daemon, from the
/// same state; each step must render identically on both paths.
fn same_round_trip<T: Serialize, U: Serialize>(
    f: &Fixture,
    (op, op_table): Step<'_, T>,
    (undo, undo_table): Step<'_, U>,
) -> String {
    let l_op = rendered(f, &op(&f.local).unwrap(), op_table);
    let l_undo = rendered(f, &undo(&f.local).unwrap(), undo_table);
    let d_op = rendered(f, &op(&f.daemon).unwrap(), op_table);
    let d_undo = rendered(f, &undo(&f.daemon).unwrap(), undo_table);
    assert_eq!(l_op, d_op, "local (left) and daemon (right) differ");
    assert_eq!(l_undo, d_undo, "local (left) and daemon (right) differ");
    format!("{l_op}=== undo\n{l_undo}")
}

/// The error message of each path; the daemon's carries its status before the core's
/// message, which must be the same.
fn same_refusal<T: std::fmt::Debug>(
    f: &Fixture,
    call: impl Fn(&Core) -> anyhow::Result<T>,
) -> String {
    let local = format!("{:#}", call(&f.local).unwrap_err());
    let daemon = format!("{:#}", call(&f.daemon).unwrap_err());
    assert!(
        daemon.ends_with(&local),
        "the daemon's refusal ({daemon}) is not the core's ({local})"
    );
    local.replace(&f.kernel.root().display().to_string(), "<root>")
}

fn names() -> NamesQuery {
    NamesQuery { names: true }
}

fn request(owner: &str, devices: &[&str], managed: bool, whole_group: bool) -> HostdevRequest {
    HostdevRequest {
        owner: owner.to_owned(),
        devices: devices.iter().map(|d| (*d).to_owned()).collect(),
        managed,
        whole_group,
        shareable: false,
    }
}

fn address(text: &str) -> plugboard_sysfs::PciAddress {
    text.parse().unwrap()
}

#[test]
fn host_commands_answer_the_same_locally_and_through_the_daemon() {
    let f = fixture();
    insta::assert_snapshot!(
        "host_ls",
        same(
            &f,
            |c| c.devices(&DeviceQuery::default()),
            render::host::devices
        )
    );
    let filtered = DeviceQuery {
        class: Some("ethernet".into()),
        driver: Some("e1000e".into()),
        names: true,
    };
    insta::assert_snapshot!(
        "host_ls_filtered",
        same(&f, |c| c.devices(&filtered), render::host::devices)
    );
    let no_names = DeviceQuery {
        names: false,
        ..DeviceQuery::default()
    };
    insta::assert_snapshot!(
        "host_ls_no_names",
        same(&f, |c| c.devices(&no_names), render::host::devices)
    );
    insta::assert_snapshot!(
        "host_groups",
        same(&f, |c| c.groups(names()), render::host::groups)
    );
    insta::assert_snapshot!(
        "host_show",
        same(
            &f,
            |c| c.device(address("3b:00.0"), names()),
            render::host::device
        )
    );
    insta::assert_snapshot!(
        "host_resolve",
        same(
            &f,
            |c| c.resolve("b".parse().unwrap(), "7:0".parse().unwrap()),
            render::host::resolved
        )
    );
    insta::assert_snapshot!(
        "host_show_missing",
        same_refusal(&f, |c| c.device(address("09:00.0"), names()))
    );
}

#[test]
fn hostdev_commands_answer_the_same_locally_and_through_the_daemon() {
    let f = fixture();
    insta::assert_snapshot!(
        "hostdev_ls_empty",
        same(&f, Core::hostdevs, render::hostdev::listing)
    );
    let nic = address("02:00.0");
    insta::assert_snapshot!(
        "hostdev_detach_reattach",
        same_round_trip(
            &f,
            (&|c: &Core| c.detach(nic), render::hostdev::node_device),
            (&|c: &Core| c.reattach(nic), render::hostdev::node_device),
        )
    );
    insta::assert_snapshot!(
        "hostdev_reset",
        same(
            &f,
            |c| c.reset(address("3b:00.0")),
            render::hostdev::node_device
        )
    );
    let take = request("qemu/vm1", &["0000:01:01.0"], true, true);
    let give = request("qemu/vm1", &["0000:01:01.0", "0000:01:02.0"], false, false);
    insta::assert_snapshot!(
        "hostdev_prepare_release_whole_group",
        same_round_trip(
            &f,
            (&|c: &Core| c.prepare(&take), render::hostdev::prepared),
            (&|c: &Core| c.release(&give), render::hostdev::released),
        )
    );
    // A listing with active and inactive rows.
    f.local
        .prepare(&request("qemu/vm2", &["0000:02:00.0"], true, false))
        .unwrap();
    f.local.detach(address("01:01.0")).unwrap();
    insta::assert_snapshot!(
        "hostdev_ls",
        same(&f, Core::hostdevs, render::hostdev::listing)
    );
    insta::assert_snapshot!(
        "hostdev_recover",
        same(&f, Core::recover, render::hostdev::recovered)
    );
    insta::assert_snapshot!(
        "hostdev_prepare_in_use",
        same_refusal(&f, |c| c.prepare(&request(
            "qemu/vm3",
            &["0000:02:00.0"],
            true,
            false
        )))
    );
}

#[test]
fn vfio_info_is_refused_for_a_device_a_vm_holds_on_both_paths() {
    let f = fixture();
    f.local
        .prepare(&request("qemu/vm9", &["0000:02:00.0"], true, false))
        .unwrap();
    let query = VfioQuery { mode: Mode::Auto };
    let refusal = same_refusal(&f, |c| c.vfio_info(address("02:00.0"), query));
    assert_eq!(
        refusal,
        "PCI device 0000:02:00.0 is in use by qemu/vm9 (the hostdev registry); not opening it"
    );
    // A free device is opened on both paths (the fake kernel's nodes fail the first ioctl,
    // the same way on both).
    let refusal = same_refusal(&f, |c| c.vfio_info(address("3b:00.0"), query));
    assert!(refusal.contains("VFIO_GET_API_VERSION failed"), "{refusal}");
}
