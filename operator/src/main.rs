//! `ferry-operator`: runs the Connector and ConnectorRun controllers while it
//! holds the leader Lease, and serves `/metrics`, `/healthz` and `/readyz`.
//! Options are documented in docs/operator.md.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use clap::Parser;
use ferry_crds::{Connector, ConnectorRun, RunPhase};
use ferry_operator::audit::AuditLog;
use ferry_operator::config::{Config, RunNetwork};
use ferry_operator::connector::history;
use ferry_operator::context::Context;
use ferry_operator::metrics::Metrics;
use ferry_operator::pod_bounds::PodBounds;
use ferry_operator::run_cache::{RunCache, RunFeed};
use ferry_operator::{connector, names, run};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, PartialObjectMeta};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Ferry's Kubernetes operator.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Image of the runner container of every run.
    #[arg(long, env = "FERRY_RUNNER_IMAGE")]
    runner_image: String,
    /// imagePullPolicy of the runner container.
    #[arg(long, env = "FERRY_RUNNER_IMAGE_PULL_POLICY")]
    runner_image_pull_policy: Option<String>,
    /// Command of the runner container (its argument is `cluster`).
    #[arg(
        long,
        env = "FERRY_RUNNER_COMMAND",
        default_value = "/job-runner",
        value_delimiter = ' '
    )]
    runner_command: Vec<String>,
    /// RUST_LOG of the runner.
    #[arg(long, env = "FERRY_RUNNER_LOG", default_value = "info")]
    runner_log: String,
    /// Where runners POST OpenLineage events of runs touching sensitive streams
    /// (https).
    #[arg(long, env = "FERRY_LINEAGE_URL")]
    lineage_url: Option<String>,
    /// Keep finished runs at least this long (e.g. `2160h`), beyond the
    /// Connectors' history limits: the platform's retention of run records.
    #[arg(long, env = "FERRY_KEEP_FINISHED_RUNS_FOR")]
    keep_finished_runs_for: Option<jiff::SignedDuration>,
    /// Record who asked for each run (status.attribution, audit lines) from
    /// the `ferry.dev/created-by` and `ferry.dev/spec-changed-by` annotations.
    /// Only with the chart's attribution admission policies installed, which
    /// make those annotations the API server's own user information.
    #[arg(long, env = "FERRY_RECORD_REQUESTERS")]
    record_requesters: bool,
    /// The operator's own user name as the API server knows it
    /// (`system:serviceaccount:NAMESPACE:NAME`): with --record-requesters, the
    /// runs the schedule creates say so in `ferry.dev/created-by` (which the
    /// chart's policy checks against the request).
    #[arg(long, env = "FERRY_USER_NAME", requires = "record_requesters")]
    user_name: Option<String>,
    /// The platform's Vault or OpenBao, for Connectors that keep credentials
    /// there (`credentials.vault`); unset, such Connectors are rejected.
    #[arg(long, env = "FERRY_VAULT_ADDR")]
    vault_addr: Option<String>,
    /// Mount of Vault's JWT auth method that trusts the cluster's
    /// ServiceAccount tokens.
    #[arg(long, env = "FERRY_VAULT_AUTH_MOUNT", default_value = "jwt")]
    vault_auth_mount: String,
    /// Audience of the runs' projected tokens for Vault.
    #[arg(long, env = "FERRY_VAULT_AUDIENCE", default_value = "vault")]
    vault_audience: String,
    /// The Vault role runs log in as; `{namespace}` becomes the run's
    /// namespace (a role per tenant namespace).
    #[arg(long, env = "FERRY_VAULT_ROLE", default_value = "ferry-{namespace}")]
    vault_role: String,
    /// Vault's namespace when it runs inside the cluster: the runs'
    /// NetworkPolicy lets them reach its pods (--vault-pod-labels) on Vault's
    /// port, and that port nowhere else.
    #[arg(long, env = "FERRY_VAULT_NAMESPACE", requires_all = ["vault_addr", "vault_pod_labels"])]
    vault_namespace: Option<String>,
    /// Labels of Vault's pods inside the cluster (comma separated `k=v`).
    #[arg(
        long,
        env = "FERRY_VAULT_POD_LABELS",
        value_delimiter = ',',
        value_parser = parse_label,
        requires = "vault_namespace"
    )]
    vault_pod_labels: Vec<(String, String)>,
    /// Size of the runner's memory-backed /tmp.
    #[arg(long, env = "FERRY_RUNNER_SCRATCH_SIZE", default_value = "64Mi")]
    runner_scratch_size: String,
    /// TCP ports of the Kubernetes API server that runs may reach (NetworkPolicy).
    #[arg(
        long,
        env = "FERRY_API_SERVER_PORTS",
        default_value = "443,6443",
        value_delimiter = ','
    )]
    api_server_ports: Vec<i32>,
    /// Audiences a run's projected cloud token may be minted for, comma
    /// separated; a Connector asking for another is rejected.
    #[arg(
        long,
        env = "FERRY_TOKEN_AUDIENCES",
        value_delimiter = ',',
        default_value = "sts.amazonaws.com,api://AzureADTokenExchange"
    )]
    token_audiences: Vec<String>,
    /// The STS endpoint runners send AWS web identity tokens to (https);
    /// default: the official regional endpoint.
    #[arg(long, env = "FERRY_STS_ENDPOINT")]
    sts_endpoint: Option<String>,
    /// The endpoint of AWS Secrets Manager and KMS for runs (https); default:
    /// the official regional endpoints.
    #[arg(long, env = "FERRY_AWS_ENDPOINT")]
    aws_endpoint: Option<String>,
    /// Accept `local` endpoints (a folder of the runner pod; demos and tests only).
    #[arg(long, env = "FERRY_ALLOW_LOCAL_ENDPOINTS")]
    allow_local_endpoints: bool,
    /// Networks (CIDRs) no run may reach besides link-local, the cloud
    /// metadata addresses and the private ranges not allowed.
    #[arg(long, env = "FERRY_DENIED_NETWORKS", value_delimiter = ',')]
    denied_networks: Vec<String>,
    /// Private networks (CIDRs inside RFC 1918, CGNAT or IPv6 unique-local
    /// ranges) runs may reach, e.g. an on-premises SFTP server; every other
    /// private address is denied.
    #[arg(long, env = "FERRY_ALLOWED_NETWORKS", value_delimiter = ',')]
    allowed_networks: Vec<String>,
    /// CIDRs of the API server's endpoints; runs reach the API server ports
    /// only there. Unset: the addresses of the `kubernetes` Service's
    /// EndpointSlices (namespace `default`), read when an attempt starts.
    #[arg(long, env = "FERRY_API_SERVER_CIDRS", value_delimiter = ',')]
    api_server_cidrs: Vec<String>,
    /// Namespace of the cluster DNS pods (runs' DNS egress).
    #[arg(long, env = "FERRY_DNS_NAMESPACE", default_value = "kube-system")]
    dns_namespace: String,
    /// Labels of the cluster DNS pods, as KEY=VALUE pairs.
    #[arg(
        long,
        env = "FERRY_DNS_POD_LABELS",
        value_delimiter = ',',
        default_value = "k8s-app=kube-dns",
        value_parser = parse_label
    )]
    dns_pod_labels: Vec<(String, String)>,
    /// Pod annotation keys a Connector may set (comma separated; `x/*` allows
    /// every key starting with `x/`). None by default.
    #[arg(long, env = "FERRY_POD_ANNOTATION_KEYS", value_delimiter = ',')]
    pod_annotation_keys: Vec<String>,
    /// Pod label keys a Connector may set (same form). None by default.
    #[arg(long, env = "FERRY_POD_LABEL_KEYS", value_delimiter = ',')]
    pod_label_keys: Vec<String>,
    /// Node label keys a Connector may select nodes by (nodeSelector, node
    /// affinity).
    #[arg(
        long,
        env = "FERRY_NODE_LABEL_KEYS",
        value_delimiter = ',',
        default_value = "kubernetes.io/arch,kubernetes.io/os,topology.kubernetes.io/region,topology.kubernetes.io/zone,node.kubernetes.io/instance-type"
    )]
    node_label_keys: Vec<String>,
    /// Taint keys a Connector may tolerate (`*`: any, and tolerations without a
    /// key). None by default.
    #[arg(long, env = "FERRY_TOLERATION_KEYS", value_delimiter = ',')]
    toleration_keys: Vec<String>,
    /// The most a Connector may request or limit, as NAME=QUANTITY pairs; a
    /// resource not named may not be asked for.
    #[arg(
        long,
        env = "FERRY_MAX_RESOURCES",
        value_delimiter = ',',
        default_value = "cpu=4,memory=8Gi,ephemeral-storage=1Gi",
        value_parser = parse_resource_cap
    )]
    max_resources: Vec<(String, String)>,
    /// The most pods a Connector may spread one run over (its `parallelism`).
    #[arg(long, env = "FERRY_MAX_PARALLELISM", default_value_t = 8, value_parser = clap::value_parser!(i32).range(1..=32))]
    max_parallelism: i32,
    /// Accept plain http:// endpoints on a loopback address, for Connectors that
    /// set insecurePlainHttpOnLoopback (demos and tests only).
    #[arg(long, env = "FERRY_ALLOW_PLAIN_HTTP_LOOPBACK")]
    allow_plain_http_loopback: bool,
    /// The tenant namespaces, comma separated: the only namespaces whose
    /// Connectors and runs the operator acts on.
    #[arg(
        long,
        env = "FERRY_TENANT_NAMESPACES",
        value_delimiter = ',',
        conflicts_with = "cluster_wide"
    )]
    tenant_namespaces: Vec<String>,
    /// Act on Connectors of every namespace (the chart's cluster-wide mode).
    #[arg(long, env = "FERRY_CLUSTER_WIDE")]
    cluster_wide: bool,
    /// Address of the metrics and health server.
    #[arg(long, env = "FERRY_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Do not use leader election (a single replica only).
    #[arg(long, env = "FERRY_NO_LEADER_ELECTION")]
    no_leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "FERRY_LEASE_NAME", default_value = "ferry-operator")]
    lease_name: String,
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ferry-system")]
    lease_namespace: String,
    /// Identity in the Lease (the pod's name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a leader holds the Lease without renewing it.
    #[arg(long, env = "FERRY_LEASE_DURATION", default_value_t = 15)]
    lease_duration: u64,
    /// Append audit lines to this file instead of standard output.
    #[arg(long, env = "FERRY_AUDIT_LOG")]
    audit_log: Option<std::path::PathBuf>,
    /// Log format: json (one object per line) or text.
    #[arg(long, env = "FERRY_LOG_FORMAT", default_value = "json")]
    log_format: String,
}

