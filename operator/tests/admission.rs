//! The chart's ValidatingAdmissionPolicy against the objects the operator's
//! builders make, and against what an operator that has been taken over would
//! try. The policy is rendered by `helm template` and evaluated the way the API
//! server does, with Google's CEL implementation (tests/chart/admission.py); the
//! test bootstrap's Python and helm must be there (`make test-rust` sources its
//! environment): without them the test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use ferry_crds::{ConnectorRun, ConnectorSpec};
use ferry_operator::config::Config;
use ferry_operator::run::build::{Part, RunInput, RunObjects, build};
use serde_json::{Value, json};
use support::*;

const OPERATOR: &str = "system:serviceaccount:ferry-system:ferry-operator";

fn spec(yaml: &str) -> ConnectorSpec {
    connector(yaml).spec
}

fn run(name: &str) -> ConnectorRun {
    let mut r = run_of(name, "sales");
    r.metadata.uid = Some("0b6f7c2e-uid".into());
    r
}

fn objects(run_name: &str, spec: &ConnectorSpec) -> Vec<Value> {
    objects_of(run_name, spec, Part::Whole)
}

fn objects_of(run_name: &str, spec: &ConnectorSpec, part: Part) -> Vec<Value> {
    let RunObjects {
        service_account,
        role,
        role_binding,
        network_policy,
        pod,
    } = build(RunInput {
        manifest_anchor: None,
        run: &run(run_name),
        spec,
        attempt: 1,
        part,
        tenant_region: Some("eu-west-1"),
        config: &Config::default(),
    })
    .expect("builds");
    vec![
        serde_json::to_value(service_account).unwrap(),
        serde_json::to_value(role).unwrap(),
        serde_json::to_value(role_binding).unwrap(),
        serde_json::to_value(network_policy).unwrap(),
        serde_json::to_value(pod).unwrap(),
    ]
}

fn create(object: &Value) -> Value {
    json!({"operation": "CREATE", "namespace": NS, "username": OPERATOR, "object": object})
}

fn delete(object: &Value) -> Value {
    json!({"operation": "DELETE", "namespace": NS, "username": OPERATOR, "oldObject": object})
}

/// Each request's verdict: `Ok(())` when admitted, the messages when denied.
fn admit(requests: &[Value]) -> Vec<Result<(), Vec<String>>> {
    admit_with(&[], requests)
}

