//! The PCI lists: one row per device the registry knows, on the active list (an owner
//! uses it) or the inactive list (detached from its host driver, unused).
//!
//! Every change writes an audit event in the same transaction (see `events.rs`).

use std::fmt;

use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use super::{EventKind, Invalid, RegistryError, Tx};
use crate::owner::Owner;

/// Which list a device is on. JSON and registry words (stable): `active`, `inactive`;
/// [`Display`](fmt::Display) prints the same words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum List {
    /// In use by an owner.
    Active,
    /// Detached from the host driver (on vfio-pci or a variant) and unused.
    Inactive,
}

impl List {
    /// The word stored in the registry and used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
        }
    }
}

impl fmt::Display for List {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One PCI device in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciRow {
    /// `DDDD:BB:SS.F`.
    pub address: String,
    /// Active or inactive.
    pub list: List,
    /// Who uses it (active only).
    pub owner: Option<Owner>,
    /// Recorded when the device first went inactive: true when release gives it back to
    /// its host driver, false when it stays detached (it was detached by hand or adopted).
    pub managed: bool,
    /// The host driver it had before it was detached (`None`: none, or unknown).
    pub original_driver: Option<String>,
    /// Its IOMMU group when it was recorded.
    pub iommu_group: Option<u32>,
}

const COLUMNS: &str =
    "address, list, owner_driver, owner_domain, managed, original_driver, iommu_group";

impl Tx<'_> {
    /// The row of `address`, if any.
    pub fn pci_row(&self, address: &str) -> Result<Option<PciRow>, RegistryError> {
        let sql = format!("SELECT {COLUMNS} FROM pci_devices WHERE address = ?1");
        let raw = self
            .tx
            .prepare_cached(&sql)
            .and_then(|mut st| st.query_row([address], RawRow::read).optional())
            .map_err(self.err("reading a PCI device"))?;
        raw.map(|r| r.into_row().map_err(|i| self.invalid_row(i)))
            .transpose()
    }

    /// Every PCI row, ordered by address.
    pub fn pci_rows(&self) -> Result<Vec<PciRow>, RegistryError> {
        let sql = format!("SELECT {COLUMNS} FROM pci_devices ORDER BY address");
        self.collect_rows(&sql, [])
    }

    /// The rows recorded in IOMMU group `group`.
    pub fn pci_rows_in_group(&self, group: u32) -> Result<Vec<PciRow>, RegistryError> {
        let sql = format!("SELECT {COLUMNS} FROM pci_devices WHERE iommu_group = ?1");
        self.collect_rows(&sql, [group])
    }

    fn collect_rows(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<PciRow>, RegistryError> {
        let raws = self
            .tx
            .prepare_cached(sql)
            .and_then(|mut st| {
                st.query_map(params, RawRow::read)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(self.err("reading PCI devices"))?;
        raws.into_iter()
            .map(|r| r.into_row().map_err(|i| self.invalid_row(i)))
            .collect()
    }

    /// Inserts or replaces the row of `row.address` and records the change.
    pub fn put_pci_row(&self, row: &PciRow) -> Result<(), RegistryError> {
        let sql = format!(
            "INSERT OR REPLACE INTO pci_devices ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
        );
        let raw = RawRow::from_row(row);
        self.tx
            .prepare_cached(&sql)
            .and_then(|mut st| {
                st.execute(params![
                    raw.address,
                    raw.list,
                    raw.owner_driver,
                    raw.owner_domain,
                    raw.managed,
                    raw.original_driver,
                    raw.iommu_group,
                ])
            })
            .map_err(self.err("writing a PCI device"))?;
        let kind = match row.list {
            List::Active => EventKind::Active,
            List::Inactive => EventKind::Inactive,
        };
        self.record_event(&row.address, row.iommu_group, kind, row.owner.as_ref())
    }

    /// Removes the row of `address` (back to the host, or gone from sysfs) and records why.
    pub fn delete_pci_row(
        &self,
        address: &str,
        iommu_group: Option<u32>,
        why: EventKind,
    ) -> Result<(), RegistryError> {
        let n = self
            .tx
            .prepare_cached("DELETE FROM pci_devices WHERE address = ?1")
            .and_then(|mut st| st.execute([address]))
            .map_err(self.err("deleting a PCI device"))?;
        if n > 0 {
            self.record_event(address, iommu_group, why, None)?;
        }
        Ok(())
    }
}

/// A row as SQLite stores it (the columns of `pci_devices`, in order), before validation.
///
/// Reading goes `RawRow::read` then [`RawRow::into_row`]; writing goes
/// [`RawRow::from_row`], so what is written is what is read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRow {
    /// `address`.
    pub address: String,
    /// `list`: `active` or `inactive`.
    pub list: String,
    /// `owner_driver`.
    pub owner_driver: Option<String>,
    /// `owner_domain`.
    pub owner_domain: Option<String>,
    /// `managed`.
    pub managed: bool,
    /// `original_driver`.
    pub original_driver: Option<String>,
    /// `iommu_group`.
    pub iommu_group: Option<u32>,
}

impl RawRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            address: r.get(0)?,
            list: r.get(1)?,
            owner_driver: r.get(2)?,
            owner_domain: r.get(3)?,
            managed: r.get(4)?,
            original_driver: r.get(5)?,
            iommu_group: r.get(6)?,
        })
    }

    /// The columns that store `row`.
    pub fn from_row(row: &PciRow) -> Self {
        Self {
            address: row.address.clone(),
            list: row.list.as_str().to_owned(),
            owner_driver: row.owner.as_ref().map(|o| o.driver().to_owned()),
            owner_domain: row.owner.as_ref().map(|o| o.domain().to_owned()),
            managed: row.managed,
            original_driver: row.original_driver.clone(),
            iommu_group: row.iommu_group,
        }
    }

    /// The row these columns hold, or the first column that holds a value this build
    /// cannot read.
    pub fn into_row(self) -> Result<PciRow, Invalid> {
        let list = match self.list.as_str() {
            "active" => List::Active,
            "inactive" => List::Inactive,
            _ => return Err(Invalid::new("pci_devices.list", self.list)),
        };
        let owner = owner_from(self.owner_driver, self.owner_domain)?;
        Ok(PciRow {
            address: self.address,
            list,
            owner,
            managed: self.managed,
            original_driver: self.original_driver,
            iommu_group: self.iommu_group,
        })
    }
}

/// Rebuilds an owner from its two columns.
pub(super) fn owner_from(
    driver: Option<String>,
    domain: Option<String>,
) -> Result<Option<Owner>, Invalid> {
    match (driver, domain) {
        (Some(driver), Some(domain)) => Owner::new(&driver, &domain)
            .map(Some)
            .map_err(|_| Invalid::new("owner", format!("{driver}/{domain}"))),
        (None, None) => Ok(None),
        (d, m) => Err(Invalid::new("owner", format!("{d:?}/{m:?}"))),
    }
}
