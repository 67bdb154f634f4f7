//! Helpers shared by the CRD tests: a local stand-in for the API server's
//! validation of a custom resource (OpenAPI schema, strict field validation as
//! `kubectl apply` requests it, then CEL rules with defaults applied).

#![allow(dead_code)]

use ferry_crds::crdgen;
use kube::core::cel::Validator;
use serde_json::{Value, json};

/// The openAPIV3Schema of the CRD of `kind`.
pub fn schema_of(kind: &str) -> Value {
    let (_, crd) = crdgen::crds()
        .into_iter()
        .find(|(_, crd)| crd.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD of kind {kind}"));
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema
        .as_ref()
        .unwrap();
    serde_json::to_value(schema).unwrap()
}

/// Turns an OpenAPI v3 structural schema into a JSON Schema that rejects unknown
/// fields (what `kubectl apply`'s strict field validation does) and accepts `null`
/// where the schema says `nullable`.
fn strict_json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                if k.starts_with("x-kubernetes-") || k == "nullable" {
                    continue;
                }
                let v = match k.as_str() {
                    "properties" => Value::Object(
                        v.as_object()
                            .unwrap()
                            .iter()
                            .map(|(name, s)| (name.clone(), strict_json_schema(s)))
                            .collect(),
                    ),
                    "items" | "additionalProperties" => strict_json_schema(v),
                    _ => v.clone(),
                };
                out.insert(k.clone(), v);
            }
            let preserve = map.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
            if map.contains_key("properties")
                && !map.contains_key("additionalProperties")
                && !preserve
            {
                out.insert("additionalProperties".into(), json!(false));
            }
            if map.get("nullable") == Some(&json!(true))
                && let Some(Value::String(t)) = map.get("type")
            {
                out.insert("type".into(), json!([t, "null"]));
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// Validates `object` as the API server would on create (`old` = None) or update.
/// Returns every error, schema errors first.
pub fn validate(object: &Value, old: Option<&Value>) -> Vec<String> {
    let kind = object["kind"].as_str().expect("object has a kind");
    let schema = schema_of(kind);
    let mut root = strict_json_schema(&schema);
    // apiVersion, kind and metadata are checked by the API server, not the schema.
    root["properties"]["apiVersion"] = json!({"const": "ferry.dev/v1alpha1"});
    root["properties"]["kind"] = json!({"const": kind});
    // metadata is validated by the API server itself, not by the CRD schema.
    root["properties"]["metadata"] = json!({"type": "object"});
    let validator = jsonschema::validator_for(&root).expect("schema compiles as JSON Schema");
    let mut errors: Vec<String> = validator
        .iter_errors(object)
        .map(|e| format!("{}: {}", e.instance_path(), e))
        .collect();
    if errors.is_empty()
        && let Err(cel_errors) = Validator::new().validate(&schema, object, old)
    {
        errors.extend(cel_errors.into_vec().into_iter().map(|e| e.to_string()));
    }
    errors
}

/// Parses every YAML document of a file.
pub fn yaml_documents(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text).expect("valid YAML")
}

/// A valid Connector to mutate in tests.
pub fn connector() -> Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "Connector",
        "metadata": {"name": "c", "namespace": "t"},
        "spec": {
            "source": {"s3": {"bucket": "src-bucket", "prefix": "in/", "region": "eu-west-1",
                              "credentials": {"secretRef": {"name": "s3"}}}},
            "destination": {"azureBlob": {"account": "acct", "container": "dest", "region": "eu-west-1",
                                          "credentials": {"secretRef": {"name": "az"}}}},
            "streams": [{"name": "customers", "match": "customers/**", "sensitivity": ["pii"]}],
            "compliance": {"allowedSensitivity": ["pii"], "dataResidency": "in-region-only"},
            "encryption": {"keyRef": {"secretRef": {"name": "kek"}, "key": "kek"}},
            "schedule": "0 2 * * *"
        }
    })
}

/// A valid ConnectorRun to mutate in tests.
pub fn run() -> Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "ConnectorRun",
        "metadata": {"name": "r", "namespace": "t"},
        "spec": {"connectorRef": {"name": "c"}, "mode": "sync"}
    })
}
