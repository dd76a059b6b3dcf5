//! The audit trail: one row per change of a device's list or owner, numbered in commit
//! order (writes are serialized by `BEGIN IMMEDIATE`). It answers "who had this device,
//! and when" after the fact, and lets tests check that a group was *never* split.

use std::fmt;

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{RegistryError, Tx};
use crate::owner::Owner;

/// What happened to a device. JSON and registry words (stable): `active`, `inactive`,
/// `host`, `gone`; [`Display`](fmt::Display) prints a human phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Put on the active list for an owner.
    Active,
    /// Put on the inactive list.
    Inactive,
    /// Given back to the host (dropped from the registry).
    Host,
    /// Dropped because it vanished from sysfs.
    Gone,
}

impl EventKind {
    /// The word stored in the registry and used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
            Self::Host => "host",
            Self::Gone => "gone",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Active => "taken by an owner",
            Self::Inactive => "put on the inactive list",
            Self::Host => "given back to the host",
            Self::Gone => "gone from the host",
        })
    }
}

/// One audit row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Commit order.
    pub seq: i64,
    /// The device.
    pub address: String,
    /// Its IOMMU group.
    pub iommu_group: Option<u32>,
    /// What happened.
    pub kind: EventKind,
    /// The new owner (for `Active`).
    pub owner: Option<Owner>,
}

impl Tx<'_> {
    pub(super) fn record_event(
        &self,
        address: &str,
        iommu_group: Option<u32>,
        kind: EventKind,
        owner: Option<&Owner>,
    ) -> Result<(), RegistryError> {
        self.tx
            .prepare_cached(
                "INSERT INTO events (address, iommu_group, event, owner_driver, owner_domain) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    address,
                    iommu_group,
                    kind.as_str(),
                    owner.map(Owner::driver),
                    owner.map(Owner::domain),
                ])
            })
            .map_err(self.err("recording an audit event"))?;
        Ok(())
    }

    /// Every audit event with `seq > after`, in commit order.
    pub fn events_after(&self, after: i64) -> Result<Vec<AuditEvent>, RegistryError> {
        type Raw = (
            i64,
            String,
            Option<u32>,
            String,
            Option<String>,
            Option<String>,
        );
        let raws: Vec<Raw> = self
            .tx
            .prepare_cached(
                "SELECT seq, address, iommu_group, event, owner_driver, owner_domain \
                 FROM events WHERE seq > ?1 ORDER BY seq",
            )
            .and_then(|mut st| {
                st.query_map([after], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })?
                .collect()
            })
            .map_err(self.err("reading audit events"))?;
        raws.into_iter()
            .map(|(seq, address, iommu_group, kind, drv, dom)| {
                let kind = match kind.as_str() {
                    "active" => EventKind::Active,
                    "inactive" => EventKind::Inactive,
                    "host" => EventKind::Host,
                    "gone" => EventKind::Gone,
                    other => return Err(self.invalid("events.event", other)),
                };
                Ok(AuditEvent {
                    seq,
                    address,
                    iommu_group,
                    kind,
                    owner: super::pci_rows::owner_from(drv, dom)
                        .map_err(|i| self.invalid_row(i))?,
                })
            })
            .collect()
    }
}
