//! Fixtures for reconcile tests against the in-process fake API
//! (`kube-fake-client`): a tenant namespace, its Secrets, Connectors and runs
//! built from YAML, and a context whose clock the test moves.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use ferry_crds::{Connector, ConnectorRun};
use ferry_operator::audit::AuditLog;
use ferry_operator::config::Config;
use ferry_operator::context::Context;
use ferry_operator::metrics::Metrics;
use ferry_operator::run_cache::{RunCache, RunFeed};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher};
use kube::{Client, ResourceExt};
use kube_fake_client::ClientBuilder;

pub const NS: &str = "acme";

/// Secret values planted in every fixture: none may appear anywhere visible.
pub const CANARIES: &[&str] = &[
    "AKIACANARYACCESSKEY1",
    "canary/secret+access/key0123456789abcdef",
    "Q2FuYXJ5QWNjb3VudEtleQ==canary-account-key",
    "canary-kek-0123456789abcdef0123456",
    "-----BEGIN OPENSSH PRIVATE KEY-----canary",
    "canary-passphrase",
];

pub const CONNECTOR: &str = r#"
apiVersion: ferry.dev/v1alpha1
kind: Connector
metadata: {name: sales, namespace: acme}
spec:
  source: {s3: {bucket: acme-exports, prefix: daily/, region: eu-west-1, credentials: {secretRef: {name: s3-reader}}}}
  destination: {azureBlob: {account: acmebronze, container: bronze, region: eu-west-1, credentials: {secretRef: {name: bronze-writer}}}}
  encryption: {keyRef: {secretRef: {name: acme-kek}}}
"#;

pub fn connector(yaml: &str) -> Connector {
    serde_saphyr::from_str(yaml).expect("connector fixture parses")
}

pub fn run_of(name: &str, connector: &str) -> ConnectorRun {
    serde_saphyr::from_str(&format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: ConnectorRun\nmetadata: {{name: {name}, namespace: acme}}\nspec: {{connectorRef: {{name: {connector}}}}}\n"
    ))
    .expect("run fixture parses")
}

fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    s.metadata.namespace = Some(NS.into());
    s.metadata.labels = Some(
        [(
            ferry_crds::SECRET_OPT_IN_LABEL.to_string(),
            ferry_crds::SECRET_OPT_IN_VALUE.to_string(),
        )]
        .into(),
    );
    s.string_data = None;
    s.data = Some(
        data.iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    k8s_openapi::ByteString(v.as_bytes().to_vec()),
                )
            })
            .collect(),
    );
    s
}

pub fn secrets() -> Vec<Secret> {
    vec![
        secret(
            "s3-reader",
            &[
                ("accessKeyId", CANARIES[0]),
                ("secretAccessKey", CANARIES[1]),
            ],
        ),
        secret("bronze-writer", &[("accountKey", CANARIES[2])]),
        secret("acme-kek", &[("kek", CANARIES[3])]),
        // Not opted in: no ferry.dev/usable label.
        {
            let mut s = secret("team-db", &[("accountKey", CANARIES[2])]);
            s.metadata.labels = None;
            s
        },
        // The namespace's ServiceAccount token: never usable, label or not.
        {
            let mut s = secret(
                "default-token",
                &[("accountKey", CANARIES[2]), ("token", CANARIES[0])],
            );
            s.type_ = Some("kubernetes.io/service-account-token".into());
            s
        },
        secret(
            "sftp-login",
            &[
                ("username", "ferry"),
                ("privateKey", CANARIES[4]),
                ("passphrase", CANARIES[5]),
            ],
        ),
    ]
}

pub fn namespace(region: Option<&str>, cap: Option<&str>) -> Namespace {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(NS.into());
    if let Some(r) = region {
        ns.metadata.labels = Some([(ferry_crds::REGION_LABEL.to_string(), r.to_string())].into());
    }
    if let Some(c) = cap {
        ns.metadata.annotations = Some(
            [(
                ferry_crds::ALLOWED_SENSITIVITY_ANNOTATION.to_string(),
                c.to_string(),
            )]
            .into(),
        );
    }
    ns
}

/// A fake API with the tenant, its Secrets, and a controllable clock.
pub struct World {
    pub client: Client,
    pub ctx: Arc<Context>,
    pub audit: Arc<Mutex<Vec<u8>>>,
    pub now: Arc<Mutex<Timestamp>>,
    /// Fills the operator's cache of runs, as its watch of them would.
    pub runs_feed: Mutex<RunFeed>,
}

/// The `kubernetes` Service's EndpointSlice, as the API server keeps it.
pub fn api_server_slice() -> k8s_openapi::api::discovery::v1::EndpointSlice {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["192.0.2.10"]}],
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
    }))
    .expect("an EndpointSlice")
}

impl World {
    pub async fn new(ns: Namespace) -> Self {
        Self::with_config(ns, Config::default()).await
    }

