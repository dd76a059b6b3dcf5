//! Prepare and unprepare: the kubelet's two calls, as hostdev prepare and release for the
//! claim's owner (`k8s/<namespace>/<claim uid>`) plus the claim's CDI spec.
//!
//! Prepare reads the claim's allocation from the API server, looks each allocated device
//! up among the host's offers, takes the devices the claim does not hold yet through
//! [`HostService::hostdev_prepare`] (managed, whole group: the same rules, refusals and
//! intent journal as the CLI and the daemon), writes the CDI spec and answers the CDI ids.
//! A claim that holds its devices already is answered again without a host change, so the
//! kubelet's retries are harmless. A claim with no devices of this driver gets no spec and
//! no CDI ids. Unprepare reads nothing from the API server (the claim
//! may be gone): the registry says what the owner holds, [`HostService::hostdev_release`]
//! gives it back, and the spec is removed.
//!
//! The host work is blocking (sysfs, SQLite), so it runs on tokio's blocking pool, one claim
//! at a time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use plugboard_service::{Caller, HostService, HostdevRequest};
use plugboard_sysfs::PciAddress;
use plugboard_vfio::{Interface, Mode};
use tokio::sync::{Mutex, Notify};

use crate::cdi::{self, ContainerEdits, DeviceNode, Spec};
use crate::claims::{Allocated, ClaimRef, ClaimSource, allocation};
use crate::error::ClaimError;
use crate::offer::Offer;

/// What the driver is and where it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverConfig {
    /// The DRA driver name (`vfio.plugboard.dev`).
    pub driver_name: String,
    /// This node's name, which is also the pool's.
    pub node_name: String,
    /// Where CDI specs go (`/var/run/cdi`).
    pub cdi_dir: PathBuf,
    /// Which VFIO interface the CDI specs expose.
    pub vfio_mode: Mode,
}

/// One allocated device, prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedDevice {
    /// The request of the claim it satisfies.
    pub request: String,
    /// Its pool.
    pub pool: String,
    /// Its name in the pool.
    pub device: String,
    /// Its CDI ids.
    pub cdi_ids: Vec<String>,
}

/// The claim side of the plugin.
#[derive(Debug)]
pub struct Driver<C> {
    host: Arc<HostService>,
    claims: C,
    config: DriverConfig,
    one_at_a_time: Mutex<()>,
    changed: Arc<Notify>,
}