/// [`admit`], the chart rendered with these `--set` values too.
fn admit_with(sets: &[&str], requests: &[Value]) -> Vec<Result<(), Vec<String>>> {
    let python = std::env::var("FERRY_PYTHON")
        .expect("FERRY_PYTHON is not set: source the test bootstrap's environment");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/chart/admission.py");
    // The chart's runner image is the operator's default configuration's.
    let mut child = Command::new(python)
        .arg(script)
        .args(["--set", "runner.image.tag=latest"])
        .args(sets.iter().flat_map(|s| ["--set", s]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs the CEL evaluator");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(requests).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "admission.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdicts.len(), requests.len());
    verdicts
        .into_iter()
        .map(|v| {
            if v["allowed"] == true {
                Ok(())
            } else {
                Err(serde_json::from_value(v["messages"].clone()).unwrap())
            }
        })
        .collect()
}

/// Denied, with a message that contains `words`.
fn assert_denied(request: Value, words: &str) {
    let verdict = admit(std::slice::from_ref(&request)).remove(0);
    match verdict {
        Ok(()) => panic!("admitted: {request:#}"),
        Err(messages) => assert!(
            messages.iter().any(|m| m.contains(words)),
            "denied, but not for {words:?}: {messages:?}"
        ),
    }
}

fn pod_of(objects: &[Value]) -> Value {
    objects[4].clone()
}

const WEB_IDENTITY: &str =
    "credentials: {webIdentity: {roleArn: 'arn:aws:iam::123456789012:role/reader'}}";

#[test]
fn every_object_a_run_needs_is_admitted_on_create_and_delete() {
    let specs = [
        spec(CONNECTOR),
        spec(&CONNECTOR.replace("credentials: {secretRef: {name: s3-reader}}", WEB_IDENTITY)),
        spec(&CONNECTOR.replace(
            "credentials: {secretRef: {name: bronze-writer}}",
            "credentials: {workloadIdentity: {clientId: c, tenantId: t}}",
        )),
    ];
    let mut requests = Vec::new();
    for s in &specs {
        for name in ["sales-29923860", &"a-very-long-run-name-".repeat(6)] {
            for o in objects(name, s) {
                requests.push(create(&o));
                requests.push(delete(&o));
            }
        }
    }
    for (request, verdict) in requests.iter().zip(admit(&requests)) {
        assert_eq!(verdict, Ok(()), "{request:#}");
    }
}

/// A run spread over shards: each shard's pod (`<run>-<attempt>-s<i>`) and
/// the last step's, short and long run names alike.
#[test]
fn the_pods_of_a_sharded_run_are_admitted() {
    let mut requests = Vec::new();
    for name in ["sales-29923860", &"a-very-long-run-name-".repeat(6)] {
        for part in [
            Part::Shard { index: 0, count: 3 },
            Part::Shard { index: 2, count: 3 },
            Part::Commit { count: 3 },
        ] {
            requests.push(create(&pod_of(&objects_of(name, &spec(CONNECTOR), part))));
        }
    }
    for (request, verdict) in requests.iter().zip(admit(&requests)) {
        assert_eq!(verdict, Ok(()), "{request:#}");
    }
    // A shard pod named after another shard is not a run's.
    let mut pod = pod_of(&objects_of(
        "sales-29923860",
        &spec(CONNECTOR),
        Part::Shard { index: 1, count: 3 },
    ));
    pod["metadata"]["name"] = json!("sales-29923860-1-s2");
    assert!(
        admit(&[create(&pod)])[0].is_err(),
        "a pod named after another shard was admitted"
    );
}

#[test]
fn a_tenants_own_requests_are_not_the_policys_concern() {
    // A pod of the tenant's own (its own ServiceAccount, none of Ferry's
    // labels): the operator's policy does not judge it (Pod Security does).
    let mut pod = pod_of(&objects("sales-29923860", &spec(CONNECTOR)));
    pod["spec"]["hostNetwork"] = json!(true);
    pod["spec"]["serviceAccountName"] = json!("app");
    pod["metadata"]["labels"] = json!({"app": "mine"});
    pod["metadata"]["ownerReferences"] = json!(null);
    let mut request = create(&pod);
    request["username"] = json!("alice@example.com");
    assert_eq!(admit(&[request]), vec![Ok(())]);
}

/// A tenant's editor (or a workload of the namespace) creating a pod that is a
/// run's in all but its creator: the run-identity policy refuses it (on the
/// real API server: tests/e2e/test_attacks.py).
#[test]
fn a_tenant_creating_a_runs_pod_is_refused() {
    let pod = pod_of(&objects("sales-29923860", &spec(CONNECTOR)));
    let mut request = create(&pod);
    request["username"] = json!("alice@example.com");
    let verdict = admit(&[request]).remove(0);
    assert!(
        matches!(&verdict, Err(m) if m.iter().any(|m| m.contains("only Ferry's operator creates a run's pods"))),
        "{verdict:?}"
    );
}

#[test]
fn hijacked_operator_runs_a_pod_with_its_own_image() {
    let mut pod = pod_of(&objects("sales-29923860", &spec(CONNECTOR)));
    pod["spec"]["containers"][0]["image"] = json!("evil.example.com/miner:latest");
    assert_denied(create(&pod), "with the runner image");
}

#[test]
fn hijacked_operator_mounts_the_host_filesystem() {
    let mut pod = pod_of(&objects("sales-29923860", &spec(CONNECTOR)));
    pod["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "host", "hostPath": {"path": "/"}}));
    assert_denied(create(&pod), "no hostPath");
}

#[test]
fn hijacked_operator_mounts_another_secret_into_a_pod() {
    let mut pod = pod_of(&objects("sales-29923860", &spec(CONNECTOR)));
    pod["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "s", "secret": {"secretName": "other-tenant-creds"}}));
    assert_denied(create(&pod), "no hostPath, Secret");
    let mut pod = pod_of(&objects("sales-29923860", &spec(CONNECTOR)));
    pod["spec"]["containers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .push(
            json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}),
        );
    assert_denied(create(&pod), "no environment taken from Secrets");
}

#[test]
fn hijacked_operator_runs_a_privileged_pod_in_the_hosts_namespaces() {
    for (field, value, words) in [
        ("hostNetwork", json!(true), "no host namespaces"),
        ("hostPID", json!(true), "no host namespaces"),
        (
            "nodeName",
            json!("control-plane-1"),
            "placed by the scheduler",
        ),
    ] {
        let mut pod = pod_of(&objects("sales-29923860", &spec(CONNECTOR)));
        pod["spec"][field] = value;
        assert_denied(create(&pod), words);
    }
    let mut pod = pod_of(&objects("sales-29923860", &spec(CONNECTOR)));
    pod["spec"]["containers"][0]["securityContext"]["privileged"] = json!(true);
    assert_denied(create(&pod), "restricted");
    let mut pod = pod_of(&objects("sales-29923860", &spec(CONNECTOR)));
    pod["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = json!(["SYS_ADMIN"]);
    assert_denied(create(&pod), "restricted");
}

/// The rest of what a pod may ask of the node, the scheduler and the runtime
/// (the tenant-boundary review found each admitted).
#[test]
fn hijacked_operator_runs_a_pod_with_another_command_or_placement() {
    type Change = (&'static str, fn(&mut Value));
    let changes: [Change; 11] = [
        ("another command", |p| {
            p["spec"]["containers"][0]["command"] = json!(["/bin/sh", "-c", "cat /proc/1/environ"])
        }),
        ("other arguments", |p| {
            p["spec"]["containers"][0]["args"] = json!(["decrypt", "--out", "/tmp"])
        }),
        ("a priority class", |p| {
            p["spec"]["priorityClassName"] = json!("system-node-critical")
        }),
        ("a runtime class", |p| {
            p["spec"]["runtimeClassName"] = json!("unsandboxed")
        }),
        ("an unconfined AppArmor profile", |p| {
            p["spec"]["containers"][0]["securityContext"]["appArmorProfile"] =
                json!({"type": "Unconfined"})
        }),
        ("SELinux options", |p| {
            p["spec"]["securityContext"]["seLinuxOptions"] = json!({"type": "spc_t"})
        }),
        ("a toleration of every taint", |p| {
            p["spec"]["tolerations"] = json!([{"operator": "Exists"}])
        }),
        ("a control-plane node", |p| {
            p["spec"]["nodeSelector"] = json!({"node-role.kubernetes.io/control-plane": ""})
        }),
        ("a control-plane node by node affinity", |p| {
            p["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}]}}})
        }),
        ("a node by name (node affinity by field)", |p| {
            p["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchFields": [
                    {"key": "metadata.name", "operator": "In", "values": ["cp-1"]}]}]}}})
        }),
        ("a preferred control-plane node", |p| {
            p["spec"]["affinity"] = json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "preference": {"matchExpressions": [
                    {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}}]}})
        }),
    ];
    for (what, change) in changes {
        let mut pod = pod_of(&objects("sales-29923860", &spec(CONNECTOR)));
        change(&mut pod);
        let verdict = admit(&[create(&pod)]).remove(0);
        assert!(
            matches!(&verdict, Err(m) if m.iter().any(|m| m.contains("runs the runner's command"))),
            "{what}: {verdict:?}"
        );
    }
    // Control: what the API server adds itself (DefaultTolerationSeconds) and
    // a node label the platform allows.
    let mut pod = pod_of(&objects("sales-29923860", &spec(CONNECTOR)));
    pod["spec"]["tolerations"] = json!([
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]);
    pod["spec"]["nodeSelector"] = json!({"kubernetes.io/arch": "arm64"});
    pod["spec"]["affinity"] = json!({"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["eu-west-1a"]}]}]},
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": {"matchExpressions": [
            {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["m7g.large"]}]}}]}});
    assert_eq!(admit(&[create(&pod)]), vec![Ok(())]);
}