/// The non-empty entries of a comma-separated list (`--x=` gives none).
fn listed(values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// `KEY=VALUE`.
fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

/// `NAME=QUANTITY`, e.g. `memory=8Gi`.
fn parse_resource_cap(s: &str) -> Result<(String, String), String> {
    let (name, q) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=QUANTITY"))?;
    ferry_operator::pod_bounds::quantity_value(q)
        .ok_or_else(|| format!("{q:?} is not a Kubernetes quantity"))?;
    Ok((name.trim().to_string(), q.trim().to_string()))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    init_logging(&args.log_format);
    // Several TLS backends are compiled in through dependencies; choose one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Err(e) = run_operator(args).await {
        tracing::error!(error = %e, "ferry-operator stopped");
        std::process::exit(1);
    }
}

fn init_logging(format: &str) {
    let filter = ferry_operator::logging::filter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "text" {
        builder.init();
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    }
}

/// Shared by the HTTP handlers.
#[derive(Clone)]
struct Health {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

async fn serve_http(
    addr: SocketAddr,
    health: Health,
    shutdown: watch::Receiver<bool>,
) -> Result<(), BoxError> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(h): State<Health>| async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    h.metrics.render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(h): State<Health>| async move {
                if h.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
                }
            }),
        )
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    let mut shutdown = shutdown;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn run_operator(args: Args) -> Result<(), BoxError> {
    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::new());
    metrics.init_controllers(&[connector::CONTROLLER, run::CONTROLLER]);
    let audit = audit_log(&args)?;
    let config = config(&args);
    config
        .network
        .reach()
        .map_err(|e| format!("--denied-networks / --allowed-networks / --api-server-cidrs: {e}"))?;
    let lifecycle = Lifecycle::start(args.metrics_addr, metrics.clone());

    // Leader election: only the holder of the Lease reconciles.
    let leader = if args.no_leader_election {
        None
    } else {
        match lead(&args, &client, &lifecycle).await? {
            Some(leader) => Some(leader),
            None => return lifecycle.stop(None).await, // terminated while standing by
        }
    };
    lifecycle.ready.store(false, Ordering::Relaxed);

    // Namespaces: the tenants' rules, an index kept current by a watch.
    let (namespaces, ns_task) = watch_namespaces(&client);
    let synced = tokio::select! {
        r = namespaces.wait_until_ready() => { r?; true }
        _ = lifecycle.terminated() => false,
    };
    if !synced {
        ns_task.abort();
        return lifecycle.stop(leader).await;
    }
    let scopes = scopes(&args);
    let (runs, run_feeds) = RunCache::new(&scopes);
    let ctx = Arc::new(Context::new(
        client.clone(),
        config,
        metrics.clone(),
        audit,
        namespaces,
        runs,
    ));
    let stop = Arc::new(tokio::sync::Notify::new());
    let Started {
        tasks,
        run_stores,
        connector_stores,
    } = start_controllers(&client, scopes.into_iter().zip(run_feeds), &ctx, &stop);
    lifecycle.ready.store(true, Ordering::Relaxed);
    let gauge = tokio::spawn(gauges(run_stores, connector_stores, ctx.clone()));

    // Run until a signal, or until leadership is lost (then exit so that the
    // replacement starts from a clean state, as controller-runtime does).
    let outcome: Result<(), BoxError> = tokio::select! {
        _ = lifecycle.terminated() => { tracing::info!("shutting down"); Ok(()) }
        _ = lost(leader.as_ref()) => Err("lost the leader Lease".into()),
    };
    stop.notify_waiters();
    // The controllers finish their reconciles in flight, all within one
    // deadline (the pod has 30 s by default before it is killed): one per
    // controller, waited in turn, added up to minutes with many tenants.
    let _ = tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(tasks)).await;
    gauge.abort();
    ns_task.abort();
    lifecycle.stop(leader).await?;
    outcome
}

