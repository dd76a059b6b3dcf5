//! The manifests in `deploy/dra/` are what the API server accepts: every document parses
//! into its k8s-openapi type and back without losing a field, and the CEL selectors use
//! only the driver name and attributes the plugin publishes.

use std::collections::BTreeSet;
use std::path::Path;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaimTemplate};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn documents(file: &str) -> Vec<serde_json::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/dra")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_multiple(&text).unwrap()
}

/// `value` as a `T`, checked to lose nothing on the way back.
fn typed<T: DeserializeOwned + Serialize>(value: &serde_json::Value) -> T {
    let object: T = serde_json::from_value(value.clone()).unwrap();
    assert_eq!(
        &serde_json::to_value(&object).unwrap(),
        value,
        "a field was lost"
    );
    object
}

#[test]
fn the_daemonset_runs_the_plugin_with_the_kubelet_paths() {
    let mut kinds = Vec::new();
    for doc in documents("daemonset.yaml") {
        let kind = doc["kind"].as_str().unwrap().to_owned();
        match kind.as_str() {
            "Namespace" => drop(typed::<Namespace>(&doc)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(&doc)),
            "ClusterRole" => {
                let role: ClusterRole = typed(&doc);
                let resources: BTreeSet<String> = role
                    .rules
                    .iter()
                    .flatten()
                    .flat_map(|r| r.resources.iter().flatten().cloned())
                    .collect();
                assert!(
                    resources.contains("resourceslices") && resources.contains("resourceclaims")
                );
                // What the plugin calls: the slices' watch, the Node's get.
                let verbs = |resource: &str| -> BTreeSet<String> {
                    role.rules
                        .iter()
                        .flatten()
                        .filter(|r| r.resources.iter().flatten().any(|x| x == resource))
                        .flat_map(|r| r.verbs.iter().cloned())
                        .collect()
                };
                for verb in ["list", "watch", "create", "update", "delete"] {
                    assert!(verbs("resourceslices").contains(verb), "{verb}");
                }
                assert!(verbs("resourceclaims").contains("get"));
                assert!(verbs("nodes").contains("get"));
            }
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(&doc)),
            "DaemonSet" => {
                let ds: DaemonSet = typed(&doc);
                let pod = ds.spec.unwrap().template.spec.unwrap();
                let container = &pod.containers[0];
                assert_eq!(container.command.as_deref().unwrap()[0], "plugboard-dra");
                let env = container.env.as_ref().unwrap();
                assert!(env.iter().any(|e| e.name == "NODE_NAME"));
                assert_eq!(
                    container.security_context.as_ref().unwrap().privileged,
                    Some(true)
                );
                let mounts: BTreeSet<&str> = container
                    .volume_mounts
                    .iter()
                    .flatten()
                    .map(|m| m.mount_path.as_str())
                    .collect();
                for path in [
                    "/sys",
                    "/dev",
                    "/var/lib/kubelet/plugins_registry",
                    "/var/lib/kubelet/plugins",
                    "/var/run/cdi",
                    "/var/lib/plugboard",
                ] {
                    assert!(mounts.contains(path), "{path} not mounted");
                }
            }
            other => panic!("unexpected {other}"),
        }
        kinds.push(kind);
    }
    assert!(kinds.contains(&"DaemonSet".to_owned()));
}

#[test]
fn the_device_classes_select_by_published_attributes() {
    let published = [
        "vendor",
        "device",
        "class",
        "iommuGroup",
        "numaNode",
        "driver",
        "viable",
        "memberCount",
        "members",
    ];
    let classes = documents("deviceclass.yaml");
    assert!(!classes.is_empty());
    for doc in classes {
        let class: DeviceClass = typed(&doc);
        for selector in class.spec.selectors.iter().flatten() {
            let cel = &selector.cel.as_ref().unwrap().expression;
            assert!(
                cel.contains("device.driver == \"vfio.plugboard.dev\""),
                "{cel}"
            );
            // Every `.name` after the driver's attribute map is one the plugin publishes.
            for part in cel
                .split("device.attributes[\"vfio.plugboard.dev\"].")
                .skip(1)
            {
                let name: String = part
                    .chars()
                    .take_while(char::is_ascii_alphanumeric)
                    .collect();
                assert!(
                    published.contains(&name.as_str()),
                    "{name} is not published"
                );
            }
        }
    }
}

#[test]
fn the_claim_template_and_pod_parse() {
    let docs = documents("resourceclaimtemplate.yaml");
    let template: ResourceClaimTemplate = typed(&docs[0]);
    let request = &template.spec.spec.devices.unwrap().requests.unwrap()[0];
    assert_eq!(
        request.exactly.as_ref().unwrap().device_class_name,
        "e1000e-nic"
    );
    let pod: Pod = typed(&docs[1]);
    assert_eq!(pod.spec.unwrap().resource_claims.unwrap()[0].name, "nic");
}