/// Attack: a hijacked operator adds a volume with a projected token of no
/// audience (the API server's own) beside the run's cloud tokens, mounted
/// where its code would find it. The API server's token is the one in
/// `kube-api-access` alone.
#[test]
fn hijacked_operator_projects_an_api_server_token_outside_the_api_access_volume() {
    let s = spec(&CONNECTOR.replace("credentials: {secretRef: {name: s3-reader}}", WEB_IDENTITY));
    let mut pod = pod_of(&objects("sales-29923860", &s));
    let volumes = pod["spec"]["volumes"].as_array_mut().unwrap();
    let aws = volumes
        .iter_mut()
        .find(|v| v["name"] == "aws-token")
        .unwrap();
    aws["projected"]["sources"][0]["serviceAccountToken"]
        .as_object_mut()
        .unwrap()
        .remove("audience");
    assert_denied(
        create(&pod),
        "the API server's token in kube-api-access alone",
    );
    // Control: the builders' pod, whose kube-api-access token has no audience.
    let pod = pod_of(&objects("sales-29923860", &s));
    assert_eq!(admit(&[create(&pod)]), vec![Ok(())]);
}

#[test]
fn hijacked_operator_runs_a_pod_as_another_service_account() {
    let mut pod = pod_of(&objects("sales-29923860", &spec(CONNECTOR)));
    pod["spec"]["serviceAccountName"] = json!("argocd-application-controller");
    assert_denied(create(&pod), "runs as the run's ServiceAccount");
}

