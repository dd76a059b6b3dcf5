//! Reading QEMU's object tree (QOM) over QMP: the properties of a path, and the devices the
//! VM holds under an id.
//!
//! Every device given an `id` sits at `/machine/peripheral/<id>`, so listing that path with
//! `qom-list` names every device QEMU holds (ours and the VM's own), with its qdev type, and
//! works on a paused VM. Root-port discovery (`ports.rs`), the wait for a removal
//! (`removal.rs`), the controller found at attach (`hypervisor.rs`) and the inspection of
//! what a VM holds (`inspect.rs`) all read it here.

use serde_json::{Value, json};

use crate::qmp::{QmpClient, QmpError};

/// Where QEMU puts the devices that have an id.
pub(crate) const PERIPHERALS: &str = "/machine/peripheral";

/// One property of a QOM object, as `qom-list` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Property {
    /// Its name (a child's name is the child's id).
    pub(crate) name: String,
    /// Its type: `child<virtio-blk-pci>`, `link<virtio-blk-pci>`, `string`, …
    pub(crate) kind: String,
}

impl Property {
    /// The child's type when the property is a child (`child<T>` → `T`).
    pub(crate) fn child_type(&self) -> Option<&str> {
        self.kind.strip_prefix("child<")?.strip_suffix('>')
    }
}

/// `qom-list path`: the properties of the object at `path` (entries QEMU gives without a
/// name or type are skipped).
pub(crate) fn list(client: &mut QmpClient, path: &str) -> Result<Vec<Property>, QmpError> {
    let reply = client.execute("qom-list", Some(&json!({ "path": path })))?;
    Ok(reply
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some(Property {
                name: p.get("name").and_then(Value::as_str)?.to_owned(),
                kind: p.get("type").and_then(Value::as_str)?.to_owned(),
            })
        })
        .collect())
}

/// The devices the VM holds under an id, as `(id, qdev type)`, in QEMU's order.
pub(crate) fn peripherals(client: &mut QmpClient) -> Result<Vec<(String, String)>, QmpError> {
    Ok(list(client, PERIPHERALS)?
        .into_iter()
        .filter_map(|p| {
            let kind = p.child_type()?.to_owned();
            Some((p.name, kind))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::qmp::fake::{Action, FakeQmp};

    #[test]
    fn peripherals_are_the_children_with_their_types() {
        let fake = FakeQmp::start(|cmd, args| match (cmd, args["path"].as_str()) {
            ("qom-list", Some(PERIPHERALS)) => vec![Action::Return(json!([
                {"name": "type", "type": "string"},
                {"name": "hp1", "type": "child<pcie-root-port>"},
                {"name": "drive-000000000000002a", "type": "child<virtio-blk-pci>"},
                {"name": "odd"},
            ]))],
            _ => vec![Action::Error("unexpected".into())],
        });
        let mut c = QmpClient::connect(fake.socket(), Duration::from_secs(5)).unwrap();
        assert_eq!(
            peripherals(&mut c).unwrap(),
            [
                ("hp1".to_owned(), "pcie-root-port".to_owned()),
                (
                    "drive-000000000000002a".to_owned(),
                    "virtio-blk-pci".to_owned()
                ),
            ]
        );
        assert_eq!(list(&mut c, PERIPHERALS).unwrap().len(), 3);
        let err = list(&mut c, "/elsewhere").unwrap_err();
        assert!(err.failure().is_some(), "{err}");
    }
}