    pub async fn with_config(ns: Namespace, config: Config) -> Self {
        let mut builder = ClientBuilder::new()
            .with_resource::<Connector>()
            .with_resource::<ConnectorRun>()
            .with_status_subresource::<Connector>()
            .with_status_subresource::<ConnectorRun>()
            .with_status_subresource::<Pod>();
        for s in secrets() {
            builder = builder.with_object(s);
        }
        // The API server's own EndpointSlice, where runs' NetworkPolicies
        // take its address from.
        builder = builder.with_object(api_server_slice());
        let client = builder.build().await.expect("fake client");
        let (audit_log, audit) = AuditLog::memory();
        let now = Arc::new(Mutex::new(
            "2026-11-23T10:00:00Z".parse::<Timestamp>().unwrap(),
        ));
        let (namespaces, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Apply(ns));
        let (runs, mut feeds) = RunCache::new(&[Some(NS.to_string())]);
        let mut ctx = Context::new(
            client.clone(),
            config,
            Arc::new(Metrics::new()),
            audit_log,
            namespaces,
            runs,
        );
        let clock = now.clone();
        ctx.clock = Arc::new(move || *clock.lock().unwrap());
        Self {
            client,
            ctx: Arc::new(ctx),
            audit,
            now,
            runs_feed: Mutex::new(feeds.remove(0)),
        }
    }

    /// Brings the operator's cache of runs up to the API, as a relist by its
    /// watch would.
    pub async fn sync_runs(&self) {
        let runs = self
            .runs()
            .list(&Default::default())
            .await
            .expect("list runs");
        self.runs_feed.lock().unwrap().relist(runs);
    }

    pub fn advance(&self, seconds: i64) {
        let mut t = self.now.lock().unwrap();
        *t = Timestamp::from_second(t.as_second() + seconds).unwrap();
    }

    pub fn connectors(&self) -> Api<Connector> {
        Api::namespaced(self.client.clone(), NS)
    }
    pub fn runs(&self) -> Api<ConnectorRun> {
        Api::namespaced(self.client.clone(), NS)
    }
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub async fn create_connector(&self, yaml: &str) -> Connector {
        self.connectors()
            .create(&PostParams::default(), &connector(yaml))
            .await
            .expect("create connector")
    }

    pub async fn create_run(&self, name: &str, connector: &str) -> ConnectorRun {
        self.runs()
            .create(&PostParams::default(), &run_of(name, connector))
            .await
            .expect("create run")
    }

    pub async fn reconcile_run(&self, name: &str) -> ConnectorRun {
        let run = self.runs().get(name).await.expect("run exists");
        ferry_operator::run::reconcile(Arc::new(run), self.ctx.clone())
            .await
            .expect("reconcile run");
        self.runs().get(name).await.expect("run exists")
    }

    /// Reconciles the Connector `name` with the cache of runs up to date.
    pub async fn reconcile_connector(&self, name: &str) -> Connector {
        self.sync_runs().await;
        self.reconcile_connector_as_cached(name).await
    }

    /// Reconciles the Connector `name` with the cache of runs as it is.
    pub async fn reconcile_connector_as_cached(&self, name: &str) -> Connector {
        let c = self.connectors().get(name).await.expect("connector exists");
        ferry_operator::connector::reconcile(Arc::new(c), self.ctx.clone())
            .await
            .expect("reconcile connector");
        self.connectors().get(name).await.expect("connector exists")
    }

    /// Sets the status of a pod as the kubelet would.
    pub async fn set_pod_status(&self, pod: &str, status: serde_json::Value) {
        self.pods()
            .patch_status(
                pod,
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({"status": status})),
            )
            .await
            .expect("pod status");
    }

    /// Reports a result as the runner does: server-side apply of its own fields.
    pub async fn runner_reports(&self, run: &str, result: serde_json::Value) {
        let patch = serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "ConnectorRun",
            "status": {"result": result},
        });
        self.runs()
            .patch_status(
                run,
                &PatchParams::apply("ferry-runner").force(),
                &Patch::Apply(&patch),
            )
            .await
            .expect("runner status");
    }

    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        let buf = self.audit.lock().unwrap().clone();
        String::from_utf8(buf)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    pub async fn events(&self) -> Vec<k8s_openapi::api::events::v1::Event> {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), NS);
        api.list(&Default::default()).await.expect("events").items
    }

    pub async fn exists<K>(&self, name: &str) -> bool
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + serde::de::DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), NS);
        api.get_opt(name).await.expect("get").is_some()
    }

    pub async fn get<K>(&self, name: &str) -> K
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + serde::de::DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), NS);
        api.get(name).await.expect("get")
    }
}

pub fn names(runs: &[ConnectorRun]) -> Vec<String> {
    let mut n: Vec<String> = runs.iter().map(|r| r.name_any()).collect();
    n.sort();
    n
}

/// `promtool check metrics` on an exposition; promtool comes from
/// tests/bootstrap.sh, and its absence fails the test.
pub fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed by tests/bootstrap.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