#[test]
fn hijacked_operator_mints_a_token_for_the_api_server() {
    let s = spec(&CONNECTOR.replace("credentials: {secretRef: {name: s3-reader}}", WEB_IDENTITY));
    let mut pod = pod_of(&objects("sales-29923860", &s));
    let volumes = pod["spec"]["volumes"].as_array_mut().unwrap();
    let aws = volumes
        .iter_mut()
        .find(|v| v["name"] == "aws-token")
        .unwrap();
    aws["projected"]["sources"][0]["serviceAccountToken"]["audience"] =
        json!("https://kubernetes.default.svc");
    assert_denied(create(&pod), "with an allowed audience");
}

#[test]
fn hijacked_operator_grants_a_run_more_than_get_on_named_secrets() {
    let o = objects("sales-29923860", &spec(CONNECTOR));
    for rule in [
        json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"], "resourceNames": ["x"]}),
        json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}),
        json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"], "resourceNames": ["x"]}),
        json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"], "resourceNames": ["x"]}),
        json!({"apiGroups": ["ferry.dev"], "resources": ["connectorruns/status"], "verbs": ["patch"], "resourceNames": ["another-run"]}),
    ] {
        let mut role = o[1].clone();
        role["rules"].as_array_mut().unwrap().push(rule);
        assert_denied(create(&role), "grants only get on named Secrets");
    }
}

#[test]
fn hijacked_operator_binds_a_role_to_another_subject() {
    let o = objects("sales-29923860", &spec(CONNECTOR));
    let mut rb = o[2].clone();
    rb["subjects"][0]["name"] = json!("ferry-operator");
    rb["subjects"][0]["namespace"] = json!("ferry-system");
    assert_denied(
        create(&rb),
        "binds the run's Role to the run's ServiceAccount",
    );
    let mut rb = o[2].clone();
    rb["roleRef"] = json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"});
    assert_denied(create(&rb), "binds the run's Role");
}

#[test]
fn hijacked_operator_creates_objects_no_run_owns() {
    let o = objects("sales-29923860", &spec(CONNECTOR));
    for object in &o {
        let mut orphan = object.clone();
        orphan["metadata"]["ownerReferences"] = json!([]);
        assert_denied(create(&orphan), "is not controlled by a ConnectorRun");
        let mut unlabelled = object.clone();
        unlabelled["metadata"]["labels"] = json!({});
        assert_denied(create(&unlabelled), "lacks Ferry's labels");
    }
    let mut renamed = o[1].clone();
    renamed["metadata"]["name"] = json!("admin");
    assert_denied(create(&renamed), "is not named after its run");
}

#[test]
fn hijacked_operator_deletes_a_tenants_network_policy() {
    let theirs = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "default-deny", "namespace": NS},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    });
    assert_denied(delete(&theirs), "may only create or delete a run's objects");
}