/// Watches every namespace into a store.
fn watch_namespaces(client: &Client) -> (Store<Namespace>, tokio::task::JoinHandle<()>) {
    let (namespaces, writer) = reflector::store::<Namespace>();
    let task = tokio::spawn(
        watcher(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(writer)
        .for_each(|_| futures::future::ready(())),
    );
    (namespaces, task)
}

/// The controllers, running.
struct Started {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The controllers' caches, for the gauges.
    run_stores: Vec<Store<DeserializeGuard<ConnectorRun>>>,
    connector_stores: Vec<Store<DeserializeGuard<Connector>>>,
}

/// Starts both controllers in every scope, until `stop`.
fn start_controllers(
    client: &Client,
    scopes: impl Iterator<Item = (Option<String>, RunFeed)>,
    ctx: &Arc<Context>,
    stop: &Arc<tokio::sync::Notify>,
) -> Started {
    let mut started = Started {
        tasks: Vec::new(),
        run_stores: Vec::new(),
        connector_stores: Vec::new(),
    };
    for (scope, runs) in scopes {
        let (task, store) = run_controller(client, scope.as_deref(), ctx.clone(), stop.clone());
        started.tasks.push(task);
        started.run_stores.push(store);
        let (task, store) =
            connector_controller(client, scope.as_deref(), runs, ctx.clone(), stop.clone());
        started.tasks.push(task);
        started.connector_stores.push(store);
    }
    started
}

/// The audit trail: appended to `--audit-log`, or written to stdout.
fn audit_log(args: &Args) -> std::io::Result<AuditLog> {
    // This replica is one writer of the audit chain.
    let who = format!("operator/{}", args.identity.as_deref().unwrap_or("local"));
    Ok(match &args.audit_log {
        Some(path) => AuditLog::new(
            &who,
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        ),
        None => AuditLog::new(&who, Box::new(std::io::stdout())),
    })
}

/// The controllers' configuration, from the command line.
fn config(args: &Args) -> Config {
    Config {
        runner_image: args.runner_image.clone(),
        runner_image_pull_policy: args.runner_image_pull_policy.clone(),
        runner_command: args.runner_command.clone(),
        runner_log: args.runner_log.clone(),
        scratch_size: args.runner_scratch_size.clone(),
        api_server_ports: args.api_server_ports.clone(),
        allow_local_endpoints: args.allow_local_endpoints,
        allow_plain_http_loopback: args.allow_plain_http_loopback,
        pod_bounds: PodBounds {
            annotation_keys: listed(&args.pod_annotation_keys),
            label_keys: listed(&args.pod_label_keys),
            node_label_keys: listed(&args.node_label_keys),
            toleration_keys: listed(&args.toleration_keys),
            max_resources: args
                .max_resources
                .iter()
                .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                .collect(),
            max_parallelism: args.max_parallelism,
        },
        lineage_url: args.lineage_url.clone(),
        token_audiences: args.token_audiences.clone(),
        sts_endpoint: args.sts_endpoint.clone(),
        aws_endpoint: args.aws_endpoint.clone(),
        keep_finished_runs_for: args.keep_finished_runs_for,
        record_requesters: args.record_requesters,
        user_name: args.user_name.clone(),
        vault: args
            .vault_addr
            .clone()
            .map(|addr| ferry_operator::config::VaultConfig {
                addr,
                auth_mount: args.vault_auth_mount.clone(),
                audience: args.vault_audience.clone(),
                role: args.vault_role.clone(),
                in_cluster: args.vault_namespace.clone().map(|namespace| {
                    ferry_operator::config::VaultPods {
                        namespace,
                        pod_labels: args.vault_pod_labels.iter().cloned().collect(),
                    }
                }),
            }),
        network: RunNetwork {
            denied_cidrs: listed(&args.denied_networks),
            allowed_cidrs: listed(&args.allowed_networks),
            api_server_cidrs: listed(&args.api_server_cidrs),
            dns_namespace: args.dns_namespace.clone(),
            dns_pod_labels: args.dns_pod_labels.iter().cloned().collect(),
        },
        ..Config::default()
    }
}

/// What lives as long as the process: the HTTP server, its readiness, and the
/// termination signal.
struct Lifecycle {
    ready: Arc<AtomicBool>,
    shutdown: watch::Sender<bool>,
    term: watch::Receiver<bool>,
    http: tokio::task::JoinHandle<Result<(), BoxError>>,
}

/// The held leader Lease.
struct Leader {
    channel: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
}

impl Lifecycle {
    /// Serves HTTP on `addr` and listens for SIGTERM / Ctrl-C.
    fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> Self {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (term_tx, term) = watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = term_tx.send(true);
        });
        let ready = Arc::new(AtomicBool::new(false));
        let health = Health {
            metrics,
            ready: ready.clone(),
        };
        let http = tokio::spawn(serve_http(addr, health, shutdown_rx));
        Self {
            ready,
            shutdown,
            term,
            http,
        }
    }

    /// Resolves once a termination signal arrived.
    async fn terminated(&self) {
        let mut rx = self.term.clone();
        let _ = rx.wait_for(|t| *t).await;
    }

    /// Releases the Lease for the next replica and stops serving.
    async fn stop(self, leader: Option<Leader>) -> Result<(), BoxError> {
        if let Some(Leader { channel, task }) = leader {
            drop(channel);
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        let _ = self.shutdown.send(true);
        let _ = self.http.await;
        Ok(())
    }
}

