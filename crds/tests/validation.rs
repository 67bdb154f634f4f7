//! `kubectl apply` must reject bad specs before the operator sees them: each case
//! here is checked against the generated schema and its CEL rules.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::path::{Path, PathBuf};

use ferry_crds::{Connector, ConnectorRun};
use serde_json::{Value, json};
use support::{connector, run, validate, yaml_documents};

/// Sets `path` (dot separated, under the object) to `value`; `Value::Null` removes it.
fn with(mut obj: Value, path: &str, value: Value) -> Value {
    let parts: Vec<&str> = path.split('.').collect();
    let (last, parents) = parts.split_last().unwrap();
    let mut node = &mut obj;
    for p in parents {
        node = node
            .as_object_mut()
            .unwrap()
            .entry(p.to_string())
            .or_insert(json!({}));
    }
    if value.is_null() {
        node.as_object_mut().unwrap().remove(*last);
    } else {
        node[*last] = value;
    }
    obj
}

fn assert_rejected(obj: &Value, old: Option<&Value>, needle: &str) {
    let errors = validate(obj, old);
    assert!(
        !errors.is_empty(),
        "accepted but should be rejected ({needle}):\n{obj:#}"
    );
    assert!(
        errors.iter().any(|e| e.contains(needle)),
        "rejected, but not for {needle:?}: {errors:?}"
    );
}

fn assert_accepted(obj: &Value, old: Option<&Value>) {
    let errors = validate(obj, old);
    assert!(errors.is_empty(), "rejected: {errors:?}\n{obj:#}");
}

#[test]
fn a_valid_connector_and_run_are_accepted() {
    assert_accepted(&connector(), None);
    assert_accepted(&run(), None);
    let erase = with(run(), "spec.mode", json!("erase"));
    assert_accepted(&with(erase, "spec.erase", json!({"keys": ["a.csv"]})), None);
}

#[test]
fn each_endpoint_needs_exactly_one_backend() {
    let two = with(connector(), "spec.source.local", json!({"path": "/data"}));
    assert_rejected(&two, None, "exactly one of s3, azureBlob, sftp or local");
    let none = with(connector(), "spec.destination", json!({}));
    assert_rejected(&none, None, "exactly one of s3, azureBlob, sftp or local");
    let local = with(
        connector(),
        "spec.destination",
        json!({"local": {"path": "/out"}}),
    );
    assert_accepted(&local, None);
}

#[test]
fn required_fields_are_required() {
    for path in [
        "spec.encryption",
        "spec.source",
        "spec.source.s3.bucket",
        "spec.source.s3.region",
        "spec.source.s3.credentials",
        "spec.destination.azureBlob.container",
        "spec.encryption.keyRef.secretRef",
    ] {
        assert_rejected(&with(connector(), path, Value::Null), None, "required");
    }
    assert_rejected(
        &with(run(), "spec.connectorRef", Value::Null),
        None,
        "required",
    );
}

#[test]
fn enums_are_enforced() {
    for (path, value) in [
        ("spec.syncMode", json!("sometimes")),
        ("spec.concurrencyPolicy", json!("forbid")),
        ("spec.compliance.dataResidency", json!("eu-only")),
        (
            "spec.compliance.allowedSensitivity",
            json!(["pii", "secret"]),
        ),
        (
            "spec.streams",
            json!([{"name": "s", "match": "**", "sensitivity": ["gdpr"]}]),
        ),
    ] {
        assert_rejected(&with(connector(), path, value), None, "is not one of");
    }
    assert_rejected(
        &with(run(), "spec.mode", json!("delete")),
        None,
        "is not one of",
    );
}

#[test]
fn numbers_are_bounded() {
    for (path, value) in [
        ("spec.run.backoffLimit", json!(11)),
        ("spec.run.backoffLimit", json!(-1)),
        ("spec.run.activeDeadlineSeconds", json!(0)),
        ("spec.successfulRunsHistoryLimit", json!(101)),
        ("spec.failedRunsHistoryLimit", json!(-1)),
        ("spec.startingDeadlineSeconds", json!(0)),
    ] {
        let errors = validate(&with(connector(), path, value.clone()), None);
        assert!(!errors.is_empty(), "{path} = {value} accepted");
    }
    let sftp = json!({"sftp": {"host": "h", "port": 70000, "path": "/", "region": "r",
        "credentials": {"secretRef": {"name": "s"}}, "hostKey": {"fingerprint": format!("SHA256:{}", "A".repeat(43))}}});
    assert!(
        !validate(&with(connector(), "spec.source", sftp), None).is_empty(),
        "port 70000"
    );
}

