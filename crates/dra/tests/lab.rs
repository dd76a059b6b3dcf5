//! The DRA plugin on a real kernel: the lab guest (`lab/README.md`), a q35 machine with an
//! emulated IOMMU, e1000e NICs (8086:10d3) alone in their IOMMU groups and two behind a
//! PCIe-to-PCI bridge sharing one group.
//!
//! The plugin serves in this process on Unix sockets in a temp dir, over the guest's real
//! `/sys` and `/dev`, with the stand-in API server for the claims; the test drives it with
//! the kubelet's generated client. Every test is ignored on the host (`cargo test` never
//! binds anything here) and refuses to run outside the guest; every device it touched is
//! given back to e1000e when it ends, pass or fail.
//!
//! The last test runs the real `plugboard-dra` as a process, with the stand-in API
//! server of `apiserver.rs` (over HTTP, through `KUBECONFIG`), and SIGKILLs it mid-prepare.
//!
//! Run: `cargo run -q -p plugboard-lab -- test -p plugboard-dra -- --nocapture`.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

#[path = "apiserver.rs"]
#[allow(dead_code, reason = "the lab uses a part of the stand-in")]
mod apiserver;
#[path = "openapi.rs"]
#[allow(dead_code, reason = "the lab uses a part of the schema checks")]
mod openapi;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use plugboard_dra::proto::dra_v1;
use plugboard_dra::testing::{MemoryClaims, allocated_claim, connect};
use plugboard_dra::{CdiSpec, Driver, DriverConfig, Sockets};
use plugboard_service::{HostConfig, HostService};
use plugboard_sysfs::{PciAddress, Sysfs};
use plugboard_vfio::Mode;

const E1000E: (u16, u16) = (0x8086, 0x10d3);
const DRIVER: &str = "vfio.plugboard.dev";
const NODE: &str = "lab";

fn in_lab_guest() -> Sysfs {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    assert!(
        cmdline.split_whitespace().any(|a| a == "plugboard.lab=1"),
        "not in the lab guest: refusing to bind anything (run lab/run-tests.sh)"
    );
    Sysfs::default()
}

/// One e1000e alone in its group, and the shared group with its two e1000e.
fn nics(sysfs: &Sysfs) -> (PciAddress, u32, Vec<PciAddress>) {
    let mut by_group: BTreeMap<u32, Vec<PciAddress>> = BTreeMap::new();
    for dev in sysfs.pci_devices().unwrap() {
        if (dev.vendor_id().unwrap(), dev.device_id().unwrap()) == E1000E {
            let g = dev.iommu_group().unwrap().expect("the lab has an IOMMU");
            by_group.entry(g).or_default().push(dev.address());
        }
    }
    let mut single = None;
    let mut shared = None;
    for (g, members) in by_group {
        let endpoints = sysfs
            .iommu_group(g)
            .unwrap()
            .members
            .iter()
            .filter(|m| !m.bridge)
            .count();
        if endpoints == 1 {
            single.get_or_insert(members[0]);
        } else {
            shared = Some((g, members));
        }
    }
    let (group, members) = shared.expect("two e1000e sharing a group");
    assert_eq!(members.len(), 2);
    (
        single.expect("an e1000e alone in its group"),
        group,
        members,
    )
}

/// Gives every device back to e1000e when dropped.
struct Restore {
    sysfs: Sysfs,
    devices: Vec<PciAddress>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        for &a in &self.devices {
            let dev = self.sysfs.pci_device(a).unwrap();
            if dev.driver().unwrap().as_deref() != Some("e1000e")
                && let Err(err) = dev.reattach(Some("e1000e"))
            {
                eprintln!("restoring {a} to e1000e failed: {err}");
            }
        }
    }
}

fn driver_of(sysfs: &Sysfs, a: PciAddress) -> Option<String> {
    sysfs.pci_device(a).unwrap().driver().unwrap()
}

fn offer_name(a: PciAddress) -> String {
    format!("pci-{}", a.to_string().replace([':', '.'], "-"))
}

/// Claim `uid`'s CDI spec in `cdi_dir`, after checking that every device node it names is
/// on the host.
fn spec_with_its_nodes_present(cdi_dir: &Path, uid: &str) -> CdiSpec {
    let path = plugboard_dra::spec_path(cdi_dir, uid);
    let spec: CdiSpec = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for node in spec
        .devices
        .iter()
        .flat_map(|d| &d.container_edits.device_nodes)
    {
        let on_host = node.host_path.as_deref().unwrap_or(&node.path);
        assert!(Path::new(on_host).exists(), "{uid}: {on_host} missing");
    }
    spec
}