/// The operator deletes a pod someone else made under an attempt's name,
/// claiming the run as its owner but without Ferry's labels (the control);
/// a hijacked operator still deletes no pod a run does not control, nor a
/// tenant's other objects claiming a run.
#[test]
fn the_operator_deletes_a_pod_that_only_claims_a_run_and_nothing_else() {
    let pod = pod_of(&objects("sales-29923860", &spec(CONNECTOR)));
    let mut impostor = pod.clone();
    impostor["metadata"]["labels"] = json!({"ferry.dev/run": "sales-29923860"});
    assert_eq!(admit(&[delete(&impostor)]), vec![Ok(())]);
    let mut theirs = pod.clone();
    theirs["metadata"]["ownerReferences"] = json!([]);
    theirs["metadata"]["labels"] = json!({"app": "billing"});
    assert_denied(delete(&theirs), "may only create or delete a run's objects");
    let o = objects("sales-29923860", &spec(CONNECTOR));
    let mut role = o[1].clone();
    role["metadata"]["labels"] = json!({});
    assert_denied(delete(&role), "may only create or delete a run's objects");
}

#[test]
fn hijacked_operator_changes_a_running_pod() {
    let pod = pod_of(&objects("sales-29923860", &spec(CONNECTOR)));
    let mut changed = pod.clone();
    changed["spec"]["containers"][0]["image"] = json!("evil.example.com/miner:latest");
    let request = json!({"operation": "UPDATE", "namespace": NS, "username": OPERATOR,
                         "object": changed, "oldObject": pod});
    assert_denied(request, "never updates a run's objects");
}

// Attribution (the chart's `ferry-operator-attribution` policy): the
// annotations the operator records as who asked for a run can only hold the
// name of the user the API server authenticated for the request.

const ALICE: &str = "alice@example.com";

fn as_user(operation: &str, user: &str, object: &Value, old: Option<&Value>) -> Value {
    json!({"operation": operation, "namespace": NS, "username": user,
           "object": object, "oldObject": old})
}

fn run_object(annotations: Value) -> Value {
    let mut r = serde_json::to_value(run("manual-1")).unwrap();
    r["metadata"]["annotations"] = annotations;
    r
}

fn connector_object(annotations: Value, bucket: &str) -> Value {
    let mut c = serde_json::to_value(connector(CONNECTOR)).unwrap();
    c["metadata"]["annotations"] = annotations;
    c["spec"]["source"]["s3"]["bucket"] = json!(bucket);
    c
}

#[test]
fn a_user_creating_a_run_in_someone_elses_name_is_refused() {
    let forged = run_object(json!({"ferry.dev/created-by": "bob@example.com"}));
    assert_denied(
        as_user("CREATE", ALICE, &forged, None),
        "may only name the user making this request",
    );
    // Their own name, or none (the mutating policy writes it where served).
    let verdicts = admit(&[
        as_user(
            "CREATE",
            ALICE,
            &run_object(json!({"ferry.dev/created-by": ALICE})),
            None,
        ),
        as_user("CREATE", ALICE, &run_object(json!({})), None),
        as_user(
            "CREATE",
            OPERATOR,
            &run_object(json!({"ferry.dev/created-by": OPERATOR})),
            None,
        ),
    ]);
    assert!(verdicts.iter().all(Result::is_ok), "{verdicts:?}");
}

#[test]
fn a_user_rewriting_who_created_a_run_is_refused() {
    let created = run_object(json!({"ferry.dev/created-by": "bob@example.com"}));
    for changed in [
        run_object(json!({"ferry.dev/created-by": ALICE})),
        run_object(json!({})),
    ] {
        assert_denied(
            as_user("UPDATE", ALICE, &changed, Some(&created)),
            "records an earlier request and cannot be changed",
        );
    }
    // Other changes leave it as it was: admitted.
    let labelled = run_object(json!({"ferry.dev/created-by": "bob@example.com", "note": "x"}));
    assert!(admit(&[as_user("UPDATE", ALICE, &labelled, Some(&created))])[0].is_ok());
}

#[test]
fn a_user_writing_the_operators_run_record_is_refused() {
    // A record written at creation would be trusted as the operator's: its
    // pinned spec, its phase, who it says asked for the run.
    let record = json!({"status": {"phase": "Succeeded",
        "attribution": {"requestedBy": "bob@example.com"}}})
    .to_string();
    let seeded = run_object(json!({"ferry.dev/run-record": record}));
    assert_denied(
        as_user("CREATE", ALICE, &seeded, None),
        "only the operator writes it",
    );
    let plain = run_object(json!({}));
    assert_denied(
        as_user("UPDATE", ALICE, &seeded, Some(&plain)),
        "only the operator writes it",
    );
    assert!(admit(&[as_user("UPDATE", OPERATOR, &seeded, Some(&plain))])[0].is_ok());
}