#[test]
fn credentials_are_one_of_and_only_references() {
    let both = with(
        connector(),
        "spec.source.s3.credentials.webIdentity",
        json!({"roleArn": "arn:aws:iam::123456789012:role/r"}),
    );
    assert_rejected(
        &both,
        None,
        "exactly one of secretRef, vault, awsSecretsManager or webIdentity",
    );
    let neither = with(connector(), "spec.source.s3.credentials", json!({}));
    assert_rejected(
        &neither,
        None,
        "exactly one of secretRef, vault, awsSecretsManager or webIdentity",
    );
    let az_both = with(
        connector(),
        "spec.destination.azureBlob.credentials.workloadIdentity",
        json!({"clientId": "c", "tenantId": "t"}),
    );
    assert_rejected(
        &az_both,
        None,
        "exactly one of secretRef, vault, awsSecretsManager or workloadIdentity",
    );
    // A secret in the platform's Vault instead of a Secret: alone, and with a
    // path of plain segments only.
    let vault = json!({"path": "acme/s3-reader", "fields": {"accessKeyId": "aws_key_id"}});
    let s3_vault = with(
        connector(),
        "spec.source.s3.credentials",
        json!({"vault": vault}),
    );
    assert_accepted(&s3_vault, None);
    let az_vault = with(
        connector(),
        "spec.destination.azureBlob.credentials",
        json!({"vault": vault}),
    );
    assert_accepted(&az_vault, None);
    let vault_and_secret = with(
        connector(),
        "spec.source.s3.credentials.vault",
        vault.clone(),
    );
    assert_rejected(
        &vault_and_secret,
        None,
        "exactly one of secretRef, vault, awsSecretsManager or webIdentity",
    );
    for bad in ["../other-tenant/key", "/abs", "a//b", ""] {
        let path = with(
            connector(),
            "spec.source.s3.credentials",
            json!({"vault": {"path": bad}}),
        );
        assert!(!validate(&path, None).is_empty(), "vault path {bad:?}");
    }
    // A secret value written inline is an unknown field: strict field validation
    // (kubectl apply's default) rejects it, and it could never reach the operator.
    for (path, value) in [
        (
            "spec.source.s3.credentials.secretAccessKey",
            json!("AKIA-CANARY"),
        ),
        (
            "spec.destination.azureBlob.credentials.accountKey",
            json!("CANARY"),
        ),
        ("spec.encryption.keyRef.value", json!("CANARY")),
    ] {
        assert_rejected(
            &with(connector(), path, value),
            None,
            "Additional properties",
        );
    }
}

#[test]
fn sftp_host_key_is_mandatory_and_one_of() {
    let base = json!({"host": "h", "path": "/in", "region": "eu-west-1", "credentials": {"secretRef": {"name": "s"}}});
    let no_key = with(connector(), "spec.source", json!({"sftp": base.clone()}));
    assert_rejected(&no_key, None, "hostKey");
    let mut both = base.clone();
    both["hostKey"] =
        json!({"secretRef": {"name": "k"}, "fingerprint": format!("SHA256:{}", "A".repeat(43))});
    assert_rejected(
        &with(connector(), "spec.source", json!({"sftp": both})),
        None,
        "exactly one of secretRef or fingerprint",
    );
    let mut bad_fp = base.clone();
    bad_fp["hostKey"] = json!({"fingerprint": "MD5:aa:bb"});
    assert!(
        !validate(
            &with(connector(), "spec.source", json!({"sftp": bad_fp})),
            None
        )
        .is_empty()
    );
    let mut ok = base;
    ok["hostKey"] = json!({"fingerprint": format!("SHA256:{}", "A".repeat(43))});
    assert_accepted(&with(connector(), "spec.source", json!({"sftp": ok})), None);
}

#[test]
fn plain_http_needs_the_loud_opt_out() {
    let http = with(
        connector(),
        "spec.source.s3.endpoint",
        json!("http://127.0.0.1:9000"),
    );
    assert_rejected(&http, None, "endpoint must use https://");
    let opted = with(
        http,
        "spec.source.s3.insecurePlainHttpOnLoopback",
        json!(true),
    );
    assert_accepted(&opted, None);
    let https = with(
        connector(),
        "spec.destination.azureBlob.endpoint",
        json!("https://blob.example"),
    );
    assert_accepted(&https, None);
    let ftp = with(
        connector(),
        "spec.destination.azureBlob.endpoint",
        json!("ftp://blob.example"),
    );
    assert_rejected(&ftp, None, "endpoint must use https://");
}

#[test]
fn schedule_and_time_zone_rules() {
    assert_rejected(
        &with(connector(), "spec.schedule", json!("")),
        None,
        "schedule must not be empty",
    );
    let tz_only = with(
        with(connector(), "spec.schedule", Value::Null),
        "spec.timeZone",
        json!("UTC"),
    );
    assert_rejected(&tz_only, None, "timeZone needs a schedule");
}

