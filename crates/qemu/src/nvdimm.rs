//! NVDIMMs: a file-backed memory backend and an `nvdimm` device. Add only.
//!
//! QEMU cannot hot-unplug an nvdimm (`device_del` answers "nvdimm device hot unplug is not
//! supported yet."), so the plan is marked not removable and removal refuses it before
//! QEMU is asked. The VM must have been started with `-machine nvdimm=on` and
//! `-m SIZE,slots=N,maxmem=MAX` with room for the DIMM (see `cmdline::memory_args`). The
//! backing file's size is the DIMM's size: QEMU refuses a mismatch.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::id::{BackendRole, QemuId};
use crate::plan::{BackendObject, Plan};

/// Why an nvdimm could not be described.
#[derive(Debug, thiserror::Error)]
pub enum NvdimmError {
    /// The backing file could not be inspected.
    #[error("cannot inspect nvdimm backing file {path}")]
    Inspect {
        /// The path.
        path: PathBuf,
        /// The stat error.
        #[source]
        source: std::io::Error,
    },
    /// The backing file is empty.
    #[error("nvdimm backing file {path} is empty")]
    Empty {
        /// The path.
        path: PathBuf,
    },
}

/// A persistent-memory DIMM backed by a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nvdimm {
    /// The backing file (or DAX device).
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// The file is real persistent memory (`pmem=on`).
    pub pmem: bool,
    /// Map it read-only.
    pub read_only: bool,
}

impl Nvdimm {
    /// Describes the DIMM backed by `path`, sized by the file.
    pub fn from_file(path: &Path, pmem: bool, read_only: bool) -> Result<Self, NvdimmError> {
        let meta = std::fs::metadata(path).map_err(|source| NvdimmError::Inspect {
            path: path.to_owned(),
            source,
        })?;
        if meta.len() == 0 {
            return Err(NvdimmError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Self {
            path: path.to_owned(),
            size: meta.len(),
            pmem,
            read_only,
        })
    }
}

/// The memory backend and the nvdimm device.
pub fn nvdimm(id: QemuId, dimm: &Nvdimm) -> Plan {
    let mem = id.backend_name(BackendRole::Memory);
    let mut args = json!({
        "qom-type": "memory-backend-file",
        "id": mem,
        "mem-path": dimm.path,
        "size": dimm.size,
        "share": true,
    });
    if let Value::Object(map) = &mut args {
        if dimm.pmem {
            map.insert("pmem".to_owned(), json!(true));
        }
        if dimm.read_only {
            map.insert("readonly".to_owned(), json!(true));
        }
    }
    let mut device = json!({"driver": "nvdimm", "id": id.as_str(), "memdev": mem});
    if dimm.read_only
        && let Value::Object(map) = &mut device
    {
        map.insert("unarmed".to_owned(), json!(true));
    }
    let mut plan = Plan::device_only(id, device);
    plan.backends = vec![BackendObject::Object { id: mem, args }];
    plan.removable = false;
    plan
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn an_nvdimm_is_a_shared_file_backend_and_is_not_removable() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0u8; 4096]).unwrap();
        let dimm = Nvdimm::from_file(f.path(), false, false).unwrap();
        assert_eq!(dimm.size, 4096);
        let plan = nvdimm("nv0".parse().unwrap(), &dimm);
        assert!(!plan.removable);
        let BackendObject::Object { id, args } = &plan.backends[0] else {
            panic!()
        };
        assert_eq!(id, "nv0-mem");
        assert_eq!(args["qom-type"], "memory-backend-file");
        assert_eq!(args["size"], 4096);
        assert_eq!(args["share"], true);
        assert!(args.get("pmem").is_none());
        assert_eq!(
            plan.device,
            json!({"driver": "nvdimm", "id": "nv0", "memdev": "nv0-mem"})
        );
    }

    #[test]
    fn read_only_and_pmem_are_passed_on() {
        let dimm = Nvdimm {
            path: "/v/pm".into(),
            size: 1 << 20,
            pmem: true,
            read_only: true,
        };
        let plan = nvdimm("nv1".parse().unwrap(), &dimm);
        let BackendObject::Object { args, .. } = &plan.backends[0] else {
            panic!()
        };
        assert_eq!(args["pmem"], true);
        assert_eq!(args["readonly"], true);
        assert_eq!(plan.device["unarmed"], true);
    }

    #[test]
    fn an_empty_or_missing_file_is_refused() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(matches!(
            Nvdimm::from_file(f.path(), false, false),
            Err(NvdimmError::Empty { .. })
        ));
        assert!(matches!(
            Nvdimm::from_file(Path::new("/nonexistent/pm"), false, false),
            Err(NvdimmError::Inspect { .. })
        ));
    }
}
