//! The generated CRDs: committed and current, structural, carrying what kubectl
//! and server-side apply rely on, with CEL rules that compile within cost limits.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::path::PathBuf;

use ferry_crds::crdgen;
use kube::core::cel::{ScopeContext, WarningKind, analyze_rule, compile_schema};
use serde_json::{Value, json};
use support::schema_of;

fn crd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/ferry/crds")
}

/// The committed CRDs are exactly what `crdgen` writes: this is the golden test
/// that pins the schema. On failure run `make generate` and review the diff.
#[test]
fn committed_crds_are_current() {
    for (file, crd) in crdgen::crds() {
        let expected = crdgen::to_yaml(&crd).unwrap();
        let committed = std::fs::read_to_string(crd_dir().join(file))
            .unwrap_or_else(|e| panic!("{file} is not committed ({e}): run `make generate`"));
        pretty_assertions::assert_eq!(
            committed,
            expected,
            "{file} is stale: run `make generate` and commit the result"
        );
    }
}

/// The committed YAML parses back to the same CRD object.
#[test]
fn committed_yaml_round_trips() {
    for (file, crd) in crdgen::crds() {
        let text = std::fs::read_to_string(crd_dir().join(file)).unwrap();
        let parsed: Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(parsed, serde_json::to_value(&crd).unwrap(), "{file}");
    }
}

/// Checks the rules of a structural schema (Kubernetes "Specifying a structural
/// schema"): every node has a type, no $ref, logical junctors carry no types,
/// defaults or descriptions, properties and additionalProperties never together,
/// list-maps have keys that are required or defaulted scalars.
fn check_structural(path: &str, node: &Value, errors: &mut Vec<String>) {
    let obj = node.as_object().expect("schema node is an object");
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&json!(true));
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    if !obj.contains_key("type") && !int_or_string && !preserve {
        errors.push(format!("{path}: no type"));
    }
    if obj.contains_key("$ref") || obj.contains_key("definitions") || obj.contains_key("$defs") {
        errors.push(format!("{path}: $ref/definitions are not allowed"));
    }
    for junctor in ["allOf", "anyOf", "oneOf", "not"] {
        if let Some(v) = obj.get(junctor) {
            let branches = v.as_array().cloned().unwrap_or_else(|| vec![v.clone()]);
            for b in &branches {
                for banned in [
                    "type",
                    "default",
                    "description",
                    "additionalProperties",
                    "nullable",
                ] {
                    if b.get(banned).is_some() {
                        errors.push(format!("{path}: {junctor} branch sets {banned}"));
                    }
                }
            }
            if !int_or_string {
                errors.push(format!(
                    "{path}: {junctor} (Ferry keeps schemas free of junctors)"
                ));
            }
        }
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        errors.push(format!(
            "{path}: properties and additionalProperties together"
        ));
    }
    if obj.get("x-kubernetes-list-type") == Some(&json!("map")) {
        let keys = obj
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array);
        let item = &obj["items"];
        match keys {
            None => errors.push(format!("{path}: list-map without keys")),
            Some(keys) => {
                let required: Vec<&Value> = item
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().collect())
                    .unwrap_or_default();
                for key in keys {
                    let prop = &item["properties"][key.as_str().unwrap()];
                    if !required.contains(&key) && prop.get("default").is_none() {
                        errors.push(format!(
                            "{path}: list-map key {key} neither required nor defaulted"
                        ));
                    }
                    if !matches!(prop["type"].as_str(), Some("string" | "integer")) {
                        errors.push(format!("{path}: list-map key {key} is not a scalar"));
                    }
                }
            }
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            check_structural(&format!("{path}.{name}"), child, errors);
        }
    }
    if let Some(items) = obj.get("items") {
        check_structural(&format!("{path}[]"), items, errors);
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        check_structural(&format!("{path}{{}}"), extra, errors);
    }
}

#[test]
fn schemas_are_structural() {
    for kind in ["Connector", "ConnectorRun"] {
        let schema = schema_of(kind);
        let mut errors = Vec::new();
        check_structural(kind, &schema, &mut errors);
        // The root may only restrict metadata.name / generateName.
        assert!(
            schema["properties"].get("metadata").is_none(),
            "{kind}: metadata must not be specified"
        );
        assert!(
            errors.is_empty(),
            "{kind} is not structural:\n{}",
            errors.join("\n")
        );
    }
}

#[test]
fn crds_carry_names_columns_and_subresources() {
    let crds = crdgen::crds();
    let expect = [
        (
            "Connector",
            "connectors",
            "fconn",
            vec!["Ready", "Schedule", "Last Success", "Age"],
        ),
        (
            "ConnectorRun",
            "connectorruns",
            "frun",
            vec!["Phase", "Bytes", "Duration", "Age"],
        ),
    ];
    for (kind, plural, short, columns) in expect {
        let (_, crd) = crds
            .iter()
            .find(|(_, c)| c.spec.names.kind == kind)
            .unwrap();
        assert_eq!(crd.spec.group, "ferry.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.plural, plural);
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&[short.to_string()][..])
        );
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["ferry".to_string()][..])
        );
        assert_eq!(crd.spec.versions.len(), 1);
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        assert!(
            version.subresources.as_ref().unwrap().status.is_some(),
            "{kind}: status subresource"
        );
        let names: Vec<&str> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        for col in columns {
            assert!(
                names.contains(&col),
                "{kind}: printer column {col} missing from {names:?}"
            );
        }
        let conditions = &schema_of(kind)["properties"]["status"]["properties"]["conditions"];
        assert_eq!(
            conditions["x-kubernetes-list-type"], "map",
            "{kind}: conditions list-map"
        );
        assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
        for field in ["type", "status", "reason", "message", "lastTransitionTime"] {
            assert!(
                conditions["items"]["required"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(field)),
                "{kind}: condition field {field} required"
            );
        }
        assert!(
            conditions["items"]["properties"]
                .get("observedGeneration")
                .is_some()
        );
        let status = &schema_of(kind)["properties"]["status"]["properties"];
        assert!(
            status.get("observedGeneration").is_some(),
            "{kind}: status.observedGeneration"
        );
    }
}

