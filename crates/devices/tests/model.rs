//! Property test: random sequences of new / attach / detach / remove / save-load, with random
//! hypervisor failures, checked step by step against a simple model.
//!
//! The model knows only counts and how many block indexes and root ports each device needs.
//! After every step the manager must agree with it, and:
//! - the hypervisor holds exactly the devices whose attach count is > 0 (generic devices
//!   never reach it);
//! - the block indexes and root ports in use are exactly those of the plugged devices, each
//!   used once (no leak, no double use), and their number is what the model expects;
//! - counts are what the model says (so they never wrap or go below zero).

#![expect(
    clippy::unwrap_used,
    reason = "a test: a failed unwrap is a failed test"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use plugboard_devices::test_util::{
    HypervisorOp, InMemoryHypervisor, block_spec, generic_spec, image_spec, vfio_spec,
    vhost_user_spec,
};
use plugboard_devices::{
    Acquired, BlockDriver, DeviceError, DeviceId, DeviceKind, DeviceManager, DeviceSpec, FsCache,
    MacAddress, ManagerConfig, NewDevice, PlugMode, Released, Removed, SavedState, VhostUserDevice,
};
use proptest::prelude::*;

const ROOT_PORTS: u32 = 3;

/// The devices the test plays with: every kind, some needing no port, one needing two.
fn specs() -> Vec<DeviceSpec> {
    vec![
        block_spec(0, BlockDriver::VirtioBlk),
        block_spec(1, BlockDriver::VirtioScsi),
        image_spec("/img/a.raw", BlockDriver::Nvdimm),
        image_spec("/img/b.raw", BlockDriver::VirtioBlk),
        vfio_spec(4, &[true, true]),
        vfio_spec(5, &[false]),
        vhost_user_spec(
            "/run/blk.sock",
            VhostUserDevice::Blk {
                driver: BlockDriver::VirtioBlk,
            },
        ),
        vhost_user_spec(
            "/run/net.sock",
            VhostUserDevice::Net {
                mac: MacAddress::from([2, 0, 0, 0, 0, 1]),
            },
        ),
        generic_spec("/dev/fuse", 10, 229),
        DeviceSpec {
            mode: PlugMode::Cold,
            ..vhost_user_spec(
                "/run/fs.sock",
                VhostUserDevice::Fs {
                    tag: "shared".into(),
                    cache: FsCache::Auto,
                },
            )
        },
    ]
}

/// (block indexes, root ports) a spec takes while plugged, given a port pool.
fn needs(spec: &DeviceSpec) -> (usize, usize) {
    match &spec.kind {
        DeviceKind::Block(b) => (1, usize::from(b.driver.is_pci())),
        // Every function takes a port, conventional PCI too (issue 17, item 2).
        DeviceKind::Vfio(v) => (0, v.functions.len()),
        DeviceKind::VhostUser(v) => (
            usize::from(v.device.takes_block_index()),
            usize::from(v.device.is_pci()),
        ),
        DeviceKind::Generic(_) => (0, 0),
    }
}

#[derive(Debug, Clone)]
enum Op {
    New(usize),
    Attach(usize),
    Detach(usize),
    Remove(usize),
    SaveLoad,
    Fail(HypervisorOp),
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..n).prop_map(Op::New),
        4 => (0..n).prop_map(Op::Attach),
        3 => (0..n).prop_map(Op::Detach),
        2 => (0..n).prop_map(Op::Remove),
        1 => Just(Op::SaveLoad),
        1 => prop_oneof![
            Just(HypervisorOp::HotplugAdd),
            Just(HypervisorOp::HotplugRemove),
            Just(HypervisorOp::Coldplug),
        ]
        .prop_map(Op::Fail),
    ]
}

/// The call that plugs `spec`.
fn plug_op(spec: &DeviceSpec) -> HypervisorOp {
    match spec.mode {
        PlugMode::Hot => HypervisorOp::HotplugAdd,
        PlugMode::Cold => HypervisorOp::Coldplug,
    }
}

#[derive(Debug, Clone, Copy)]
struct ModelDevice {
    id: DeviceId,
    references: u32,
    attachments: u32,
}

#[derive(Debug, Default)]
struct Model {
    devices: BTreeMap<usize, ModelDevice>,
    armed: Option<HypervisorOp>,
}

impl Model {
    fn used(&self, specs: &[DeviceSpec]) -> (usize, usize) {
        self.devices
            .iter()
            .filter(|(_, d)| d.attachments > 0)
            .map(|(&i, _)| needs(&specs[i]))
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    }
}

type Manager = DeviceManager<Arc<InMemoryHypervisor>>;

/// An id no device has.
const NO_DEVICE: DeviceId = DeviceId::from_raw(u64::MAX);