/// Resolves when the Lease is lost; never without leader election.
async fn lost(leader: Option<&Leader>) {
    match leader {
        Some(l) => {
            let mut channel = l.channel.clone();
            let _ = channel.wait_for(|leading| !*leading).await;
        }
        None => futures::future::pending::<()>().await,
    }
}

/// Waits to hold the leader Lease; `None` when terminated first. A standby
/// replica is ready: it serves metrics.
async fn lead(
    args: &Args,
    client: &Client,
    lifecycle: &Lifecycle,
) -> Result<Option<Leader>, BoxError> {
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("ferry-operator-{}", std::process::id()));
    let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(args.lease_duration)
        .with_grace(args.lease_duration.div_ceil(3).max(2))
        .with_field_manager("ferry-operator-lease")
        .build()
        .await?;
    let (mut channel, task) = manager.watch().await;
    lifecycle.ready.store(true, Ordering::Relaxed);
    tracing::info!(
        identity,
        lease = args.lease_name,
        "waiting to become the leader"
    );
    let leading = tokio::select! {
        r = channel.wait_for(|leading| *leading) => r.map(|_| true),
        _ = lifecycle.terminated() => Ok(false),
    };
    if !leading? {
        drop(channel);
        let _ = task.await;
        return Ok(None);
    }
    tracing::info!(identity, "became the leader");
    Ok(Some(Leader { channel, task }))
}

