//! The intent journal's table: insert before touching sysfs, advance the step as writes
//! complete, delete in the same transaction that records the outcome.

use rusqlite::{OptionalExtension, Row, params};

use super::{Invalid, RegistryError, Tx};
use crate::intent::{Intent, IntentOp, IntentStep};
use crate::process::ProcessStamp;

const COLUMNS: &str = "id, op, address, original_driver, owner_driver, owner_domain, managed, \
                       writes_sysfs, iommu_group, step, pid, pid_start";

impl Tx<'_> {
    /// Journals `intent` and returns its id. Fails (constraint) if the device already has
    /// a pending intent; callers check [`Tx::intent_for`] first to report who holds it.
    pub fn insert_intent(&self, intent: &Intent) -> Result<i64, RegistryError> {
        let raw = RawIntent::from_intent(intent);
        self.tx
            .prepare_cached(
                "INSERT INTO intents (op, address, original_driver, owner_driver, owner_domain, \
                 managed, writes_sysfs, iommu_group, step, pid, pid_start) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    raw.op,
                    raw.address,
                    raw.original_driver,
                    raw.owner_driver,
                    raw.owner_domain,
                    raw.managed,
                    raw.writes_sysfs,
                    raw.iommu_group,
                    raw.step,
                    raw.pid,
                    raw.pid_start,
                ])
            })
            .map_err(self.err("journaling an intent"))?;
        Ok(self.tx.last_insert_rowid())
    }

    /// Records how far intent `id` got.
    pub fn set_intent_step(&self, id: i64, step: IntentStep) -> Result<(), RegistryError> {
        self.tx
            .prepare_cached("UPDATE intents SET step = ?2 WHERE id = ?1")
            .and_then(|mut st| st.execute(params![id, step.as_str()]))
            .map_err(self.err("advancing an intent"))?;
        Ok(())
    }

    /// Hands intent `id` over to process `stamp` (recover taking over a dead process's work).
    pub fn restamp_intent(&self, id: i64, stamp: ProcessStamp) -> Result<(), RegistryError> {
        self.tx
            .prepare_cached("UPDATE intents SET pid = ?2, pid_start = ?3 WHERE id = ?1")
            .and_then(|mut st| st.execute(params![id, stamp.pid, stamp.start.cast_signed()]))
            .map_err(self.err("taking over an intent"))?;
        Ok(())
    }

    /// Removes intent `id` (its outcome is recorded, or it was undone).
    pub fn delete_intent(&self, id: i64) -> Result<(), RegistryError> {
        self.tx
            .prepare_cached("DELETE FROM intents WHERE id = ?1")
            .and_then(|mut st| st.execute([id]))
            .map_err(self.err("deleting an intent"))?;
        Ok(())
    }

    /// The pending intent on `address`, if any.
    pub fn intent_for(&self, address: &str) -> Result<Option<Intent>, RegistryError> {
        let sql = format!("SELECT {COLUMNS} FROM intents WHERE address = ?1");
        let raw = self
            .tx
            .prepare_cached(&sql)
            .and_then(|mut st| st.query_row([address], RawIntent::read).optional())
            .map_err(self.err("reading an intent"))?;
        raw.map(|r| r.into_intent().map_err(|i| self.invalid_row(i)))
            .transpose()
    }

    /// Every pending intent, oldest first.
    pub fn intents(&self) -> Result<Vec<Intent>, RegistryError> {
        let sql = format!("SELECT {COLUMNS} FROM intents ORDER BY id");
        self.collect_intents(&sql, [])
    }

    /// The pending intents on members of IOMMU group `group`.
    pub fn intents_in_group(&self, group: u32) -> Result<Vec<Intent>, RegistryError> {
        let sql = format!("SELECT {COLUMNS} FROM intents WHERE iommu_group = ?1");
        self.collect_intents(&sql, [group])
    }

    fn collect_intents(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Intent>, RegistryError> {
        let raws = self
            .tx
            .prepare_cached(sql)
            .and_then(|mut st| {
                st.query_map(params, RawIntent::read)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(self.err("reading intents"))?;
        raws.into_iter()
            .map(|r| r.into_intent().map_err(|i| self.invalid_row(i)))
            .collect()
    }
}

/// An intent as SQLite stores it (the columns of `intents`), before validation.
///
/// Reading goes `RawIntent::read` then [`RawIntent::into_intent`]; writing goes
/// [`RawIntent::from_intent`] (the `id` column is assigned by SQLite on insert).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawIntent {
    /// `id`.
    pub id: i64,
    /// `op`: `prepare`, `release`, `detach` or `reattach`.
    pub op: String,
    /// `address`.
    pub address: String,
    /// `original_driver`.
    pub original_driver: Option<String>,
    /// `owner_driver`.
    pub owner_driver: Option<String>,
    /// `owner_domain`.
    pub owner_domain: Option<String>,
    /// `managed`.
    pub managed: bool,
    /// `writes_sysfs`.
    pub writes_sysfs: bool,
    /// `iommu_group`.
    pub iommu_group: Option<u32>,
    /// `step`: `reserved` or `binding`.
    pub step: String,
    /// `pid`.
    pub pid: u32,
    /// `pid_start`: the start time's bits as SQLite's signed integer.
    pub pid_start: i64,
}

impl RawIntent {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            op: r.get(1)?,
            address: r.get(2)?,
            original_driver: r.get(3)?,
            owner_driver: r.get(4)?,
            owner_domain: r.get(5)?,
            managed: r.get(6)?,
            writes_sysfs: r.get(7)?,
            iommu_group: r.get(8)?,
            step: r.get(9)?,
            pid: r.get(10)?,
            pid_start: r.get(11)?,
        })
    }

    /// The columns that store `intent`.
    pub fn from_intent(intent: &Intent) -> Self {
        Self {
            id: intent.id,
            op: intent.op.as_str().to_owned(),
            address: intent.address.clone(),
            original_driver: intent.original_driver.clone(),
            owner_driver: intent.owner.as_ref().map(|o| o.driver().to_owned()),
            owner_domain: intent.owner.as_ref().map(|o| o.domain().to_owned()),
            managed: intent.managed,
            writes_sysfs: intent.writes_sysfs,
            iommu_group: intent.iommu_group,
            step: intent.step.as_str().to_owned(),
            pid: intent.process.pid,
            pid_start: intent.process.start.cast_signed(),
        }
    }

    /// The intent these columns hold, or the first column that holds a value this build
    /// cannot read.
    pub fn into_intent(self) -> Result<Intent, Invalid> {
        let op =
            IntentOp::from_name(&self.op).ok_or_else(|| Invalid::new("intents.op", &*self.op))?;
        let step = IntentStep::from_name(&self.step)
            .ok_or_else(|| Invalid::new("intents.step", &*self.step))?;
        Ok(Intent {
            id: self.id,
            op,
            address: self.address,
            original_driver: self.original_driver,
            owner: super::pci_rows::owner_from(self.owner_driver, self.owner_domain)?,
            managed: self.managed,
            writes_sysfs: self.writes_sysfs,
            iommu_group: self.iommu_group,
            step,
            process: ProcessStamp {
                pid: self.pid,
                start: self.pid_start.cast_unsigned(),
            },
        })
    }
}