#[test]
fn streams_are_a_list_map_with_unique_names() {
    let bad_name = with(
        connector(),
        "spec.streams",
        json!([{"name": "Bad Name", "match": "**"}]),
    );
    assert!(!validate(&bad_name, None).is_empty());
    let too_many_tags = with(
        connector(),
        "spec.streams",
        json!([{"name": "s", "match": "**", "sensitivity": ["pii", "pci", "phi", "pii"]}]),
    );
    assert!(!validate(&too_many_tags, None).is_empty());
}

#[test]
fn erase_is_required_exactly_in_erase_mode() {
    let erase_no_keys = with(run(), "spec.mode", json!("erase"));
    assert_rejected(&erase_no_keys, None, "erase (with at least one key)");
    let sync_with_erase = with(run(), "spec.erase", json!({"keys": ["a"]}));
    assert_rejected(&sync_with_erase, None, "only allowed then");
    let empty_keys = with(
        with(run(), "spec.mode", json!("erase")),
        "spec.erase",
        json!({"keys": []}),
    );
    assert!(!validate(&empty_keys, None).is_empty());
}

#[test]
fn a_run_spec_is_immutable() {
    let old = run();
    assert_accepted(&old, Some(&old));
    let retargeted = with(run(), "spec.connectorRef.name", json!("other"));
    assert_rejected(&retargeted, Some(&old), "connectorRef is immutable");
    let remoded = with(run(), "spec.mode", json!("plan"));
    assert_rejected(&remoded, Some(&old), "spec of a ConnectorRun is immutable");
}

fn examples() -> Vec<(PathBuf, Value)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples"),
        &mut files,
    );
    files.sort();
    files
        .into_iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            yaml_documents(&text)
                .into_iter()
                .map(move |d| (f.clone(), d))
        })
        .collect()
}

/// Every example is accepted by the schema and CEL rules and survives a serde
/// round trip through the Rust types unchanged (no field silently dropped).
#[test]
fn every_example_is_valid() {
    let docs = examples();
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for (file, doc) in &docs {
        let kind = doc["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no kind", file.display()));
        *kinds.entry(kind.to_string()).or_default() += 1;
        match kind {
            "Connector" => {
                assert_accepted(doc, None);
                let typed: Connector = serde_json::from_value(doc.clone())
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                let back = serde_json::to_value(&typed).unwrap();
                assert_subset(doc, &back, &file.display().to_string());
            }
            "ConnectorRun" => {
                assert_accepted(doc, None);
                let typed: ConnectorRun = serde_json::from_value(doc.clone()).unwrap();
                let back = serde_json::to_value(&typed).unwrap();
                assert_subset(doc, &back, &file.display().to_string());
            }
            "Secret" => {
                assert_eq!(doc["apiVersion"], "v1");
                let data = doc["stringData"]
                    .as_object()
                    .expect("example Secrets use stringData");
                for (k, v) in data {
                    assert!(
                        v.as_str().unwrap().contains("REPLACE_ME"),
                        "{}: Secret key {k} must hold a placeholder, never a real value",
                        file.display()
                    );
                }
            }
            other => panic!("{}: unexpected kind {other}", file.display()),
        }
    }
    assert!(
        kinds["Connector"] >= 4,
        "a Connector per backend pair: {kinds:?}"
    );
    assert!(
        kinds["ConnectorRun"] >= 2,
        "a manual run and an erase run: {kinds:?}"
    );
    assert!(kinds["Secret"] >= 4, "{kinds:?}");
}