async fn claims_round_trip(mode: Mode) {
    let sysfs = in_lab_guest();
    let (single, group, pair) = nics(&sysfs);
    let mut all = vec![single];
    all.extend(&pair);
    let _restore = Restore {
        sysfs: sysfs.clone(),
        devices: all.clone(),
    };
    for &a in &all {
        assert_eq!(
            driver_of(&sysfs, a).as_deref(),
            Some("e1000e"),
            "{a} must start on e1000e"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(HostService::new(HostConfig {
        state_dir: dir.path().join("state"),
        sysfs_root: "/sys".into(),
        dev_root: "/dev".into(),
        pci_ids: None,
    }));
    let claims = Arc::new(MemoryClaims::new());
    let single_name = offer_name(single);
    let group_name = format!("iommu-group-{group}");
    claims.put(allocated_claim(
        "vms",
        "nic",
        "uid-nic",
        DRIVER,
        NODE,
        &[("nic", &single_name)],
    ));
    claims.put(allocated_claim(
        "vms",
        "pair",
        "uid-pair",
        DRIVER,
        NODE,
        &[("pair", &group_name)],
    ));
    let config = DriverConfig {
        driver_name: DRIVER.into(),
        node_name: NODE.into(),
        cdi_dir: dir.path().join("cdi"),
        vfio_mode: mode,
    };
    let driver = Arc::new(Driver::new(Arc::clone(&host), claims, config.clone()));
    let sockets = Sockets::new(&dir.path().join("reg"), &dir.path().join("plugin"), DRIVER);
    let (status, _) = tokio::sync::watch::channel(None);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn({
        let sockets = sockets.clone();
        async move {
            plugboard_dra::serve(driver, &sockets, status, async move {
                let _ = stopped.await;
            })
            .await
        }
    });
    for _ in 0..500 {
        if sockets.registration.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut dra = dra_v1::dra_plugin_client::DraPluginClient::new(connect(&sockets.dra).await);
    let claim = |name: &str, uid: &str| dra_v1::Claim {
        namespace: "vms".into(),
        uid: uid.into(),
        name: name.into(),
    };
    let both = vec![claim("nic", "uid-nic"), claim("pair", "uid-pair")];
    let answer = dra
        .node_prepare_resources(dra_v1::NodePrepareResourcesRequest {
            claims: both.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    for (uid, c) in &answer.claims {
        assert_eq!(c.error, "", "{uid}");
    }
    for &a in &all {
        assert_eq!(driver_of(&sysfs, a).as_deref(), Some("vfio-pci"), "{a}");
    }
    for uid in ["uid-nic", "uid-pair"] {
        for device in spec_with_its_nodes_present(&config.cdi_dir, uid).devices {
            eprintln!("{uid}: {:?}", device.container_edits);
        }
    }
    let answer = dra
        .node_unprepare_resources(dra_v1::NodeUnprepareResourcesRequest { claims: both })
        .await
        .unwrap()
        .into_inner();
    for (uid, c) in &answer.claims {
        assert_eq!(c.error, "", "{uid}");
    }
    for &a in &all {
        assert_eq!(driver_of(&sysfs, a).as_deref(), Some("e1000e"), "{a}");
    }
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "lab guest only: binds real devices"]
async fn claims_for_an_e1000e_and_the_shared_group_pair_round_trip_in_legacy_mode() {
    claims_round_trip(Mode::Legacy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "lab guest only: binds real devices"]
async fn claims_for_an_e1000e_and_the_shared_group_pair_round_trip_in_iommufd_mode() {
    claims_round_trip(Mode::Iommufd).await;
}

/// The `plugboard-dra` binary: cargo builds it with this test, and the lab packs it at its
/// host path (and at `/usr/bin/plugboard-dra`).
fn plugin_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_plugboard-dra"));
    assert!(bin.exists(), "{} is not packed", bin.display());
    bin
}

/// `plugboard-dra` as a DaemonSet runs it, with its sockets, state and CDI specs
/// under `dir` and the API server named by the kubeconfig `dir/kubeconfig`.
fn start_plugin(dir: &Path, log: &Path) -> Child {
    Command::new(plugin_bin())
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--node-name", NODE, "--publish-interval", "3600"])
        .arg("--registry-dir")
        .arg(dir.join("reg"))
        .arg("--plugin-dir")
        .arg(dir.join("plugin"))
        .arg("--cdi-dir")
        .arg(dir.join("cdi"))
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// A self-signed certificate (its key thrown away) as the kubeconfig's cluster CA. The
/// stand-in speaks plain HTTP, so it verifies nothing; but a kubeconfig without a CA makes
/// kube-rs load the system's roots, and the lab guest has none.
const UNUSED_CA_BASE64: &str = concat!(
    "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJtRENDQVQrZ0F3SUJBZ0lVZjdxVkVlOWND",
    "YzMvMFJLVnhXWVdDSVpMZVhzd0NnWUlLb1pJemowRUF3SXcKSVRFZk1CMEdBMVVFQXd3V2NHeDFa",
    "Mkp2WVhKa0xXeGhZaTF6ZEdGdVpDMXBiakFnRncweU5qRXlNRFV5TWpBNQpNVEJhR0E4eU1USTJN",
    "VEV4TVRJeU1Ea3hNRm93SVRFZk1CMEdBMVVFQXd3V2NHeDFaMkp2WVhKa0xXeGhZaTF6CmRHRnVa",
    "QzFwYmpCWk1CTUdCeXFHU000OUFnRUdDQ3FHU000OUF3RUhBMElBQkpxcFhTVEN5OWFNOWZ4MEo0",
    "dmQKby9ZZTR5QWE1ZzZrYklIV0hTcnR5R2lBYWgzVWhFWXVMOEFxTE1aT0VIUGU3ellWUWlxZW51",
    "TTB5RVVvZ2JtRwpVTmlqVXpCUk1CMEdBMVVkRGdRV0JCUTRJanhLekw0cVVROVc4MmRlQ01yTUF0",
    "TFpyVEFmQmdOVkhTTUVHREFXCmdCUTRJanhLekw0cVVROVc4MmRlQ01yTUF0TFpyVEFQQmdOVkhS",
    "TUJBZjhFQlRBREFRSC9NQW9HQ0NxR1NNNDkKQkFNQ0EwY0FNRVFDSUQ1VlRBVjU0SUZRekMraTJI",
    "SDBDMVBYMHMxVFJ1SktxeXRXY3RNMW5STHFBaUJvVmR5TAoyRnUzWmFjZE5Db0xsL0NBakxEbDFU",
    "Qmk5c1l1RmMzUkF3NmluQT09Ci0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K",
);

/// A kubeconfig naming the stand-in at `server` (plain HTTP on loopback).
fn write_kubeconfig(path: &Path, server: &str) {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\n\
         \x20   certificate-authority-data: {UNUSED_CA_BASE64}\n\
         contexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n\
         current-context: lab\nusers:\n- name: lab\n  user: {{}}\n"
    );
    std::fs::write(path, text).unwrap();
}

/// Waits until the socket `path` accepts a connection (the plugin recovered and serves; a
/// killed instance leaves its socket file behind, refusing), or panics with its log.
async fn wait_for(path: &Path, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::UnixStream::connect(path).await.is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the plugin exited ({status}) before serving:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no {} after 60 s:\n{}",
            path.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGKILLs `child` and reaps it.
fn kill(child: &mut Child) {
    let _ = child.kill();
    child.wait().unwrap();
}

/// Where the shared pair is: both owned by the claim on vfio-pci, or both back on e1000e
/// with no owner and no override; anything between is a failure.
fn pair_state(sysfs: &Sysfs, host: &HostService, pair: &[PciAddress], owner: &str) -> bool {
    let books = host.hostdevs().unwrap();
    assert!(books.pending.is_empty(), "pending: {:?}", books.pending);
    let mut owned = Vec::new();
    for &a in pair {
        let driver = driver_of(sysfs, a);
        let over = sysfs.pci_device(a).unwrap().driver_override().unwrap();
        let row = books.pci.iter().find(|r| r.address == a.to_string());
        let holder = row.and_then(|r| r.owner.as_ref()).map(ToString::to_string);
        match (driver.as_deref(), holder.as_deref()) {
            (Some("vfio-pci"), Some(o)) if o == owner => owned.push(true),
            (Some("e1000e"), None) if over.is_none() => owned.push(false),
            _ => panic!("{a} half-done: driver {driver:?}, override {over:?}, owner {holder:?}"),
        }
    }
    assert!(
        owned.windows(2).all(|w| w[0] == w[1]),
        "group split: {owned:?}"
    );
    owned[0]
}

/// The real `plugboard-dra` process SIGKILLed at moments spread over a prepare of the
/// shared pair (start-up, claim read, journal, unbind, bind, commit, spec), then started
/// again: it recovers before its sockets appear, the pair is whole (owned or back on
/// e1000e, never split, nothing pending), the kubelet's retried prepare succeeds with the
/// CDI spec's nodes present, and unprepare gives the pair back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "lab guest only: binds real devices"]
async fn the_plugin_process_killed_mid_prepare_recovers_before_it_serves() {
    const ROUNDS: u32 = 12;
    let sysfs = in_lab_guest();
    let (_, group, pair) = nics(&sysfs);
    let _restore = Restore {
        sysfs: sysfs.clone(),
        devices: pair.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("plugin.log");
    let api = apiserver::ApiServer::start().await;
    api.put_node(NODE, "node-uid-lab");
    write_kubeconfig(&dir.path().join("kubeconfig"), &api.url());
    api.put_claim(&allocated_claim(
        "vms",
        "pair",
        "uid-pair",
        DRIVER,
        NODE,
        &[("pair", &format!("iommu-group-{group}"))],
    ));
    let owner = "k8s/vms/uid-pair";
    let registration = dir.path().join("reg").join(format!("{DRIVER}-reg.sock"));
    let dra_socket = dir.path().join("plugin").join("dra.sock");
    let host = HostService::new(HostConfig {
        state_dir: dir.path().join("state"),
        sysfs_root: "/sys".into(),
        dev_root: "/dev".into(),
        pci_ids: None,
    });
    let request = || dra_v1::NodePrepareResourcesRequest {
        claims: vec![dra_v1::Claim {
            namespace: "vms".into(),
            uid: "uid-pair".into(),
            name: "pair".into(),
        }],
    };
    let unprepare = || dra_v1::NodeUnprepareResourcesRequest {
        claims: request().claims,
    };

    // Prepare and unprepare unkilled, three times: how long a prepare takes here (the
    // fastest; the first also pages the binary in), the span the kills are spread over.
    let mut plugin = start_plugin(dir.path(), &log);
    wait_for(&registration, &mut plugin, &log).await;
    let mut dra = dra_v1::dra_plugin_client::DraPluginClient::new(connect(&dra_socket).await);
    let mut took = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let answer = dra
            .node_prepare_resources(request())
            .await
            .unwrap()
            .into_inner();
        took = took.min(start.elapsed());
        assert_eq!(answer.claims["uid-pair"].error, "");
        assert!(pair_state(&sysfs, &host, &pair, owner));
        let answer = dra
            .node_unprepare_resources(unprepare())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.claims["uid-pair"].error, "");
        assert!(!pair_state(&sysfs, &host, &pair, owner));
    }
    kill(&mut plugin);
    println!(
        "unkilled prepare of the pair (fastest of 3): {} ms",
        took.as_millis()
    );

    let mut outcomes: BTreeMap<&str, u32> = BTreeMap::new();
    for round in 0..ROUNDS {
        let delay = took.mul_f64(1.2 * f64::from((round * 5) % ROUNDS) / f64::from(ROUNDS - 1));
        let mut plugin = start_plugin(dir.path(), &log);
        wait_for(&registration, &mut plugin, &log).await;
        let mut dra = dra_v1::dra_plugin_client::DraPluginClient::new(connect(&dra_socket).await);
        let started = Instant::now();
        let call = tokio::spawn(async move { dra.node_prepare_resources(request()).await });
        tokio::time::sleep(delay).await;
        kill(&mut plugin);
        let killed_at = started.elapsed();
        let finished = call.await.unwrap().is_ok();

        // Started again: recovered before it serves.
        let mut plugin = start_plugin(dir.path(), &log);
        wait_for(&registration, &mut plugin, &log).await;
        let owned = pair_state(&sysfs, &host, &pair, owner);
        *outcomes
            .entry(match (finished, owned) {
                (true, _) => "prepare answered before the kill",
                (false, true) => "killed: recovered as prepared",
                (false, false) => "killed: recovered as given back",
            })
            .or_default() += 1;

        // The kubelet retries the prepare; then the pod ends and it unprepares.
        let mut dra = dra_v1::dra_plugin_client::DraPluginClient::new(connect(&dra_socket).await);
        let answer = dra
            .node_prepare_resources(request())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.claims["uid-pair"].error, "", "round {round}");
        assert!(pair_state(&sysfs, &host, &pair, owner));
        spec_with_its_nodes_present(&dir.path().join("cdi"), "uid-pair");
        let spec_path = plugboard_dra::spec_path(&dir.path().join("cdi"), "uid-pair");
        let answer = dra
            .node_unprepare_resources(unprepare())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.claims["uid-pair"].error, "", "round {round}");
        assert!(!pair_state(&sysfs, &host, &pair, owner));
        assert!(!spec_path.exists());
        kill(&mut plugin);
        println!(
            "round {round}: killed {} ms after the call ({}), the pair {} after recovery",
            killed_at.as_millis(),
            if finished { "answered" } else { "unanswered" },
            if owned { "prepared" } else { "given back" },
        );
    }
    println!("outcomes over {ROUNDS} rounds: {outcomes:?}");
    // The slices the plugin published went through the stand-in's schema check.
    assert!(api.refused().is_empty(), "refused: {:?}", api.refused());
}