/// Where the controllers watch: every namespace in cluster-wide mode, else
/// each tenant namespace (none when none is listed).
fn scopes(args: &Args) -> Vec<Option<String>> {
    if args.cluster_wide {
        return vec![None];
    }
    let mut namespaces = listed(&args.tenant_namespaces);
    namespaces.sort();
    namespaces.dedup();
    if namespaces.is_empty() {
        tracing::warn!(
            "no tenant namespaces: the operator acts on nothing until some are listed \
             (--tenant-namespaces, the chart's tenantNamespaces)"
        );
    }
    namespaces.into_iter().map(Some).collect()
}

fn scoped<K>(client: &Client, scope: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn key<K: kube::Resource>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// The ConnectorRun controller of one scope, running until `stop`, and its
/// cache.
fn run_controller(
    client: &Client,
    scope: Option<&str>,
    ctx: Arc<Context>,
    stop: Arc<tokio::sync::Notify>,
) -> (
    tokio::task::JoinHandle<()>,
    Store<DeserializeGuard<ConnectorRun>>,
) {
    let pods = watcher::Config::default().labels(&format!(
        "{}={}",
        names::LABEL_MANAGED_BY,
        names::MANAGED_BY
    ));
    // Guarded: a run that cannot be read is reported and skipped, never a
    // reason for the watch (and so every other run) to stall.
    let controller = Controller::new(
        scoped::<DeserializeGuard<ConnectorRun>>(client, scope),
        watcher::Config::default(),
    );
    let reader = controller.store();
    let controller = controller
        // Pods are cached as metadata only: a reconcile reads the pod it looks at.
        .owns(scoped::<PartialObjectMeta<Pod>>(client, scope), pods)
        .graceful_shutdown_on(async move { stop.notified().await })
        .run(run::reconcile_guarded, run::error_policy_guarded, ctx)
        .for_each(|res| {
            if let Err(e) = res {
                tracing::debug!(error = %e, "connectorrun controller event");
            }
            futures::future::ready(())
        });
    (tokio::spawn(controller), reader)
}

/// The Connector controller of one scope: woken by its Connectors and by
/// their runs, whose watch also fills the runs' cache it reads.
fn connector_controller(
    client: &Client,
    scope: Option<&str>,
    runs: RunFeed,
    ctx: Arc<Context>,
    stop: Arc<tokio::sync::Notify>,
) -> (
    tokio::task::JoinHandle<()>,
    Store<DeserializeGuard<Connector>>,
) {
    // Runs made by hand carry no owner reference: map every run to its Connector.
    let controller = Controller::new(
        scoped::<DeserializeGuard<Connector>>(client, scope),
        watcher::Config::default(),
    );
    let reader = controller.store();
    let controller = controller
        .watches_stream(
            runs.watch(scoped::<DeserializeGuard<ConnectorRun>>(client, scope)),
            |run: DeserializeGuard<ConnectorRun>| {
                let run = run.0.ok()?;
                let ns = run.namespace()?;
                Some(ObjectRef::new(&run.spec.connector_ref.name).within(&ns))
            },
        )
        .graceful_shutdown_on(async move { stop.notified().await })
        .run(
            connector::reconcile_guarded,
            connector::error_policy_guarded,
            ctx,
        )
        .for_each(|res| {
            if let Err(e) = res {
                tracing::debug!(error = %e, "connector controller event");
            }
            futures::future::ready(())
        });
    (tokio::spawn(controller), reader)
}

/// Keeps `ferry_runs_active` equal to the runs that have not ended, and the
/// queue depth gauges current.
async fn gauges(
    runs: Vec<Store<DeserializeGuard<ConnectorRun>>>,
    connectors: Vec<Store<DeserializeGuard<Connector>>>,
    ctx: Arc<Context>,
) {
    loop {
        let all_runs: Vec<Arc<DeserializeGuard<ConnectorRun>>> =
            runs.iter().flat_map(|s| s.state()).collect();
        let active = all_runs
            .iter()
            .filter_map(|r| r.0.as_ref().ok())
            .filter(|r| !history::phase(r).is_some_and(RunPhase::is_terminal))
            .count();
        let m = &ctx.metrics;
        m.runs_active.set(active as f64);
        let depth = ctx.run_queue.depth(
            all_runs
                .iter()
                .map(|r| (key(r.as_ref()), r.resource_version())),
        );
        m.queue_depth
            .with_label_values(&[run::CONTROLLER])
            .set(depth as i64);
        let all_connectors = connectors.iter().flat_map(|s| s.state());
        let depth = ctx
            .connector_queue
            .depth(all_connectors.map(|c| (key(c.as_ref()), c.resource_version())));
        m.queue_depth
            .with_label_values(&[connector::CONTROLLER])
            .set(depth as i64);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