impl<C: ClaimSource> Driver<C> {
    /// A driver over `host`, reading claims from `claims`.
    pub fn new(host: Arc<HostService>, claims: C, config: DriverConfig) -> Self {
        Self {
            host,
            claims,
            config,
            one_at_a_time: Mutex::new(()),
            changed: Arc::new(Notify::new()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DriverConfig {
        &self.config
    }

    /// The host service.
    pub fn host(&self) -> &Arc<HostService> {
        &self.host
    }

    /// Notified after every prepare and unprepare that changed the host (the publisher
    /// listens, to take the change to the API server without waiting for its next poll).
    pub fn changed(&self) -> Arc<Notify> {
        Arc::clone(&self.changed)
    }

    /// Prepares `claim`. See the module documentation.
    ///
    /// # Errors
    /// The claim reference is not a Kubernetes one ([`ClaimRef::check`]), the claim cannot
    /// be read or is not allocated, a device vanished or is held by another owner, or the
    /// host refused.
    pub async fn prepare(&self, claim: &ClaimRef) -> Result<Vec<PreparedDevice>, ClaimError> {
        claim.check()?;
        let object = self.claims.claim(&claim.namespace, &claim.name).await?;
        let allocated = allocation(&object, claim, &self.config.driver_name)?;
        if allocated.is_empty() {
            // Nothing of this driver's: no CDI spec (an empty one would be a file the
            // runtime reads for nothing), no CDI ids.
            tracing::info!(
                claim = %format!("{}/{}", claim.namespace, claim.name),
                "claim has no devices of this driver; nothing to prepare"
            );
            return Ok(Vec::new());
        }
        let _turn = self.one_at_a_time.lock().await;
        let host = Arc::clone(&self.host);
        let config = self.config.clone();
        let claim = claim.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            prepare_on_host(&host, &config, &claim, &allocated)
        })
        .await
        .map_err(ClaimError::Lost)??;
        self.changed.notify_one();
        Ok(prepared)
    }

    /// Unprepares `claim`: gives back what its owner holds and removes its spec. A claim
    /// that holds nothing is already unprepared.
    ///
    /// # Errors
    /// The claim reference is not a Kubernetes one ([`ClaimRef::check`]), the registry
    /// failed, or a device was not given back.
    pub async fn unprepare(&self, claim: &ClaimRef) -> Result<(), ClaimError> {
        claim.check()?;
        let _turn = self.one_at_a_time.lock().await;
        let host = Arc::clone(&self.host);
        let config = self.config.clone();
        let claim = claim.clone();
        let changed =
            tokio::task::spawn_blocking(move || unprepare_on_host(&host, &config, &claim))
                .await
                .map_err(ClaimError::Lost)??;
        if changed {
            self.changed.notify_one();
        }
        Ok(())
    }
}

/// The blocking half of prepare.
fn prepare_on_host(
    host: &HostService,
    config: &DriverConfig,
    claim: &ClaimRef,
    allocated: &[Allocated],
) -> Result<Vec<PreparedDevice>, ClaimError> {
    let owner = claim.owner();
    let host_error = |op| {
        let owner = owner.clone();
        move |source| ClaimError::Host { op, owner, source }
    };
    for a in allocated {
        if a.pool != config.node_name {
            return Err(ClaimError::OtherPool {
                device: a.device.clone(),
                pool: a.pool.clone(),
                node: config.node_name.clone(),
            });
        }
    }
    // Only the devices named: a prepare must not read a node of thousands.
    let mut found: Vec<Offer> = Vec::new();
    for a in allocated {
        let offer = crate::host::find_offer(host, &a.device)
            .map_err(host_error("list"))?
            .ok_or_else(|| ClaimError::UnknownDevice {
                device: a.device.clone(),
            })?;
        found.push(offer);
    }
    let wanted: Vec<(&Allocated, &Offer)> = allocated.iter().zip(&found).collect();
    // What the claim holds already, and what someone else holds.
    let mut to_take: Vec<String> = Vec::new();
    for (a, offer) in &wanted {
        for member in &offer.members {
            match member.owner.as_deref() {
                Some(o) if o == owner => {}
                Some(other) => {
                    return Err(ClaimError::Taken {
                        device: a.device.clone(),
                        address: member.address.to_string(),
                        owner: other.to_owned(),
                    });
                }
                None => {
                    let address = member.address.to_string();
                    if !to_take.contains(&address) {
                        to_take.push(address);
                    }
                }
            }
        }
    }
    if !to_take.is_empty() {
        let request = HostdevRequest {
            owner: owner.clone(),
            devices: to_take,
            managed: true,
            whole_group: true,
            shareable: false,
        };
        host.hostdev_prepare(Caller::ROOT, &request, &())
            .map_err(host_error("prepare"))?;
    }
    let mut spec = Spec {
        cdi_version: cdi::CDI_VERSION.to_owned(),
        kind: cdi::CDI_KIND.to_owned(),
        annotations: BTreeMap::from([
            (
                "plugboard.dev/claim".to_owned(),
                format!("{}/{}", claim.namespace, claim.name),
            ),
            ("plugboard.dev/claim-uid".to_owned(), claim.uid.clone()),
        ]),
        devices: Vec::new(),
    };
    let mut prepared = Vec::new();
    for (a, offer) in &wanted {
        let name = format!("{}-{}", claim.uid, a.device);
        spec.devices
            .push(cdi_device(host, config.vfio_mode, &name, offer)?);
        prepared.push(PreparedDevice {
            request: a.request.clone(),
            pool: a.pool.clone(),
            device: a.device.clone(),
            cdi_ids: vec![Spec::id(&name)],
        });
    }
    let path = cdi::spec_path(&config.cdi_dir, &claim.uid);
    cdi::write(&path, &spec).map_err(|source| ClaimError::Cdi {
        path: path.clone(),
        source,
    })?;
    tracing::info!(
        claim = %format!("{}/{}", claim.namespace, claim.name),
        owner = %owner,
        spec = %path.display(),
        "claim prepared; unprepare it (or `plugboard hostdev release --owner {owner}`) to undo"
    );
    Ok(prepared)
}

/// The CDI device of one offer: the VFIO nodes of its members for the chosen interface,
/// and its PCI addresses in an env var and an annotation.
fn cdi_device(
    host: &HostService,
    mode: Mode,
    name: &str,
    offer: &Offer,
) -> Result<cdi::Device, ClaimError> {
    let sysfs = host.sysfs();
    let mut nodes: Vec<String> = Vec::new();
    let mut add = |relative: String| {
        if !nodes.contains(&relative) {
            nodes.push(relative);
        }
    };
    let nodes_error = |address: PciAddress| {
        move |source: Box<dyn std::error::Error + Send + Sync>| ClaimError::Nodes {
            address: address.to_string(),
            source,
        }
    };
    for address in offer.addresses() {
        let interface = plugboard_vfio::select(sysfs, address, mode)
            .map_err(|e| nodes_error(address)(Box::new(e)))?;
        match interface {
            Interface::Legacy => {
                add("vfio/vfio".to_owned());
                add(format!("vfio/{}", offer.group));
            }
            Interface::Iommufd => {
                let info = sysfs
                    .pci_device_info(address)
                    .map_err(|e| nodes_error(address)(Box::new(e)))?;
                let cdev = info.vfio_dev.ok_or_else(|| {
                    nodes_error(address)("the device has no VFIO cdev (vfio-dev/vfioN)".into())
                })?;
                add("iommu".to_owned());
                add(format!("vfio/devices/{cdev}"));
            }
        }
    }
    let addresses: Vec<String> = offer.addresses().map(|a| a.to_string()).collect();
    let device_nodes = nodes
        .into_iter()
        .map(|relative| {
            let path = format!("/dev/{relative}");
            let host_path = sysfs.dev_path(&relative).to_string_lossy().into_owned();
            DeviceNode {
                host_path: (host_path != path).then_some(host_path),
                path,
                kind: Some("c".to_owned()),
            }
        })
        .collect();
    Ok(cdi::Device {
        name: name.to_owned(),
        annotations: BTreeMap::from([(
            "plugboard.dev/pci-addresses".to_owned(),
            addresses.join(","),
        )]),
        container_edits: ContainerEdits {
            env: cdi::device_env(&offer.name, &addresses, offer.group),
            device_nodes,
        },
    })
}

/// The blocking half of unprepare; true when it gave something back.
fn unprepare_on_host(
    host: &HostService,
    config: &DriverConfig,
    claim: &ClaimRef,
) -> Result<bool, ClaimError> {
    let owner = claim.owner();
    let host_error = |op| {
        let owner = owner.clone();
        move |source| ClaimError::Host { op, owner, source }
    };
    let listing = host.hostdevs().map_err(host_error("list"))?;
    let held: Vec<String> = listing
        .pci
        .iter()
        .filter(|r| r.owner.as_ref().is_some_and(|o| o.to_string() == owner))
        .map(|r| r.address.clone())
        .collect();
    if !held.is_empty() {
        let request = HostdevRequest {
            owner: owner.clone(),
            devices: held.clone(),
            managed: true,
            whole_group: false,
            shareable: false,
        };
        let answer = host
            .hostdev_release(Caller::ROOT, &request, &())
            .map_err(host_error("release"))?;
        let failures: Vec<String> = answer.failures().into_iter().map(str::to_owned).collect();
        if !failures.is_empty() {
            return Err(ClaimError::NotReleased {
                owner,
                devices: failures,
            });
        }
        tracing::info!(owner = %owner, devices = ?held, "claim unprepared: devices given back");
    }
    let path = cdi::spec_path(&config.cdi_dir, &claim.uid);
    cdi::remove(&path).map_err(|source| ClaimError::Cdi { path, source })?;
    Ok(!held.is_empty())
}
