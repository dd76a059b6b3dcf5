//! Save and load: the whole manager as a versioned serde struct.
//!
//! Kata 1.x saved devices but not every field (host paths were lost), skipped unknown kinds
//! with a warning, and runtime-rs saves nothing. [`SavedState`] holds every device with every
//! field, both counts, the plug request (so a detach after load frees the same index and
//! ports) and the allocators; loading checks that it all adds up and refuses anything it does
//! not understand.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::config::ManagerConfig;
use crate::hypervisor::{Hypervisor, HypervisorKind, Plug};
use crate::id::DeviceId;
use crate::index::{BlockIndex, IndexError};
use crate::kind::{DeviceIdentity, DeviceKind};
use crate::manager::DeviceManager;
use crate::plan::Allocations;
use crate::ports::RootPort;
use crate::state::{Books, DeviceState, Entry};

/// The version of [`SavedState`] this crate writes and reads.
pub const SAVED_STATE_VERSION: u32 = 1;

/// A manager's whole state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedState {
    /// [`SAVED_STATE_VERSION`] when written.
    pub version: u32,
    /// The hypervisor the state belongs to.
    pub hypervisor: HypervisorKind,
    /// The allocator settings.
    pub config: ManagerConfig,
    /// The next device id to hand out.
    pub next_id: u64,
    /// Every device, by id.
    pub devices: Vec<DeviceState>,
    /// Block indexes in use (must match the devices' plug requests).
    pub block_indexes: Vec<BlockIndex>,
    /// Root ports in use (must match the devices' plug requests).
    pub root_ports: Vec<RootPort>,
}

