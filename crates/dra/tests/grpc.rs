//! The kubelet's contract, driven exactly as the kubelet drives it: the generated clients
//! of the upstream protos over the plugin's real Unix sockets.

use plugboard_dra::proto::{dra_v1, dra_v1beta1, pluginregistration as reg};
use plugboard_dra::testing::allocated_claim;
use plugboard_dra::{CdiSpec, SUPPORTED_VERSIONS};
use plugboard_service::{Caller, HostdevRequest};
use plugboard_vfio::Mode;

use crate::util::{DRIVER, NODE, Plugin, claim, driver_of, kernel, owner_of};

type DraClient = dra_v1::dra_plugin_client::DraPluginClient<tonic::transport::Channel>;

fn prepare_request(claims: &[dra_v1::Claim]) -> dra_v1::NodePrepareResourcesRequest {
    dra_v1::NodePrepareResourcesRequest {
        claims: claims.to_vec(),
    }
}

/// `NodePrepareResources` of `claims`, as the kubelet calls it; the call itself succeeds
/// (per-claim errors are in the answer).
async fn prepare(
    dra: &mut DraClient,
    claims: &[dra_v1::Claim],
) -> dra_v1::NodePrepareResourcesResponse {
    dra.node_prepare_resources(prepare_request(claims))
        .await
        .unwrap()
        .into_inner()
}

/// `NodeUnprepareResources` of `claims`, as the kubelet calls it.
async fn unprepare(
    dra: &mut DraClient,
    claims: &[dra_v1::Claim],
) -> dra_v1::NodeUnprepareResourcesResponse {
    dra.node_unprepare_resources(dra_v1::NodeUnprepareResourcesRequest {
        claims: claims.to_vec(),
    })
    .await
    .unwrap()
    .into_inner()
}

