//! PCIe root ports: the slots hot-plugged devices go into, discovered at connect.
//!
//! On q35 the root bus cannot hot-plug, and root ports cannot be hot-plugged themselves, so
//! the VM is started with empty `pcie-root-port`s (see `cmdline::root_port_args`) and every
//! hot-plugged PCI device takes one (slot 0, one device per port). We find them among the
//! VM's peripherals (`qom.rs`; ports need an id to be addressed) and see whether each is
//! taken by listing its secondary bus, `/machine/peripheral/<port>/<port>`, whose
//! `child[N]` links are the devices on it. This works on a paused VM, unlike `query-pci`.
//! Handing ports out is the device manager's job; it seeds its pool from these.

use serde_json::json;

use crate::qmp::{QmpClient, QmpError};
use crate::qom::{self, PERIPHERALS};

/// Why the ports could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// A QOM query failed.
    #[error("cannot list the VM's PCIe root ports ({path})")]
    Query {
        /// The QOM path that was listed.
        path: String,
        /// The error.
        #[source]
        source: QmpError,
    },
}

/// One pcie-root-port of the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcieRootPort {
    /// The port's qdev id, which is also its bus name (the `bus` of a device on it).
    pub id: String,
    /// The QOM path of the device on it, if any.
    pub occupant: Option<String>,
    /// Its slot on the root bus (`pcie.0`), the first step of a guest PCI path.
    pub slot: Option<u8>,
}

/// Lists the VM's root ports that have an id, in natural order (`hp2` before `hp10`).
pub fn discover(client: &mut QmpClient) -> Result<Vec<PcieRootPort>, PortError> {
    let mut ports = Vec::new();
    let peripherals = qom::peripherals(client).map_err(|source| PortError::Query {
        path: PERIPHERALS.to_owned(),
        source,
    })?;
    for (id, kind) in peripherals {
        if kind != "pcie-root-port" {
            continue;
        }
        let bus = format!("{PERIPHERALS}/{id}/{id}");
        let mut occupant = None;
        for qom::Property { name, kind } in list(client, &bus)? {
            if name.starts_with("child[") && kind.starts_with("link<") {
                let target = client
                    .execute("qom-get", Some(&json!({"path": bus, "property": name})))
                    .map_err(|source| PortError::Query {
                        path: format!("{bus}/{name}"),
                        source,
                    })?;
                occupant = Some(target.as_str().unwrap_or_default().to_owned());
            }
        }
        let path = format!("{PERIPHERALS}/{id}");
        let devfn = client
            .execute("qom-get", Some(&json!({"path": path, "property": "addr"})))
            .map_err(|source| PortError::Query { path, source })?;
        // `addr` is the devfn: slot << 3 | function.
        let slot = devfn.as_u64().and_then(|d| u8::try_from(d >> 3).ok());
        ports.push(PcieRootPort { id, occupant, slot });
    }
    ports.sort_by(|a, b| natural_key(&a.id).cmp(&natural_key(&b.id)));
    Ok(ports)
}

fn list(client: &mut QmpClient, path: &str) -> Result<Vec<qom::Property>, PortError> {
    qom::list(client, path).map_err(|source| PortError::Query {
        path: path.to_owned(),
        source,
    })
}

/// `hp10` → (`hp`, 10, ``) so that ports sort as people number them.
fn natural_key(id: &str) -> (&str, u64, &str) {
    let start = id.find(|c: char| c.is_ascii_digit()).unwrap_or(id.len());
    let end = id[start..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(id.len(), |e| start + e);
    (
        &id[..start],
        id[start..end].parse().unwrap_or(0),
        &id[end..],
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::qmp::fake::{Action, FakeQmp};

    #[test]
    fn finds_ports_and_their_occupants() {
        let fake = FakeQmp::start(|cmd, args| match (cmd, args["path"].as_str()) {
            ("qom-list", Some("/machine/peripheral")) => vec![Action::Return(json!([
                {"name": "type", "type": "string"},
                {"name": "hp10", "type": "child<pcie-root-port>"},
                {"name": "vb0", "type": "child<virtio-blk-pci>"},
                {"name": "hp2", "type": "child<pcie-root-port>"},
            ]))],
            ("qom-list", Some("/machine/peripheral/hp2/hp2")) => vec![Action::Return(json!([
                {"name": "type", "type": "string"},
                {"name": "child[0]", "type": "link<virtio-blk-pci>"},
                {"name": "hotplug-handler", "type": "link<hotplug-handler>"},
            ]))],
            ("qom-list", _) => vec![Action::Return(json!([{"name": "type", "type": "string"}]))],
            ("qom-get", _) if args["property"] == "addr" => vec![Action::Return(json!(43))],
            ("qom-get", _) => vec![Action::Return(json!("/machine/peripheral/vb0"))],
            _ => vec![Action::Error("unexpected".into())],
        });
        let mut c = QmpClient::connect(fake.socket(), Duration::from_secs(5)).unwrap();
        let ports = discover(&mut c).unwrap();
        assert_eq!(
            ports,
            [
                PcieRootPort {
                    id: "hp2".into(),
                    occupant: Some("/machine/peripheral/vb0".into()),
                    slot: Some(5),
                },
                PcieRootPort {
                    id: "hp10".into(),
                    occupant: None,
                    slot: Some(5),
                },
            ]
        );
    }

    #[test]
    fn natural_order() {
        let mut ids = ["rp10", "rp2", "hp1", "rp1a", "rp"];
        ids.sort_by(|a, b| natural_key(a).cmp(&natural_key(b)));
        assert_eq!(ids, ["hp1", "rp", "rp1a", "rp2", "rp10"]);
    }
}
