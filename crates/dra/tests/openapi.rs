//! The upstream OpenAPI schema document of `resource.k8s.io/v1`
//! (`schema/resource.k8s.io-v1.json`) as a strict validator: what `schema.rs` tests the
//! publisher's slices and the claims with, and what the stand-in API server
//! (`apiserver.rs`) checks every object it receives against.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::{Value, json};

/// The schema document as it is in the repository.
pub const DOCUMENT: &str = include_str!("../schema/resource.k8s.io-v1.json");

/// The top-level definitions the tests validate against (named as upstream names them).
#[expect(
    clippy::enum_variant_names,
    reason = "the variants are the upstream kinds' names"
)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `io.k8s.api.resource.v1.ResourceSlice`.
    ResourceSlice,
    /// `io.k8s.api.resource.v1.ResourceSliceList`.
    ResourceSliceList,
    /// `io.k8s.api.resource.v1.ResourceClaim`.
    ResourceClaim,
}

impl Kind {
    fn definition(self) -> &'static str {
        match self {
            Self::ResourceSlice => "io.k8s.api.resource.v1.ResourceSlice",
            Self::ResourceSliceList => "io.k8s.api.resource.v1.ResourceSliceList",
            Self::ResourceClaim => "io.k8s.api.resource.v1.ResourceClaim",
        }
    }
}

/// Makes `schema` strict as kubeconform does: every object schema with `properties` and no
/// `additionalProperties` gets `"additionalProperties": false`, through properties, items,
/// additionalProperties and the combinators.
fn make_strict(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if object.get("properties").is_some_and(Value::is_object)
        && !object.contains_key("additionalProperties")
    {
        object.insert("additionalProperties".into(), Value::Bool(false));
    }
    if let Some(Value::Object(properties)) = object.get_mut("properties") {
        properties.values_mut().for_each(make_strict);
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(inner) = object.get_mut(key) {
            make_strict(inner);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(all)) = object.get_mut(key) {
            all.iter_mut().for_each(make_strict);
        }
    }
}

/// The document's definitions, made strict.
pub fn strict_definitions() -> Value {
    let mut document: Value = serde_json::from_str(DOCUMENT).unwrap();
    let mut definitions = document["definitions"].take();
    for definition in definitions.as_object_mut().unwrap().values_mut() {
        make_strict(definition);
    }
    definitions
}

/// One strict validator per kind, built once.
fn validators() -> &'static BTreeMap<Kind, jsonschema::Validator> {
    static VALIDATORS: OnceLock<BTreeMap<Kind, jsonschema::Validator>> = OnceLock::new();
    VALIDATORS.get_or_init(|| {
        let definitions = strict_definitions();
        [
            Kind::ResourceSlice,
            Kind::ResourceSliceList,
            Kind::ResourceClaim,
        ]
        .into_iter()
        .map(|kind| {
            // Swagger 2.0's schemas are a subset of JSON Schema draft 4.
            let root = json!({
                "definitions": definitions,
                "allOf": [{ "$ref": format!("#/definitions/{}", kind.definition()) }],
            });
            let validator = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft4)
                .build(&root)
                .unwrap();
            (kind, validator)
        })
        .collect()
    })
}

/// Every way `value` breaks the strict schema of `kind`, as `path: message` (empty: valid).
pub fn schema_problems(kind: Kind, value: &Value) -> Vec<String> {
    validators()[&kind]
        .iter_errors(value)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Asserts that `value` is a valid `kind`.
#[track_caller]
pub fn assert_valid(kind: Kind, value: &Value) {
    let problems = schema_problems(kind, value);
    assert!(
        problems.is_empty(),
        "{kind:?} invalid:\n{}",
        problems.join("\n")
    );
}