/// Why saved state was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// A version this crate does not know.
    #[error("saved device state has version {found}; this build reads version {supported}")]
    Version {
        /// The version found.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// State saved for another hypervisor.
    #[error("saved device state belongs to {found}, not {expected}")]
    Hypervisor {
        /// The kind in the state.
        found: HypervisorKind,
        /// The kind of the hypervisor given to load.
        expected: HypervisorKind,
    },
    /// Not valid JSON for this version (an unknown device kind, a missing field, …).
    #[error("saved device state does not decode")]
    Decode(#[source] serde_json::Error),
    /// Encoding failed.
    #[error("device state does not encode")]
    Encode(#[source] serde_json::Error),
    /// Two devices with one id or one identity, or an id not below `next_id`.
    #[error("saved device state has a duplicate or out-of-range device {id}")]
    Duplicate {
        /// The device.
        id: DeviceId,
    },
    /// Counts and plug requests that contradict each other.
    #[error("saved device {id} is inconsistent: {what}")]
    Inconsistent {
        /// The device.
        id: DeviceId,
        /// What does not add up.
        what: &'static str,
    },
    /// Two devices holding one block index or root port, or one outside the pool.
    #[error("saved device {id} holds an allocation that is taken or out of range")]
    Allocation {
        /// The device.
        id: DeviceId,
        /// The allocator's answer.
        #[source]
        source: IndexError,
    },
    /// The saved allocator lists differ from what the devices hold.
    #[error("saved allocator state does not match the devices' plugs")]
    Allocators,
}

#[derive(Deserialize)]
struct Header {
    version: u32,
}

impl SavedState {
    /// The state as JSON.
    ///
    /// # Errors
    /// [`PersistError::Encode`].
    pub fn to_json(&self) -> Result<String, PersistError> {
        serde_json::to_string_pretty(self).map_err(PersistError::Encode)
    }

    /// State from JSON. The version is checked before anything else, so a future format
    /// gives [`PersistError::Version`] rather than a decode error.
    ///
    /// # Errors
    /// [`PersistError::Version`], [`PersistError::Decode`].
    pub fn from_json(json: &str) -> Result<Self, PersistError> {
        let header: Header = serde_json::from_str(json).map_err(PersistError::Decode)?;
        check_version(header.version)?;
        serde_json::from_str(json).map_err(PersistError::Decode)
    }
}

fn check_version(found: u32) -> Result<(), PersistError> {
    if found != SAVED_STATE_VERSION {
        return Err(PersistError::Version {
            found,
            supported: SAVED_STATE_VERSION,
        });
    }
    Ok(())
}

impl<H: Hypervisor> DeviceManager<H> {
    /// The whole state. Waits until no plug or unplug is in flight, so the state never holds
    /// a half-done plug.
    pub fn save(&self) -> SavedState {
        let mut books = self.lock();
        while books.any_busy() {
            books = self.wait(books);
        }
        let mut devices: Vec<DeviceState> =
            books.devices.values().map(|e| e.state.clone()).collect();
        devices.sort_by_key(|d| d.id);
        let Allocations {
            block_indexes,
            root_ports,
        } = books.alloc.in_use();
        SavedState {
            version: SAVED_STATE_VERSION,
            hypervisor: self.hypervisor.kind(),
            config: books.alloc.config,
            next_id: books.next_id,
            devices,
            block_indexes,
            root_ports,
        }
    }

    /// A manager that carries on from `saved`, behind `hypervisor` (which must be the same VM
    /// and already hold the plugged devices).
    ///
    /// # Errors
    /// Any [`PersistError`] when the state is from another version or hypervisor, or does
    /// not add up.
    pub fn load(hypervisor: H, saved: SavedState) -> Result<Self, PersistError> {
        check_version(saved.version)?;
        let expected = hypervisor.kind();
        if saved.hypervisor != expected {
            return Err(PersistError::Hypervisor {
                found: saved.hypervisor,
                expected,
            });
        }
        let mut books = Books::new(saved.config);
        books.next_id = saved.next_id;
        books.devices = HashMap::with_capacity(saved.devices.len());
        for state in saved.devices {
            let id = state.id;
            check_device(&state)?;
            if id.as_raw() >= saved.next_id
                || books.devices.contains_key(&id)
                || books.by_identity.contains_key(&state.spec.identity)
            {
                return Err(PersistError::Duplicate { id });
            }
            let leftover = state.needs_cleanup.as_ref().map(|l| &l.request);
            for request in state.plugged.iter().chain(leftover) {
                books
                    .alloc
                    .take_exact(request)
                    .map_err(|source| PersistError::Allocation { id, source })?;
            }
            books.by_identity.insert(state.spec.identity.clone(), id);
            books.devices.insert(id, Entry { state, busy: false });
        }
        let indexes: BTreeSet<u32> = saved.block_indexes.iter().map(|i| i.get()).collect();
        let ports: BTreeSet<RootPort> = saved.root_ports.iter().copied().collect();
        if indexes.len() != saved.block_indexes.len()
            || ports.len() != saved.root_ports.len()
            || !indexes.iter().copied().eq(books.alloc.block.used())
            || !ports.iter().copied().eq(books.alloc.ports.used())
        {
            return Err(PersistError::Allocators);
        }
        Ok(Self::from_books(hypervisor, books))
    }
}

fn check_device(state: &DeviceState) -> Result<(), PersistError> {
    let id = state.id;
    let bad = |what| Err(PersistError::Inconsistent { id, what });
    if state.references.is_zero() {
        return bad("no references");
    }
    let attached = !state.attachments.is_zero();
    let generic = matches!(state.spec.kind, DeviceKind::Generic(_));
    if state.resident && (attached || state.plugged.is_none()) {
        return bad("a device staying in the VM that is attached or not plugged");
    }
    match (&state.plugged, &state.guest) {
        (Some(request), Some(_)) => {
            if generic || (!attached && !state.resident) {
                return bad("a plug without an attachment");
            }
            if request.device != id || request.mode != state.spec.mode {
                return bad("a plug request for another device or mode");
            }
        }
        (None, None) => {
            if attached && !generic {
                return bad("an attachment without a plug");
            }
        }
        _ => return bad("a plug request without a guest view, or the reverse"),
    }
    if let Some(leftover) = &state.needs_cleanup {
        if attached || state.plugged.is_some() {
            return bad("a device needing cleanup of a failed plug that is attached");
        }
        if leftover.request.device != id {
            return bad("a failed plug's request for another device");
        }
    }
    if let Some(request) = &state.plugged {
        let matches_spec = match (&state.spec.kind, &request.plug) {
            (DeviceKind::Block(spec), Plug::Block(plug)) => *spec == plug.spec,
            (DeviceKind::VhostUser(spec), Plug::VhostUser(plug)) => *spec == plug.spec,
            (DeviceKind::Vfio(spec), Plug::Vfio(plug)) => {
                spec.backend == plug.backend
                    && spec.functions.len() == plug.functions.len()
                    && spec
                        .functions
                        .iter()
                        .zip(&plug.functions)
                        .all(|(s, p)| *s == p.function)
            }
            _ => false,
        };
        if !matches_spec {
            return bad("a plug request that is not for the device's spec");
        }
    }
    if let DeviceIdentity::Path(p) = &state.spec.identity
        && p.as_os_str().is_empty()
    {
        return bad("an empty host path");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::kind::{BlockDriver, MacAddress, VhostUserDevice};
    use crate::test_util::{
        InMemoryHypervisor, block_spec, generic_spec, image_spec, vfio_spec, vhost_user_spec,
    };

    type Manager = DeviceManager<Arc<InMemoryHypervisor>>;

    /// A manager with every kind, some attached twice, some referenced twice, some not.
    fn busy_manager() -> Manager {
        let m = DeviceManager::new(
            Arc::new(InMemoryHypervisor::new()),
            ManagerConfig {
                root_ports: 4,
                name_offset: 1,
            },
        );
        let specs = [
            block_spec(0, BlockDriver::VirtioBlk),
            block_spec(1, BlockDriver::VirtioScsi),
            image_spec("/img/a.qcow2", BlockDriver::Nvdimm),
            vfio_spec(7, &[true, false]),
            vhost_user_spec(
                "/run/net.sock",
                VhostUserDevice::Net {
                    mac: MacAddress::from([2, 0, 0, 0, 0, 9]),
                },
            ),
            generic_spec("/dev/fuse", 10, 229),
            block_spec(2, BlockDriver::VirtioBlk),
        ];
        for (n, spec) in specs.into_iter().enumerate() {
            let id = m.new_device(spec.clone()).unwrap().id();
            if n % 2 == 0 {
                m.new_device(spec).unwrap();
            }
            if n < 6 {
                m.attach(id).unwrap();
            }
            if n % 3 == 0 && n < 6 {
                m.attach(id).unwrap();
            }
        }
        // A hole in the block indexes, so "lowest free" must survive the round trip.
        let hole = m
            .find(&block_spec(1, BlockDriver::VirtioScsi).identity)
            .unwrap();
        m.detach(hole).unwrap();
        m
    }

    /// The seed of the `saved_state` fuzz target is this manager's state: a golden file,
    /// rewritten by running this test with `PLUGBOARD_WRITE_FUZZ_SEEDS=1`.
    #[test]
    fn the_saved_state_fuzz_seed_is_a_busy_managers_state() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus/saved_state/busy.json");
        let json = busy_manager().save().to_json().unwrap();
        if std::env::var_os("PLUGBOARD_WRITE_FUZZ_SEEDS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &json).unwrap();
        }
        let seed = std::fs::read_to_string(&path).unwrap();
        assert_eq!(seed, json, "{} is stale", path.display());
        SavedState::from_json(&seed).unwrap();
    }

    #[test]
    fn round_trip_is_equal_and_carries_on() {
        let m = busy_manager();
        let saved = m.save();
        let json = saved.to_json().unwrap();
        let back = SavedState::from_json(&json).unwrap();
        assert_eq!(back, saved);
        let loaded = DeviceManager::load(Arc::clone(m.hypervisor()), back).unwrap();
        assert_eq!(loaded.devices(), m.devices());
        assert_eq!(loaded.allocations(), m.allocations());
        assert_eq!(loaded.save(), saved);
        // Carries on: the hole left before saving (index 1) is the lowest free one after
        // loading, and a detach after load frees the index the device held.
        let scsi = loaded
            .find(&block_spec(1, BlockDriver::VirtioScsi).identity)
            .unwrap();
        loaded.attach(scsi).unwrap();
        let index = loaded.device(scsi).unwrap().plugged.unwrap().block_index();
        assert_eq!(index.map(BlockIndex::get), Some(1));
        let disk = loaded
            .find(&block_spec(0, BlockDriver::VirtioBlk).identity)
            .unwrap();
        let index = loaded.device(disk).unwrap().plugged.unwrap().block_index();
        assert_eq!(index.map(BlockIndex::get), Some(0));
        loaded.detach(disk).unwrap();
        loaded.detach(disk).unwrap();
        assert!(!loaded.allocations().block_indexes.contains(&index.unwrap()));
        assert!(!loaded.hypervisor().is_plugged(disk));
        // Ids continue after the saved ones.
        let fresh = loaded
            .new_device(block_spec(40, BlockDriver::VirtioBlk))
            .unwrap()
            .id();
        assert!(saved.devices.iter().all(|d| d.id < fresh));
    }

    #[test]
    fn unknown_version_is_refused_before_decoding() {
        let mut saved = busy_manager().save();
        saved.version = 2;
        let json = saved.to_json().unwrap();
        let err = SavedState::from_json(&json).unwrap_err();
        assert!(
            matches!(
                err,
                PersistError::Version {
                    found: 2,
                    supported: 1
                }
            ),
            "{err}"
        );
        let hv = Arc::new(InMemoryHypervisor::new());
        assert!(matches!(
            DeviceManager::load(hv, saved),
            Err(PersistError::Version { .. })
        ));
        // A future format with other fields still says "version", not a decode error.
        let err = SavedState::from_json(r#"{"version": 9, "shiny": []}"#).unwrap_err();
        assert!(matches!(err, PersistError::Version { found: 9, .. }));
    }

    #[test]
    fn unknown_kind_is_a_clear_error_not_a_skip() {
        let json = busy_manager().save().to_json().unwrap();
        let json = json.replacen("\"kind\": \"generic\"", "\"kind\": \"vhost-vdpa\"", 1);
        let err = SavedState::from_json(&json).unwrap_err();
        assert!(matches!(err, PersistError::Decode(_)));
        let chain = std::error::Error::source(&err).unwrap().to_string();
        assert!(chain.contains("vhost-vdpa"), "{chain}");
    }

    #[test]
    fn other_hypervisor_is_refused() {
        let saved = busy_manager().save();
        let hv = InMemoryHypervisor::with_kind(HypervisorKind::CloudHypervisor);
        let err = DeviceManager::load(hv, saved).unwrap_err();
        assert!(matches!(
            err,
            PersistError::Hypervisor {
                found: HypervisorKind::Qemu,
                expected: HypervisorKind::CloudHypervisor
            }
        ));
    }

    #[test]
    fn state_that_does_not_add_up_is_refused() {
        let saved = busy_manager().save();
        let hv = || Arc::new(InMemoryHypervisor::new());

        let mut s = saved.clone();
        s.block_indexes.pop();
        assert!(matches!(
            DeviceManager::load(hv(), s),
            Err(PersistError::Allocators)
        ));

        let mut s = saved.clone();
        s.root_ports.push(RootPort::new(3));
        assert!(matches!(
            DeviceManager::load(hv(), s),
            Err(PersistError::Allocators)
        ));

        let mut s = saved.clone();
        let dup = s.devices[0].clone();
        s.devices.push(dup);
        assert!(matches!(
            DeviceManager::load(hv(), s),
            Err(PersistError::Duplicate { .. })
        ));

        let mut s = saved.clone();
        s.next_id = 0;
        assert!(matches!(
            DeviceManager::load(hv(), s),
            Err(PersistError::Duplicate { .. })
        ));

        let mut s = saved.clone();
        s.devices[0].attachments = crate::RefCount::new();
        assert!(matches!(
            DeviceManager::load(hv(), s),
            Err(PersistError::Inconsistent { .. })
        ));

        let mut s = saved.clone();
        s.devices[0].references = crate::RefCount::new();
        assert!(matches!(
            DeviceManager::load(hv(), s),
            Err(PersistError::Inconsistent { .. })
        ));

        // Two devices claiming one block index.
        let mut s = saved.clone();
        let Some(Plug::Block(first)) = s.devices[0].plugged.clone().map(|r| r.plug) else {
            panic!("device 0 is a plugged block device")
        };
        let Some(Plug::Block(third)) = s.devices[2].plugged.as_mut().map(|r| &mut r.plug) else {
            panic!("device 2 is a plugged block device")
        };
        third.index = first.index;
        let err = DeviceManager::load(hv(), s);
        assert!(
            matches!(
                err,
                Err(PersistError::Allocation { .. } | PersistError::Inconsistent { .. })
            ),
            "{err:?}"
        );

        let mut s = saved;
        s.devices[0].spec.mode = crate::PlugMode::Cold;
        assert!(matches!(
            DeviceManager::load(hv(), s),
            Err(PersistError::Inconsistent { .. })
        ));
    }

    /// A state as versions before issue 12 wrote it: device ids as JSON numbers (the device
    /// node, counts and SCSI address in the shape they still have).
    const OLDER_STATE: &str = r#"
        {
          "version": 1,
          "hypervisor": "qemu",
          "config": {
            "root_ports": 2,
            "name_offset": 0
          },
          "next_id": 3,
          "devices": [
            {
              "id": 0,
              "spec": {
                "identity": {
                  "node": {
                    "node_type": "block",
                    "major": 8,
                    "minor": 1
                  }
                },
                "mode": "hot",
                "kind": {
                  "kind": "block",
                  "path": "/dev/sdx1",
                  "driver": "virtio-scsi",
                  "format": "raw",
                  "read_only": false,
                  "share_rw": false,
                  "pmem": false
                }
              },
              "references": 1,
              "attachments": 1,
              "plugged": {
                "device": 0,
                "mode": "hot",
                "plug": {
                  "kind": "block",
                  "name_id": "drive-0000000000000000",
                  "spec": {
                    "path": "/dev/sdx1",
                    "driver": "virtio-scsi",
                    "format": "raw",
                    "read_only": false,
                    "share_rw": false,
                    "pmem": false
                  },
                  "index": 0,
                  "drive_name": null,
                  "scsi_address": {
                    "id": 0,
                    "lun": 0
                  },
                  "port": null
                }
              },
              "guest": {
                "pci_paths": [],
                "scsi_address": {
                  "id": 0,
                  "lun": 0
                },
                "drive_name": null
              }
            },
            {
              "id": 1,
              "spec": {
                "identity": {
                  "node": {
                    "node_type": "char",
                    "major": 10,
                    "minor": 229
                  }
                },
                "mode": "hot",
                "kind": {
                  "kind": "generic",
                  "path": "/dev/fuse"
                }
              },
              "references": 1,
              "attachments": 1,
              "plugged": null,
              "guest": null
            },
            {
              "id": 2,
              "spec": {
                "identity": {
                  "node": {
                    "node_type": "block",
                    "major": 8,
                    "minor": 2
                  }
                },
                "mode": "hot",
                "kind": {
                  "kind": "block",
                  "path": "/dev/sdx2",
                  "driver": "virtio-blk",
                  "format": "raw",
                  "read_only": false,
                  "share_rw": false,
                  "pmem": false
                }
              },
              "references": 1,
              "attachments": 1,
              "plugged": {
                "device": 2,
                "mode": "hot",
                "plug": {
                  "kind": "block",
                  "name_id": "drive-0000000000000002",
                  "spec": {
                    "path": "/dev/sdx2",
                    "driver": "virtio-blk",
                    "format": "raw",
                    "read_only": false,
                    "share_rw": false,
                    "pmem": false
                  },
                  "index": 1,
                  "drive_name": "vdb",
                  "scsi_address": null,
                  "port": 0
                }
              },
              "guest": {
                "pci_paths": [
                  "01/00"
                ],
                "scsi_address": null,
                "drive_name": "vdb"
              }
            }
          ],
          "block_indexes": [
            0,
            1
          ],
          "root_ports": [
            0
          ]
        }
    "#;

    #[test]
    fn a_state_saved_by_an_older_version_loads_and_is_written_with_hex_ids() {
        let saved = SavedState::from_json(OLDER_STATE).unwrap();
        let ids: Vec<u64> = saved.devices.iter().map(|d| d.id.as_raw()).collect();
        assert_eq!(ids, [0, 1, 2]);
        assert_eq!(
            saved.devices[1].spec.identity,
            DeviceIdentity::Node(crate::kind::DeviceNode::new(
                plugboard_sysfs::DevKind::Char,
                10,
                229
            ))
        );
        let scsi = saved.devices[0]
            .guest
            .as_ref()
            .unwrap()
            .scsi_address
            .unwrap();
        assert_eq!(scsi.to_string(), "0:0");
        let loaded = DeviceManager::load(InMemoryHypervisor::new(), saved.clone()).unwrap();
        assert_eq!(loaded.save(), saved);
        let json = loaded.save().to_json().unwrap();
        assert!(json.contains(r#""id": "0000000000000002""#), "{json}");
        assert!(json.contains(r#""device": "0000000000000002""#), "{json}");
        assert!(!json.contains(r#""id": 2"#), "{json}");
        // Apart from the ids, the text is what the older version wrote.
        let compact: serde_json::Value = serde_json::from_str(&json).unwrap();
        let mut old: serde_json::Value = serde_json::from_str(OLDER_STATE).unwrap();
        for (n, device) in old["devices"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .enumerate()
        {
            let hex = serde_json::Value::from(format!("{n:016x}"));
            device["id"] = hex.clone();
            if !device["plugged"].is_null() {
                device["plugged"]["device"] = hex;
            }
        }
        assert_eq!(compact, old);
    }
}