#[test]
fn a_user_changing_a_connector_in_someone_elses_name_is_refused() {
    let bob = json!({"ferry.dev/spec-changed-by": "bob@example.com"});
    let before = connector_object(bob.clone(), "raw");
    // Alice changes the spec and leaves Bob's name: the next scheduled runs
    // would be put down to Bob.
    assert_denied(
        as_user(
            "UPDATE",
            ALICE,
            &connector_object(bob.clone(), "other"),
            Some(&before),
        ),
        "may only name the user making this request",
    );
    assert_denied(
        as_user("CREATE", ALICE, &connector_object(bob.clone(), "raw"), None),
        "may only name the user making this request",
    );
    // Without a spec change, the name stays; with one, it is hers or none.
    assert_denied(
        as_user(
            "UPDATE",
            ALICE,
            &connector_object(json!({"ferry.dev/spec-changed-by": ALICE}), "raw"),
            Some(&before),
        ),
        "cannot be changed",
    );
    let verdicts = admit(&[
        as_user(
            "UPDATE",
            ALICE,
            &connector_object(bob, "raw"),
            Some(&before),
        ),
        as_user(
            "UPDATE",
            ALICE,
            &connector_object(json!({"ferry.dev/spec-changed-by": ALICE}), "other"),
            Some(&before),
        ),
        as_user(
            "UPDATE",
            ALICE,
            &connector_object(json!({}), "other"),
            Some(&before),
        ),
    ]);
    assert!(verdicts.iter().all(Result::is_ok), "{verdicts:?}");
}

#[test]
fn a_user_stripping_the_audit_finalizer_to_delete_a_run_unseen_is_refused() {
    let mut held = run_object(json!({}));
    held["metadata"]["finalizers"] = json!(["ferry.dev/audit-trail", "example.com/other"]);
    let mut stripped = held.clone();
    stripped["metadata"]["finalizers"] = json!(["example.com/other"]);
    assert_denied(
        as_user("UPDATE", ALICE, &stripped, Some(&held)),
        "only the operator removes it",
    );
    let verdicts = admit(&[
        // The operator releases it once the deletion is audited.
        as_user("UPDATE", OPERATOR, &stripped, Some(&held)),
        // Others' finalizers are others' business.
        as_user(
            "UPDATE",
            ALICE,
            &{
                let mut v = held.clone();
                v["metadata"]["finalizers"] = json!(["ferry.dev/audit-trail"]);
                v
            },
            Some(&held),
        ),
    ]);
    assert!(verdicts.iter().all(Result::is_ok), "{verdicts:?}");
}

/// A run that reads its credentials from Vault mounts a token for Vault's
/// audience: admitted when the chart configures Vault, refused otherwise (a
/// tenant cannot have Ferry mint tokens for an audience nobody allowed).
#[test]
fn a_token_for_vault_is_admitted_only_where_vault_is_configured() {
    let s = spec(&CONNECTOR.replace(
        "credentials: {secretRef: {name: s3-reader}}",
        "credentials: {vault: {path: acme/s3-reader}}",
    ));
    let config = Config {
        vault: Some(ferry_operator::config::VaultConfig {
            addr: "https://vault.example:8200".into(),
            auth_mount: "jwt".into(),
            audience: "vault".into(),
            role: "ferry-{namespace}".into(),
            in_cluster: None,
        }),
        ..Config::default()
    };
    let RunObjects { pod, .. } = build(RunInput {
        manifest_anchor: None,
        run: &run("sales-29923860"),
        spec: &s,
        attempt: 1,
        part: Part::Whole,
        tenant_region: Some("eu-west-1"),
        config: &config,
    })
    .expect("builds");
    let request = create(&serde_json::to_value(pod).unwrap());
    let verdicts = admit_with(
        &["vault.address=https://vault.example:8200"],
        std::slice::from_ref(&request),
    );
    assert!(verdicts[0].is_ok(), "{verdicts:?}");
    assert_denied(request, "projected tokens (with an allowed audience)");
}