fn step(m: &mut Manager, model: &mut Model, specs: &[DeviceSpec], op: &Op) {
    let id_of = |model: &Model, i: usize| model.devices.get(&i).map_or(NO_DEVICE, |d| d.id);
    match *op {
        Op::New(i) => {
            let got = m.new_device(specs[i].clone()).unwrap();
            match model.devices.get_mut(&i) {
                Some(d) => {
                    assert_eq!(got, NewDevice::Existing(d.id));
                    d.references += 1;
                }
                None => {
                    let NewDevice::Created(id) = got else {
                        panic!("expected a new device, got {got:?}")
                    };
                    model.devices.insert(
                        i,
                        ModelDevice {
                            id,
                            references: 1,
                            attachments: 0,
                        },
                    );
                }
            }
        }
        Op::Attach(i) => {
            let (_, ports_used) = model.used(specs);
            let got = m.attach(id_of(model, i));
            let Some(d) = model.devices.get_mut(&i) else {
                assert!(matches!(got, Err(DeviceError::NotFound { .. })), "{got:?}");
                return;
            };
            let (_, ports) = needs(&specs[i]);
            let generic = matches!(specs[i].kind, DeviceKind::Generic(_));
            if d.attachments > 0 {
                assert_eq!(got.unwrap(), Acquired::Again);
                d.attachments += 1;
            } else if generic {
                assert_eq!(got.unwrap(), Acquired::First);
                d.attachments = 1;
            } else if ports_used + ports > ROOT_PORTS as usize {
                assert!(matches!(got, Err(DeviceError::RootPort { .. })), "{got:?}");
            } else if model.armed == Some(plug_op(&specs[i])) {
                assert!(matches!(got, Err(DeviceError::Plug { .. })), "{got:?}");
                model.armed = None;
            } else {
                assert_eq!(got.unwrap(), Acquired::First);
                d.attachments = 1;
            }
        }
        Op::Detach(i) => {
            let got = m.detach(id_of(model, i));
            let Some(d) = model.devices.get_mut(&i) else {
                assert!(matches!(got, Err(DeviceError::NotFound { .. })), "{got:?}");
                return;
            };
            let generic = matches!(specs[i].kind, DeviceKind::Generic(_));
            match d.attachments {
                0 => assert!(
                    matches!(got, Err(DeviceError::NotAttached { .. })),
                    "{got:?}"
                ),
                1 if !generic && model.armed == Some(HypervisorOp::HotplugRemove) => {
                    assert!(matches!(got, Err(DeviceError::Unplug { .. })), "{got:?}");
                    model.armed = None;
                }
                1 => {
                    assert_eq!(got.unwrap(), Released::Last);
                    d.attachments = 0;
                }
                _ => {
                    assert_eq!(got.unwrap(), Released::StillUsed);
                    d.attachments -= 1;
                }
            }
        }
        Op::Remove(i) => {
            let got = m.remove_device(id_of(model, i));
            let Some(d) = model.devices.get_mut(&i) else {
                assert!(matches!(got, Err(DeviceError::NotFound { .. })), "{got:?}");
                return;
            };
            if d.references > 1 {
                assert_eq!(got.unwrap(), Removed::StillReferenced);
                d.references -= 1;
            } else if d.attachments > 0 {
                assert!(
                    matches!(got, Err(DeviceError::StillAttached { .. })),
                    "{got:?}"
                );
            } else {
                assert_eq!(got.unwrap(), Removed::Gone);
                model.devices.remove(&i);
            }
        }
        Op::SaveLoad => {
            let json = m.save().to_json().unwrap();
            let saved = SavedState::from_json(&json).unwrap();
            let before = m.devices();
            *m = DeviceManager::load(Arc::clone(m.hypervisor()), saved).unwrap();
            assert_eq!(m.devices(), before);
        }
        Op::Fail(what) => {
            m.hypervisor().clear_failures();
            m.hypervisor().fail_next(what);
            model.armed = Some(what);
        }
    }
}

fn check(m: &Manager, model: &Model, specs: &[DeviceSpec]) {
    let devices = m.devices();
    assert_eq!(devices.len(), model.devices.len());
    for (i, d) in &model.devices {
        let got = m.device(d.id).unwrap();
        assert_eq!(got.spec, specs[*i]);
        assert_eq!(
            (got.references.get(), got.attachments.get()),
            (d.references, d.attachments),
            "counts of device {i}"
        );
    }
    // The hypervisor holds exactly the attached devices (generic ones never reach it).
    let plugged: BTreeSet<DeviceId> = m.hypervisor().plugged().into_keys().collect();
    let attached: BTreeSet<DeviceId> = model
        .devices
        .iter()
        .filter(|(i, d)| d.attachments > 0 && !matches!(specs[**i].kind, DeviceKind::Generic(_)))
        .map(|(_, d)| d.id)
        .collect();
    assert_eq!(plugged, attached);
    // Allocations are exactly the plugged devices', each used once.
    let mut indexes = Vec::new();
    let mut ports = Vec::new();
    for d in &devices {
        assert_eq!(d.plugged.is_some(), plugged.contains(&d.id));
        if let Some(request) = &d.plugged {
            assert_eq!(m.hypervisor().plugged().get(&d.id), Some(request));
            indexes.extend(request.block_index());
            ports.extend(request.ports());
        }
    }
    indexes.sort();
    ports.sort();
    let alloc = m.allocations();
    assert_eq!(
        alloc.block_indexes, indexes,
        "block indexes leak or are shared"
    );
    assert_eq!(alloc.root_ports, ports, "root ports leak or are shared");
    assert_eq!((indexes.len(), ports.len()), model.used(specs));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn manager_matches_the_model(ops in prop::collection::vec(op(specs().len()), 1..80)) {
        let specs = specs();
        let mut m = DeviceManager::new(
            Arc::new(InMemoryHypervisor::new()),
            ManagerConfig { root_ports: ROOT_PORTS, name_offset: 0 },
        );
        let mut model = Model::default();
        for op in &ops {
            step(&mut m, &mut model, &specs, op);
            check(&m, &model, &specs);
        }
    }
}