/// Every value of `written` is in `read` (which may add defaults).
fn assert_subset(written: &Value, read: &Value, at: &str) {
    match (written, read) {
        (Value::Object(w), Value::Object(r)) => {
            for (k, v) in w {
                let other = r
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}: field {k} lost in the round trip"));
                assert_subset(v, other, &format!("{at}.{k}"));
            }
        }
        (Value::Array(w), Value::Array(r)) => {
            assert_eq!(w.len(), r.len(), "{at}");
            for (i, (a, b)) in w.iter().zip(r).enumerate() {
                assert_subset(a, b, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(written, read, "{at}"),
    }
}

/// Every backend appears on each side in the examples.
#[test]
fn examples_cover_every_backend_pair_asked_for() {
    let pairs: Vec<(String, String)> = examples()
        .into_iter()
        .filter(|(_, d)| d["kind"] == "Connector")
        .map(|(_, d)| {
            let key = |e: &Value| e.as_object().unwrap().keys().next().unwrap().clone();
            (key(&d["spec"]["source"]), key(&d["spec"]["destination"]))
        })
        .collect();
    for pair in [
        ("s3", "azureBlob"),
        ("sftp", "s3"),
        ("azureBlob", "sftp"),
        ("local", "local"),
    ] {
        assert!(
            pairs.contains(&(pair.0.to_string(), pair.1.to_string())),
            "no example for {pair:?}: {pairs:?}"
        );
    }
}

#[test]
fn the_kek_is_a_secret_or_a_kms_key_and_not_both() {
    let transit = json!({"vaultTransit": {"key": "acme"}});
    let kms = with(connector(), "spec.encryption", json!({"kms": transit}));
    assert_accepted(&kms, None);
    let both = with(connector(), "spec.encryption.kms", transit);
    assert_rejected(&both, None, "exactly one of keyRef or kms");
    let neither = with(connector(), "spec.encryption", json!({}));
    assert_rejected(&neither, None, "exactly one of keyRef or kms");
    for key in ["", "../x", "a:b", "a/b"] {
        let bad = with(
            connector(),
            "spec.encryption",
            json!({"kms": {"vaultTransit": {"key": key}}}),
        );
        assert!(!validate(&bad, None).is_empty(), "key {key:?} accepted");
    }
    let no_key = with(
        connector(),
        "spec.encryption",
        json!({"kms": {"vaultTransit": {"mount": "transit"}}}),
    );
    assert!(
        !validate(&no_key, None).is_empty(),
        "a Transit key without a name"
    );
}

#[test]
fn a_secrets_manager_secret_and_an_aws_kms_key_are_references_with_a_role() {
    let role = json!({"roleArn": "arn:aws:iam::123456789012:role/ferry-acme"});
    let sm = json!({"awsSecretsManager": {"secretId": "acme/s3-reader", "region": "eu-west-1", "webIdentity": role}});
    assert_accepted(
        &with(connector(), "spec.source.s3.credentials", sm.clone()),
        None,
    );
    assert_accepted(
        &with(connector(), "spec.destination.azureBlob.credentials", sm),
        None,
    );
    let both = with(
        connector(),
        "spec.source.s3.credentials.awsSecretsManager",
        json!({"secretId": "acme/s3-reader", "region": "eu-west-1", "webIdentity": role}),
    );
    assert_rejected(
        &both,
        None,
        "exactly one of secretRef, vault, awsSecretsManager or webIdentity",
    );
    let no_role = with(
        connector(),
        "spec.source.s3.credentials",
        json!({"awsSecretsManager": {"secretId": "acme/s3-reader", "region": "eu-west-1"}}),
    );
    assert!(
        !validate(&no_role, None).is_empty(),
        "a secret read without a role"
    );
    let kms = json!({"kms": {"awsKms": {"keyId": "alias/acme-ferry", "region": "eu-west-1", "webIdentity": role}}});
    assert_accepted(&with(connector(), "spec.encryption", kms), None);
    let two = json!({"kms": {"awsKms": {"keyId": "k", "region": "eu-west-1", "webIdentity": role},
                             "vaultTransit": {"key": "acme"}}});
    assert_rejected(
        &with(connector(), "spec.encryption", two),
        None,
        "exactly one of vaultTransit or awsKms",
    );
    for key in ["arn:aws:kms:eu-west-1:123456789012:key/k", "a:b", ""] {
        let bad =
            json!({"kms": {"awsKms": {"keyId": key, "region": "eu-west-1", "webIdentity": role}}});
        assert!(
            !validate(&with(connector(), "spec.encryption", bad), None).is_empty(),
            "key id {key:?} accepted"
        );
    }
}

#[test]
fn sftp_credentials_are_a_secret_or_a_store_secret_and_one_only() {
    let sftp = |credentials: Value| {
        json!({"sftp": {"host": "h", "port": 22, "path": "/", "region": "eu-west-1",
            "credentials": credentials, "hostKey": {"fingerprint": format!("SHA256:{}", "A".repeat(43))}}})
    };
    for ok in [
        json!({"secretRef": {"name": "s"}}),
        json!({"vault": {"path": "acme/sftp"}}),
        json!({"awsSecretsManager": {"secretId": "acme/sftp", "region": "eu-west-1",
               "webIdentity": {"roleArn": "arn:aws:iam::123456789012:role/r"}}}),
    ] {
        assert_accepted(&with(connector(), "spec.source", sftp(ok)), None);
    }
    for bad in [
        json!({}),
        json!({"secretRef": {"name": "s"}, "vault": {"path": "acme/sftp"}}),
    ] {
        assert_rejected(
            &with(connector(), "spec.source", sftp(bad)),
            None,
            "exactly one of secretRef, vault or awsSecretsManager",
        );
    }
}
