//! Claims on the devices that have no inactive list (USB, SCSI, mdev) and on NVMe
//! namespaces: one row per (kind, key, owner). Only SCSI allows several owners of one
//! key, when every one of them marked it shareable; the kind modules enforce that.

use std::fmt;

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{Invalid, RegistryError, Tx};
use crate::owner::Owner;

/// The kinds of device kept in the claims table.
///
/// JSON and registry words (stable): `usb`, `scsi`, `mdev`, `nvme` (also the prefix of the
/// device's text form); [`Display`](fmt::Display) prints "USB device", "SCSI device",
/// "mediated device", "NVMe namespace".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimKind {
    /// A USB device, keyed `BUS:DEV`.
    Usb,
    /// A SCSI device, keyed `H:C:T:L`.
    Scsi,
    /// A mediated device, keyed by UUID.
    Mdev,
    /// An NVMe namespace, keyed `DDDD:BB:SS.F/NSID`.
    Nvme,
}

impl ClaimKind {
    /// The name stored in the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Usb => "usb",
            Self::Scsi => "scsi",
            Self::Mdev => "mdev",
            Self::Nvme => "nvme",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "usb" => Self::Usb,
            "scsi" => Self::Scsi,
            "mdev" => Self::Mdev,
            "nvme" => Self::Nvme,
            _ => return None,
        })
    }
}

impl fmt::Display for ClaimKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Usb => "USB device",
            Self::Scsi => "SCSI device",
            Self::Mdev => "mediated device",
            Self::Nvme => "NVMe namespace",
        })
    }
}

/// One claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRow {
    /// The kind of device.
    pub kind: ClaimKind,
    /// The device's key within its kind.
    pub key: String,
    /// Who holds it.
    pub owner: Owner,
    /// SCSI: this user agrees to share the device.
    pub shareable: bool,
    /// Free text shown by `ls` (USB vendor:product, NVMe controller).
    pub detail: Option<String>,
}

impl Tx<'_> {
    /// The claims on one device.
    pub fn claims_on(&self, kind: ClaimKind, key: &str) -> Result<Vec<ClaimRow>, RegistryError> {
        self.query_claims(
            "SELECT kind, key, owner_driver, owner_domain, shareable, detail FROM claims \
             WHERE kind = ?1 AND key = ?2 ORDER BY owner_driver, owner_domain",
            params![kind.as_str(), key],
        )
    }

    /// Every claim of one kind whose key starts with `prefix` (NVMe: one controller).
    pub fn claims_with_prefix(
        &self,
        kind: ClaimKind,
        prefix: &str,
    ) -> Result<Vec<ClaimRow>, RegistryError> {
        self.query_claims(
            "SELECT kind, key, owner_driver, owner_domain, shareable, detail FROM claims \
             WHERE kind = ?1 AND substr(key, 1, length(?2)) = ?2 ORDER BY key",
            params![kind.as_str(), prefix],
        )
    }

    /// Every claim.
    pub fn claims(&self) -> Result<Vec<ClaimRow>, RegistryError> {
        self.query_claims(
            "SELECT kind, key, owner_driver, owner_domain, shareable, detail FROM claims \
             ORDER BY kind, key",
            [],
        )
    }

    fn query_claims(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
    ) -> Result<Vec<ClaimRow>, RegistryError> {
        let raws: Vec<RawClaim> = self
            .tx
            .prepare_cached(sql)
            .and_then(|mut st| {
                st.query_map(p, |r| {
                    Ok(RawClaim {
                        kind: r.get(0)?,
                        key: r.get(1)?,
                        owner_driver: r.get(2)?,
                        owner_domain: r.get(3)?,
                        shareable: r.get(4)?,
                        detail: r.get(5)?,
                    })
                })?
                .collect()
            })
            .map_err(self.err("reading claims"))?;
        raws.into_iter()
            .map(|r| r.into_claim().map_err(|i| self.invalid_row(i)))
            .collect()
    }

    /// Adds a claim.
    pub fn insert_claim(&self, claim: &ClaimRow) -> Result<(), RegistryError> {
        let raw = RawClaim::from_claim(claim);
        self.tx
            .prepare_cached(
                "INSERT INTO claims (kind, key, owner_driver, owner_domain, shareable, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    raw.kind,
                    raw.key,
                    raw.owner_driver,
                    raw.owner_domain,
                    raw.shareable,
                    raw.detail,
                ])
            })
            .map_err(self.err("writing a claim"))?;
        Ok(())
    }

    /// Removes `owner`'s claim on one device; returns whether there was one.
    pub fn delete_claim(
        &self,
        kind: ClaimKind,
        key: &str,
        owner: &Owner,
    ) -> Result<bool, RegistryError> {
        let n = self
            .tx
            .prepare_cached(
                "DELETE FROM claims WHERE kind = ?1 AND key = ?2 \
                 AND owner_driver = ?3 AND owner_domain = ?4",
            )
            .and_then(|mut st| {
                st.execute(params![kind.as_str(), key, owner.driver(), owner.domain()])
            })
            .map_err(self.err("deleting a claim"))?;
        Ok(n > 0)
    }
}

/// A claim as SQLite stores it (the columns of `claims`), before validation.
///
/// Reading decodes with [`RawClaim::into_claim`]; writing encodes with
/// [`RawClaim::from_claim`], so what is written is what is read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawClaim {
    /// `kind`: `usb`, `scsi`, `mdev` or `nvme`.
    pub kind: String,
    /// `key`.
    pub key: String,
    /// `owner_driver`.
    pub owner_driver: String,
    /// `owner_domain`.
    pub owner_domain: String,
    /// `shareable`.
    pub shareable: bool,
    /// `detail`.
    pub detail: Option<String>,
}

impl RawClaim {
    /// The columns that store `claim`.
    pub fn from_claim(claim: &ClaimRow) -> Self {
        Self {
            kind: claim.kind.as_str().to_owned(),
            key: claim.key.clone(),
            owner_driver: claim.owner.driver().to_owned(),
            owner_domain: claim.owner.domain().to_owned(),
            shareable: claim.shareable,
            detail: claim.detail.clone(),
        }
    }

    /// The claim these columns hold, or the first column that holds a value this build
    /// cannot read.
    pub fn into_claim(self) -> Result<ClaimRow, Invalid> {
        let kind = ClaimKind::from_name(&self.kind)
            .ok_or_else(|| Invalid::new("claims.kind", &*self.kind))?;
        let owner = Owner::new(&self.owner_driver, &self.owner_domain).map_err(|_| {
            Invalid::new(
                "claims.owner",
                format!("{}/{}", self.owner_driver, self.owner_domain),
            )
        })?;
        Ok(ClaimRow {
            kind,
            key: self.key,
            owner,
            shareable: self.shareable,
            detail: self.detail,
        })
    }
}