fn read_spec(plugin: &Plugin, uid: &str) -> CdiSpec {
    serde_json::from_slice(&std::fs::read(plugin.spec_path(uid)).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_handshake_names_the_dra_socket_and_both_versions() {
    let kernel = kernel(true);
    let dir = tempfile::tempdir().unwrap();
    let mut plugin = Plugin::start(&kernel, dir.path(), Mode::Auto).await;
    assert_eq!(
        plugin.sockets.registration,
        dir.path()
            .join("plugins_registry/vfio.plugboard.dev-reg.sock")
    );

    let mut registration = plugin.registration().await;
    let info = registration
        .get_info(reg::InfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.r#type, "DRAPlugin");
    assert_eq!(info.name, DRIVER);
    assert_eq!(
        info.endpoint,
        dir.path()
            .join("plugins/vfio.plugboard.dev/dra.sock")
            .to_string_lossy()
    );
    assert_eq!(
        info.supported_versions,
        SUPPORTED_VERSIONS.map(str::to_owned)
    );
    assert_eq!(*plugin.status.borrow(), None);

    registration
        .notify_registration_status(reg::RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await
        .unwrap();
    plugin.status.wait_for(Option::is_some).await.unwrap();
    assert_eq!(*plugin.status.borrow(), Some(Ok(())));

    // A refusal is kept with the kubelet's words.
    registration
        .notify_registration_status(reg::RegistrationStatus {
            plugin_registered: false,
            error: "version not supported".into(),
        })
        .await
        .unwrap();
    plugin
        .status
        .wait_for(|s| matches!(s, Some(Err(_))))
        .await
        .unwrap();
    assert_eq!(
        *plugin.status.borrow(),
        Some(Err("version not supported".to_owned()))
    );

    // The kubelet dials the endpoint it was given.
    let mut dra = dra_v1::dra_plugin_client::DraPluginClient::new(
        crate::util::connect(std::path::Path::new(&info.endpoint)).await,
    );
    let answer = unprepare(&mut dra, &[]).await;
    assert!(answer.claims.is_empty());
    plugin.stop().await;
    assert!(
        !dir.path()
            .join("plugins_registry/vfio.plugboard.dev-reg.sock")
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_of_one_claim_takes_the_device_and_answers_its_cdi_id() {
    let kernel = kernel(true);
    let dir = tempfile::tempdir().unwrap();
    let plugin = Plugin::start(&kernel, dir.path(), Mode::Auto).await;
    plugin.allocate("vms", "nic", "uid-1", &[("nic", "pci-0000-02-00-0")]);

    let answer = prepare(&mut plugin.dra().await, &[claim("vms", "nic", "uid-1")]).await;
    let one = &answer.claims["uid-1"];
    assert_eq!(one.error, "");
    assert_eq!(
        one.devices,
        vec![dra_v1::Device {
            request_names: vec!["nic".into()],
            pool_name: NODE.into(),
            device_name: "pci-0000-02-00-0".into(),
            cdi_device_ids: vec!["plugboard.dev/vfio=uid-1-pci-0000-02-00-0".into()],
        }]
    );
    // The same core as the CLI: on vfio-pci, owned by the claim in the registry.
    assert_eq!(
        driver_of(&kernel, "0000:02:00.0").as_deref(),
        Some("vfio-pci")
    );
    assert_eq!(
        owner_of(&plugin.host, "0000:02:00.0").as_deref(),
        Some("k8s/vms/uid-1")
    );
    // The CDI spec: the legacy nodes (this kernel has no /dev/iommu), the address in env.
    let spec = read_spec(&plugin, "uid-1");
    assert_eq!(spec.kind, "plugboard.dev/vfio");
    assert_eq!(spec.devices.len(), 1);
    let device = &spec.devices[0];
    assert_eq!(device.name, "uid-1-pci-0000-02-00-0");
    let paths: Vec<&str> = device
        .container_edits
        .device_nodes
        .iter()
        .map(|n| n.path.as_str())
        .collect();
    assert_eq!(paths, ["/dev/vfio/vfio", "/dev/vfio/7"]);
    for node in &device.container_edits.device_nodes {
        let host_path = node.host_path.as_deref().unwrap_or(&node.path);
        assert!(std::path::Path::new(host_path).exists(), "{host_path}");
    }
    assert_eq!(
        device.container_edits.env,
        [
            "PLUGBOARD_PCI_0000_02_00_0_ADDRESSES=0000:02:00.0",
            "PLUGBOARD_PCI_0000_02_00_0_IOMMU_GROUP=7"
        ]
    );
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_of_several_claims_answers_each_and_gives_a_group_whole() {
    let kernel = kernel(true);
    let dir = tempfile::tempdir().unwrap();
    let plugin = Plugin::start(&kernel, dir.path(), Mode::Legacy).await;
    plugin.allocate("vms", "nic", "uid-1", &[("nic", "pci-0000-02-00-0")]);
    plugin.allocate("vms", "pair", "uid-2", &[("pair", "iommu-group-5")]);
    plugin.allocate(
        "gpu",
        "both",
        "uid-3",
        &[("gpu", "pci-0000-3b-00-0"), ("nic", "pci-0000-05-00-0")],
    );

    let answer = prepare(
        &mut plugin.dra().await,
        &[
            claim("vms", "nic", "uid-1"),
            claim("vms", "pair", "uid-2"),
            claim("gpu", "both", "uid-3"),
        ],
    )
    .await;
    assert_eq!(answer.claims.len(), 3);
    for (uid, c) in &answer.claims {
        assert_eq!(c.error, "", "{uid}");
    }
    assert_eq!(answer.claims["uid-3"].devices.len(), 2);
    for a in ["0000:01:01.0", "0000:01:02.0"] {
        assert_eq!(driver_of(&kernel, a).as_deref(), Some("vfio-pci"), "{a}");
        assert_eq!(owner_of(&plugin.host, a).as_deref(), Some("k8s/vms/uid-2"));
    }
    let pair = read_spec(&plugin, "uid-2");
    let edits = &pair.devices[0].container_edits;
    let paths: Vec<&str> = edits.device_nodes.iter().map(|n| n.path.as_str()).collect();
    assert_eq!(paths, ["/dev/vfio/vfio", "/dev/vfio/5"]);
    assert_eq!(
        edits.env,
        [
            "PLUGBOARD_GROUP_5_ADDRESSES=0000:01:01.0,0000:01:02.0",
            "PLUGBOARD_GROUP_5_IOMMU_GROUP=5"
        ]
    );
    // The GPU was on vfio-pci already: adopted, owned by its claim all the same.
    assert_eq!(
        owner_of(&plugin.host, "0000:3b:00.0").as_deref(),
        Some("k8s/gpu/uid-3")
    );
    assert_eq!(read_spec(&plugin, "uid-3").devices.len(), 2);
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_prepare_answers_the_same_without_touching_the_host() {
    let kernel = kernel(true);
    let dir = tempfile::tempdir().unwrap();
    let plugin = Plugin::start(&kernel, dir.path(), Mode::Auto).await;
    plugin.allocate("vms", "pair", "uid-2", &[("pair", "iommu-group-5")]);
    let mut dra = plugin.dra().await;
    let request = prepare_request(&[claim("vms", "pair", "uid-2")]);

    let first = dra
        .node_prepare_resources(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.claims["uid-2"].error, "");
    let writes = kernel.writes().len();
    let spec = std::fs::read(plugin.spec_path("uid-2")).unwrap();

    let second = dra
        .node_prepare_resources(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second, first);
    assert_eq!(kernel.writes().len(), writes, "a retry wrote to sysfs");
    assert_eq!(std::fs::read(plugin.spec_path("uid-2")).unwrap(), spec);
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprepare_gives_the_devices_back_and_removes_the_spec() {
    let kernel = kernel(true);
    let dir = tempfile::tempdir().unwrap();
    let plugin = Plugin::start(&kernel, dir.path(), Mode::Auto).await;
    plugin.allocate("vms", "pair", "uid-2", &[("pair", "iommu-group-5")]);
    let mut dra = plugin.dra().await;
    let claims = [claim("vms", "pair", "uid-2")];
    let prepared = prepare(&mut dra, &claims).await;
    assert_eq!(prepared.claims["uid-2"].error, "");
    assert!(plugin.spec_path("uid-2").exists());

    let answer = unprepare(&mut dra, &claims).await;
    assert_eq!(answer.claims["uid-2"].error, "");
    for a in ["0000:01:01.0", "0000:01:02.0"] {
        assert_eq!(driver_of(&kernel, a).as_deref(), Some("e1000e"), "{a}");
        assert_eq!(owner_of(&plugin.host, a), None);
    }
    assert!(!plugin.spec_path("uid-2").exists());

    // Unprepare is retried too: the second one has nothing left to do.
    let again = unprepare(&mut dra, &claims).await;
    assert_eq!(again.claims["uid-2"].error, "");
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprepare_of_an_unknown_claim_succeeds_and_changes_nothing() {
    let kernel = kernel(true);
    let dir = tempfile::tempdir().unwrap();
    let plugin = Plugin::start(&kernel, dir.path(), Mode::Auto).await;
    let answer = unprepare(&mut plugin.dra().await, &[claim("vms", "ghost", "uid-9")]).await;
    assert_eq!(answer.claims.len(), 1);
    assert_eq!(answer.claims["uid-9"].error, "");
    assert!(kernel.writes().is_empty());
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocation_naming_a_vanished_device_fails_that_claim_alone() {
    let kernel = kernel(true);
    let dir = tempfile::tempdir().unwrap();
    let plugin = Plugin::start(&kernel, dir.path(), Mode::Auto).await;
    plugin.allocate("vms", "gone", "uid-4", &[("nic", "pci-0000-09-00-0")]);
    plugin.allocate("vms", "nic", "uid-1", &[("nic", "pci-0000-02-00-0")]);
    let answer = prepare(
        &mut plugin.dra().await,
        &[
            claim("vms", "gone", "uid-4"),
            claim("vms", "nic", "uid-1"),
            claim("vms", "unknown", "uid-5"),
        ],
    )
    .await;
    let gone = &answer.claims["uid-4"];
    assert!(gone.devices.is_empty());
    assert!(
        gone.error
            .contains("device pci-0000-09-00-0 is not offered by this node"),
        "{}",
        gone.error
    );
    assert!(!plugin.spec_path("uid-4").exists());
    // The claim the API server does not have fails too, with its name.
    assert!(
        answer.claims["uid-5"]
            .error
            .contains("ResourceClaim vms/unknown"),
        "{}",
        answer.claims["uid-5"].error
    );
    // The good claim in the same call is prepared.
    assert_eq!(answer.claims["uid-1"].error, "");
    assert_eq!(
        driver_of(&kernel, "0000:02:00.0").as_deref(),
        Some("vfio-pci")
    );
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_owned_by_a_vm_outside_kubernetes_is_never_given_to_a_claim() {
    let kernel = kernel(true);
    let dir = tempfile::tempdir().unwrap();
    let plugin = Plugin::start(&kernel, dir.path(), Mode::Auto).await;
    // A VM took it through the CLI (the same core).
    plugin
        .host
        .hostdev_prepare(
            Caller::ROOT,
            &HostdevRequest {
                owner: "qemu/vm1".into(),
                devices: vec!["0000:05:00.0".into()],
                managed: true,
                whole_group: false,
                shareable: false,
            },
            &(),
        )
        .unwrap();
    plugin.allocate("vms", "nic", "uid-6", &[("nic", "pci-0000-05-00-0")]);
    let answer = prepare(&mut plugin.dra().await, &[claim("vms", "nic", "uid-6")]).await;
    let error = &answer.claims["uid-6"].error;
    assert_eq!(
        error,
        "device pci-0000-05-00-0 (0000:05:00.0) is in use by qemu/vm1, not by this claim"
    );
    assert_eq!(
        owner_of(&plugin.host, "0000:05:00.0").as_deref(),
        Some("qemu/vm1")
    );
    assert!(!plugin.spec_path("uid-6").exists());
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1beta1_serves_the_same_calls() {
    let kernel = kernel(true);
    let dir = tempfile::tempdir().unwrap();
    let plugin = Plugin::start(&kernel, dir.path(), Mode::Auto).await;
    plugin.allocate("vms", "nic", "uid-1", &[("nic", "pci-0000-02-00-0")]);
    let mut dra = plugin.dra_v1beta1().await;
    let c = dra_v1beta1::Claim {
        namespace: "vms".into(),
        uid: "uid-1".into(),
        name: "nic".into(),
    };
    let answer = dra
        .node_prepare_resources(dra_v1beta1::NodePrepareResourcesRequest {
            claims: vec![c.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.claims["uid-1"].devices[0].cdi_device_ids,
        ["plugboard.dev/vfio=uid-1-pci-0000-02-00-0"]
    );
    let answer = dra
        .node_unprepare_resources(dra_v1beta1::NodeUnprepareResourcesRequest { claims: vec![c] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.claims["uid-1"].error, "");
    assert_eq!(
        driver_of(&kernel, "0000:02:00.0").as_deref(),
        Some("e1000e")
    );
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iommufd_mode_gives_dev_iommu_and_the_device_cdev() {
    let kernel = kernel(false);
    let dir = tempfile::tempdir().unwrap();
    let plugin = Plugin::start(&kernel, dir.path(), Mode::Iommufd).await;
    plugin.allocate("vms", "nic", "uid-1", &[("nic", "pci-0000-02-00-0")]);
    let answer = prepare(&mut plugin.dra().await, &[claim("vms", "nic", "uid-1")]).await;
    assert_eq!(answer.claims["uid-1"].error, "");
    let spec = read_spec(&plugin, "uid-1");
    let nodes = &spec.devices[0].container_edits.device_nodes;
    let paths: Vec<&str> = nodes.iter().map(|n| n.path.as_str()).collect();
    assert_eq!(paths[0], "/dev/iommu");
    assert!(paths[1].starts_with("/dev/vfio/devices/vfio"), "{paths:?}");
    assert_eq!(paths.len(), 2);
    for node in nodes {
        let host_path = node.host_path.as_deref().unwrap_or(&node.path);
        assert!(std::path::Path::new(host_path).exists(), "{host_path}");
    }
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_claims_survive_a_restart_of_the_plugin() {
    let kernel = kernel(true);
    let dir = tempfile::tempdir().unwrap();
    let plugin = Plugin::start(&kernel, dir.path(), Mode::Auto).await;
    plugin.allocate("vms", "nic", "uid-1", &[("nic", "pci-0000-02-00-0")]);
    let request = prepare_request(&[claim("vms", "nic", "uid-1")]);
    let first = plugin
        .dra()
        .await
        .node_prepare_resources(request.clone())
        .await
        .unwrap()
        .into_inner();
    let claims = std::sync::Arc::clone(&plugin.claims);
    plugin.stop().await;

    // A new process: a new host service over the same registry, recovered before serving.
    let host = crate::util::host(&kernel, dir.path());
    host.hostdev_recover(Caller::ROOT).unwrap();
    assert_eq!(
        owner_of(&host, "0000:02:00.0").as_deref(),
        Some("k8s/vms/uid-1")
    );
    let plugin = Plugin::start_with(host, claims, dir.path(), Mode::Auto).await;
    let writes = kernel.writes().len();
    let again = plugin
        .dra()
        .await
        .node_prepare_resources(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    assert_eq!(kernel.writes().len(), writes);
    let answer = unprepare(&mut plugin.dra().await, &[claim("vms", "nic", "uid-1")]).await;
    assert_eq!(answer.claims["uid-1"].error, "");
    assert_eq!(
        driver_of(&kernel, "0000:02:00.0").as_deref(),
        Some("e1000e")
    );
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_reference_that_is_not_a_kubernetes_one_is_refused_and_touches_nothing() {
    let kernel = kernel(true);
    let dir = tempfile::tempdir().unwrap();
    let plugin = Plugin::start(&kernel, dir.path(), Mode::Auto).await;
    // A uid that walks out of the CDI directory: with `cdi/plugboard.dev-vfio-a/` present,
    // `plugboard.dev-vfio-a/../../victim.json` is a file beside the CDI directory.
    std::fs::create_dir_all(plugin.config.cdi_dir.join("plugboard.dev-vfio-a")).unwrap();
    let victim = dir.path().join("victim.json");
    std::fs::write(&victim, "{}").unwrap();
    let walking = claim("vms", "nic", "a/../../victim");
    // A namespace with a slash would make the owner `k8s/vm/s/uid` of another claim.
    let slashed = claim("vm/s", "nic", "uid-1");
    plugin.allocate("vm/s", "nic", "uid-1", &[("nic", "pci-0000-02-00-0")]);
    let good = claim("vms", "pair", "uid-2");
    plugin.allocate("vms", "pair", "uid-2", &[("pair", "iommu-group-5")]);
    let mut dra = plugin.dra().await;

    let answer = unprepare(&mut dra, std::slice::from_ref(&walking)).await;
    let error = &answer.claims["a/../../victim"].error;
    assert!(error.contains("uid"), "{error}");
    assert!(
        victim.exists(),
        "unprepare removed a file outside the CDI directory"
    );

    let answer = prepare(&mut dra, &[slashed, good]).await;
    let error = &answer.claims["uid-1"].error;
    assert!(error.contains("namespace 'vm/s'"), "{error}");
    assert_eq!(
        driver_of(&kernel, "0000:02:00.0").as_deref(),
        Some("e1000e")
    );
    // The good claim beside it is prepared.
    assert_eq!(answer.claims["uid-2"].error, "");
    assert_eq!(
        owner_of(&plugin.host, "0000:01:01.0").as_deref(),
        Some("k8s/vms/uid-2")
    );
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_with_no_devices_of_this_driver_gets_no_cdi_spec_and_no_ids() {
    let kernel = kernel(true);
    let dir = tempfile::tempdir().unwrap();
    let plugin = Plugin::start(&kernel, dir.path(), Mode::Auto).await;
    // Allocated, but by another driver only (a claim of several drivers' devices is sent
    // to each driver's plugin).
    plugin.claims.put(allocated_claim(
        "vms",
        "gpu",
        "uid-6",
        "gpu.example.com",
        NODE,
        &[("gpu", "gpu-0")],
    ));
    let answer = prepare(&mut plugin.dra().await, &[claim("vms", "gpu", "uid-6")]).await;
    let answered = &answer.claims["uid-6"];
    assert_eq!(answered.error, "");
    assert!(answered.devices.is_empty());
    assert!(!plugin.spec_path("uid-6").exists());
    assert!(
        !plugin.config.cdi_dir.exists()
            || std::fs::read_dir(&plugin.config.cdi_dir).unwrap().count() == 0,
        "no CDI spec file at all"
    );
    assert!(kernel.writes().is_empty());
    let answer = unprepare(&mut plugin.dra().await, &[claim("vms", "gpu", "uid-6")]).await;
    assert_eq!(answer.claims["uid-6"].error, "");
    plugin.stop().await;
}
