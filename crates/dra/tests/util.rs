//! The fixture: a fake kernel, a host service over it, the plugin serving on Unix sockets
//! in a temp dir, the in-memory claims, and the kubelet's side (generated clients).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use plugboard_dra::proto::{dra_v1, dra_v1beta1, pluginregistration as reg};
pub use plugboard_dra::testing::connect;
use plugboard_dra::testing::{MemoryClaims, allocated_claim};
use plugboard_dra::{Driver, DriverConfig, RegistrationStatus, Sockets};
use plugboard_service::{HostConfig, HostService};
use plugboard_sysfs::fake::{FakeKernel, PciSpec};
use plugboard_vfio::Mode;
use tokio::sync::{oneshot, watch};
use tonic::transport::Channel;

pub const DRIVER: &str = "vfio.plugboard.dev";
pub const NODE: &str = "node-a";

/// The test host: an e1000e pair sharing IOMMU group 5 behind a bridge, an e1000e alone in
/// group 7, a GPU on vfio-pci in group 8, a NIC in group 9 (for "someone else"), a virtio
/// NIC without a group, and the host bridge.
pub fn kernel(legacy_only: bool) -> FakeKernel {
    let e1000e = |a: &str| {
        PciSpec::new(a, 0x8086, 0x10d3)
            .class(0x02_0000)
            .driver("e1000e")
    };
    let mut builder = FakeKernel::builder()
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
                .driver("vfio-pci"),
        )
        .pci(e1000e("0000:05:00.0").iommu_group(9))
        .pci(
            PciSpec::new("0000:04:00.0", 0x1af4, 0x1041)
                .class(0x02_0000)
                .unbound(),
        );
    if legacy_only {
        builder = builder.legacy_vfio_only();
    }
    builder.build().unwrap()
}

/// The plugin serving over `kernel`, and what a test needs around it.
pub struct Plugin {
    pub host: Arc<HostService>,
    pub claims: Arc<MemoryClaims>,
    pub sockets: Sockets,
    pub status: watch::Receiver<RegistrationStatus>,
    pub config: DriverConfig,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), plugboard_dra::ServeError>>>,
}

/// The host service over `kernel`, keeping its state in `dir/state`.
pub fn host(kernel: &FakeKernel, dir: &Path) -> Arc<HostService> {
    let config = HostConfig {
        state_dir: dir.join("state"),
        sysfs_root: kernel.sysfs_root(),
        dev_root: kernel.dev_root(),
        pci_ids: None,
    };
    Arc::new(HostService::with_sysfs(config, kernel.sysfs()))
}

impl Plugin {
    /// Starts the plugin over `kernel` with its sockets and state under `dir`.
    pub async fn start(kernel: &FakeKernel, dir: &Path, mode: Mode) -> Self {
        Self::start_with(host(kernel, dir), Arc::new(MemoryClaims::new()), dir, mode).await
    }

    /// Starts the plugin over `host` and `claims`.
    pub async fn start_with(
        host: Arc<HostService>,
        claims: Arc<MemoryClaims>,
        dir: &Path,
        mode: Mode,
    ) -> Self {
        let config = DriverConfig {
            driver_name: DRIVER.to_owned(),
            node_name: NODE.to_owned(),
            cdi_dir: dir.join("cdi"),
            vfio_mode: mode,
        };
        let sockets = Sockets::new(
            &dir.join("plugins_registry"),
            &dir.join("plugins").join(DRIVER),
            DRIVER,
        );
        let driver = Arc::new(Driver::new(
            Arc::clone(&host),
            Arc::clone(&claims),
            config.clone(),
        ));
        let (status_tx, status) = watch::channel(None);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let sockets = sockets.clone();
            async move {
                plugboard_dra::serve(driver, &sockets, status_tx, async move {
                    let _ = stopped.await;
                })
                .await
            }
        });
        // The kubelet's plugin watcher sees the registration socket appear.
        for _ in 0..500 {
            if sockets.registration.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            sockets.registration.exists(),
            "the registration socket never appeared"
        );
        Self {
            host,
            claims,
            sockets,
            status,
            config,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops serving (as at SIGTERM) and waits for the servers.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Puts a claim allocated `devices` (request, device) of this node's pool.
    pub fn allocate(&self, namespace: &str, name: &str, uid: &str, devices: &[(&str, &str)]) {
        self.claims
            .put(allocated_claim(namespace, name, uid, DRIVER, NODE, devices));
    }

    /// The kubelet's registration client.
    pub async fn registration(&self) -> reg::registration_client::RegistrationClient<Channel> {
        reg::registration_client::RegistrationClient::new(connect(&self.sockets.registration).await)
    }

    /// The kubelet's DRA v1 client.
    pub async fn dra(&self) -> dra_v1::dra_plugin_client::DraPluginClient<Channel> {
        dra_v1::dra_plugin_client::DraPluginClient::new(connect(&self.sockets.dra).await)
    }

    /// The kubelet's DRA v1beta1 client.
    pub async fn dra_v1beta1(&self) -> dra_v1beta1::dra_plugin_client::DraPluginClient<Channel> {
        dra_v1beta1::dra_plugin_client::DraPluginClient::new(connect(&self.sockets.dra).await)
    }

    /// The CDI spec file of claim `uid`.
    pub fn spec_path(&self, uid: &str) -> PathBuf {
        plugboard_dra::spec_path(&self.config.cdi_dir, uid)
    }
}

/// A claim message.
pub fn claim(namespace: &str, name: &str, uid: &str) -> dra_v1::Claim {
    dra_v1::Claim {
        namespace: namespace.to_owned(),
        uid: uid.to_owned(),
        name: name.to_owned(),
    }
}

/// The PCI device's driver now.
pub fn driver_of(kernel: &FakeKernel, address: &str) -> Option<String> {
    kernel
        .sysfs()
        .pci_device(address.parse().unwrap())
        .unwrap()
        .driver()
        .unwrap()
}

/// Who the hostdev registry says owns `address`.
pub fn owner_of(host: &HostService, address: &str) -> Option<String> {
    host.hostdevs()
        .unwrap()
        .pci
        .into_iter()
        .find(|r| r.address == address)
        .and_then(|r| r.owner)
        .map(|o| o.to_string())
}

/// Waits (bounded: 10 s) until `f` holds.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

/// The claim `vms/nic` (uid `uid-1`) allocated the e1000e at 0000:02:00.0, as the scheduler
/// leaves it.
pub fn nic_claim() -> k8s_openapi::api::resource::v1::ResourceClaim {
    plugboard_dra::testing::allocated_claim(
        "vms",
        "nic",
        "uid-1",
        DRIVER,
        NODE,
        &[("nic", "pci-0000-02-00-0")],
    )
}