/// Every CEL rule compiles, uses only variables allowed in a CRD, and the cost
/// estimate stays within the API server's per-rule budget.
#[test]
fn cel_rules_compile_within_cost_limits() {
    fn rules(node: &Value, out: &mut Vec<String>) {
        if let Some(list) = node
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
        {
            out.extend(list.iter().map(|r| r["rule"].as_str().unwrap().to_string()));
        }
        for key in ["properties"] {
            if let Some(props) = node.get(key).and_then(Value::as_object) {
                props.values().for_each(|c| rules(c, out));
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(child) = node.get(key).filter(|v| v.is_object()) {
                rules(child, out);
            }
        }
    }
    let mut total = 0;
    for kind in ["Connector", "ConnectorRun"] {
        let schema = schema_of(kind);
        let compiled = compile_schema(&schema);
        let mut all = Vec::new();
        rules(&schema, &mut all);
        assert!(!all.is_empty());
        total += all.len();
        fn errors(c: &kube::core::cel::CompiledSchema, out: &mut Vec<String>) {
            out.extend(c.compilation_errors().iter().map(|e| e.to_string()));
            c.properties.values().for_each(|p| errors(p, out));
            if let Some(i) = &c.items {
                errors(i, out);
            }
            if let Some(a) = &c.additional_properties {
                errors(a, out);
            }
        }
        let mut errs = Vec::new();
        errors(&compiled, &mut errs);
        assert!(errs.is_empty(), "{kind}: CEL compilation errors: {errs:?}");
        for rule in &all {
            let warnings: Vec<_> = analyze_rule(rule, &compiled, ScopeContext::CrdValidation)
                .into_iter()
                .filter(|w| matches!(w.kind, WarningKind::WrongScope | WarningKind::CostExceeded))
                .collect();
            assert!(warnings.is_empty(), "{kind}: rule {rule:?}: {warnings:?}");
        }
    }
    assert!(
        total >= 9,
        "expected the one-of, credential, TLS, erase and immutability rules"
    );
}

/// `self == oldSelf` on the ConnectorRun spec costs in proportion to the spec's
/// size: every list and string under it must be bounded so the estimated cost
/// is bounded on a real API server.
#[test]
fn immutable_spec_is_bounded() {
    fn check(path: &str, node: &Value, errors: &mut Vec<String>) {
        match node["type"].as_str() {
            Some("string") if node.get("maxLength").is_none() && node.get("enum").is_none() => {
                errors.push(format!("{path}: string without maxLength"))
            }
            Some("array") if node.get("maxItems").is_none() => {
                errors.push(format!("{path}: array without maxItems"))
            }
            _ => {}
        }
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                check(&format!("{path}.{k}"), v, errors);
            }
        }
        if let Some(items) = node.get("items") {
            check(&format!("{path}[]"), items, errors);
        }
    }
    let mut errors = Vec::new();
    check(
        "spec",
        &schema_of("ConnectorRun")["properties"]["spec"],
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");
}

/// No field anywhere in the API can hold a secret value: credentials are only
/// ever referenced.
#[test]
fn no_field_takes_a_secret_value() {
    const SECRETISH: [&str; 12] = [
        "password",
        "secret",
        "token",
        "accesskey",
        "secretaccesskey",
        "accountkey",
        "sastoken",
        "privatekey",
        "passphrase",
        "clientsecret",
        "kek",
        "apikey",
    ];
    fn walk(path: &str, node: &Value, hits: &mut Vec<String>) {
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (name, child) in props {
                let lower = name.to_lowercase();
                if SECRETISH.contains(&lower.as_str()) {
                    hits.push(format!("{path}.{name}"));
                }
                walk(&format!("{path}.{name}"), child, hits);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(child) = node.get(key).filter(|v| v.is_object()) {
                walk(path, child, hits);
            }
        }
    }
    for kind in ["Connector", "ConnectorRun"] {
        let mut hits = Vec::new();
        walk(kind, &schema_of(kind), &mut hits);
        assert!(
            hits.is_empty(),
            "fields that could carry a secret value: {hits:?}"
        );
    }
}

/// Every field a user writes has a description (what `kubectl explain` shows).
#[test]
fn every_spec_field_is_documented() {
    fn walk(path: &str, node: &Value, missing: &mut Vec<String>) {
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (name, child) in props {
                let p = format!("{path}.{name}");
                if child
                    .get("description")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    missing.push(p.clone());
                }
                // Kubernetes' own types (affinity, tolerations, resources) are documented upstream.
                if !["affinity", "tolerations", "resources"].contains(&name.as_str()) {
                    walk(&p, child, missing);
                }
            }
        }
        if let Some(items) = node.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    for kind in ["Connector", "ConnectorRun"] {
        let schema = schema_of(kind);
        let mut missing = Vec::new();
        walk("spec", &schema["properties"]["spec"], &mut missing);
        walk("status", &schema["properties"]["status"], &mut missing);
        assert!(
            missing.is_empty(),
            "{kind}: undocumented fields: {missing:?}"
        );
    }
}
