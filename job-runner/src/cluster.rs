//! Cluster mode: the runner in its pod, started with only the run's name and
//! namespace. It reads its ConnectorRun (the Connector spec pinned in its
//! status), fetches the Secrets through the API with its own short-lived token,
//! and reports `progress` (throttled) and `result` on the run's status by
//! server-side apply with its own field manager, so it never touches the
//! operator's fields. It never receives a secret through env or arguments.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferry_crds::{
    Connector, ConnectorRun, ConnectorSpec, ErasedObject, Reason, RunError, RunProgress, RunRecord,
    RunResult, secret_names, secret_usable, spec_hash,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use zeroize::Zeroizing;

use crate::config::SecretsDir;
use crate::job::{Failure, Job, perform, prepare};
use crate::transfer::{Erased, Part, Progress, Report};

/// Field manager of the runner's status writes.
pub const FIELD_MANAGER: &str = "ferry-runner";

/// Which run this pod is.
#[derive(Debug, Clone)]
pub struct RunRef {
    pub namespace: String,
    pub name: String,
    pub attempt: i32,
    /// Hash of the spec the operator pinned, from the pod's environment.
    pub spec_hash: String,
    /// All of the run, one shard of it, or its last step.
    pub part: Part,
}

fn api_failure(what: &str, e: kube::Error) -> Failure {
    let reason = match &e {
        kube::Error::Api(s) if s.code == 401 => Reason::InvalidCredentials,
        kube::Error::Api(s) if s.code == 403 => Reason::AccessDenied,
        kube::Error::Api(s) if s.code == 404 => Reason::NotAdmitted,
        _ => Reason::KubernetesUnreachable,
    };
    Failure {
        reason,
        message: format!("failed to {what}: {e}"),
    }
}

/// The run and the Connector it pinned: the Connector's metadata (read through
/// the API) with the spec the operator recorded in the run's record when it
/// admitted the run (never the status copy, which this run's own token could
/// have rewritten), checked against the hash in the pod's environment.
pub async fn load(client: &Client, run: &RunRef) -> Result<(ConnectorRun, Connector), Failure> {
    let runs: Api<ConnectorRun> = Api::namespaced(client.clone(), &run.namespace);
    let cr = runs.get(&run.name).await.map_err(|e| {
        api_failure(
            &format!("read ConnectorRun {}/{}", run.namespace, run.name),
            e,
        )
    })?;
    let not_admitted = || Failure {
        reason: Reason::NotAdmitted,
        message: format!(
            "ConnectorRun {}/{} has no pinned Connector spec: the operator has not admitted it",
            run.namespace, run.name
        ),
    };
    let record = RunRecord::of(&cr).ok().flatten().ok_or_else(not_admitted)?;
    let spec: ConnectorSpec = record.verified_spec().cloned().ok_or_else(not_admitted)?;
    if spec_hash(&spec) != run.spec_hash {
        return Err(Failure {
            reason: Reason::PinnedSpecTampered,
            message: format!(
                "the spec recorded for ConnectorRun {}/{} is not the one its pod was created for",
                run.namespace, run.name
            ),
        });
    }
    let connectors: Api<Connector> = Api::namespaced(client.clone(), &run.namespace);
    let name = &cr.spec.connector_ref.name;
    let mut connector = connectors
        .get(name)
        .await
        .map_err(|e| api_failure(&format!("read Connector {}/{name}", run.namespace), e))?;
    connector.spec = spec;
    Ok((cr, connector))
}

/// Fetches the Secrets the spec references. A missing Secret is left out: the
/// read that needs it fails naming it. A Secret without Ferry's opt-in label, or
/// of a type Ferry never reads, fails the run.
pub async fn fetch_secrets(
    client: &Client,
    namespace: &str,
    spec: &ConnectorSpec,
) -> Result<SecretsDir, Failure> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut out = BTreeMap::new();
    for name in secret_names(spec) {
        let secret = api
            .get_opt(&name)
            .await
            .map_err(|e| api_failure(&format!("read Secret {namespace}/{name}"), e))?;
        let Some(secret) = secret else { continue };
        // The operator checked this before the pod existed; the Secret may have
        // been replaced since.
        secret_usable(secret.metadata.labels.as_ref(), secret.type_.as_deref()).map_err(|r| {
            Failure {
                reason: r.reason(),
                message: r.message(&format!("{namespace}/{name}"), "named by the Connector"),
            }
        })?;
        let mut keys = BTreeMap::new();
        for (k, v) in secret.data.unwrap_or_default() {
            keys.insert(k, Zeroizing::new(v.0));
        }
        for (k, v) in secret.string_data.unwrap_or_default() {
            keys.insert(k, Zeroizing::new(v.into_bytes()));
        }
        out.insert(name, keys);
    }
    Ok(SecretsDir::fetched(out))
}

/// Writes the runner's fields of the run's status.
#[derive(Clone)]
pub struct Reporter {
    api: Api<ConnectorRun>,
    run: RunRef,
}

impl Reporter {
    pub fn new(client: &Client, run: &RunRef) -> Self {
        Self {
            api: Api::namespaced(client.clone(), &run.namespace),
            run: run.clone(),
        }
    }

    async fn apply(
        &self,
        progress: RunProgress,
        result: Option<RunResult>,
    ) -> Result<(), kube::Error> {
        let mut report = serde_json::json!({"progress": progress});
        if let Some(r) = result {
            report["result"] = serde_json::to_value(r).unwrap_or_default();
        }
        // A shard writes its own key of `shardReports`, as a manager of its
        // own: the shards of a run never take each other's fields.
        let (status, manager) = match self.run.part {
            Part::Shard(s) => (
                serde_json::json!({"shardReports": {s.index.to_string(): report}}),
                format!("{FIELD_MANAGER}-shard-{}", s.index),
            ),
            _ => (report, FIELD_MANAGER.to_string()),
        };
        let patch = serde_json::json!({
            "apiVersion": ConnectorRun::api_version(&()),
            "kind": "ConnectorRun",
            "status": status,
        });
        self.api
            .patch_status(
                &self.run.name,
                &PatchParams::apply(&manager).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map(|_| ())
    }

    /// Reports live progress.
    pub async fn progress(&self, progress: &Progress) -> Result<(), kube::Error> {
        self.apply(live(progress), None).await
    }

    /// Reports the outcome of this attempt (final progress included, so the
    /// field stays owned by the runner).
    pub async fn result(
        &self,
        outcome: &Result<Report, Failure>,
        progress: &Progress,
    ) -> Result<(), kube::Error> {
        let result = result_of(outcome, self.run.attempt);
        self.apply(live(progress), Some(result)).await
    }
}

/// The counters of `progress` as the status shows them.
fn live(progress: &Progress) -> RunProgress {
    RunProgress {
        listed: progress.listed.load(Ordering::Relaxed) as i64,
        objects: progress.objects.load(Ordering::Relaxed) as i64,
        bytes: progress.bytes.load(Ordering::Relaxed) as i64,
    }
}

/// The status `result` of an attempt.
pub fn result_of(outcome: &Result<Report, Failure>, attempt: i32) -> RunResult {
    match outcome {
        Ok(r) => RunResult {
            objects_copied: r.objects_copied as i64,
            objects_skipped: (r.objects_skipped + r.objects_tombstoned) as i64,
            objects_failed: r.objects_failed as i64,
            objects_erased: r.erased.len() as i64,
            erased: erased_list(&r.erased).0,
            erased_truncated: erased_list(&r.erased).1,
            erase_incomplete: r.erase_incomplete.as_deref().map(|m| truncate(m, 4096)),
            bytes_read: r.bytes_read as i64,
            bytes_written: r.bytes_written as i64,
            manifest: r.manifest.clone(),
            manifest_anchor: r.anchor.as_ref().map(ToString::to_string),
            manifest_created: r.manifest_created.clone(),
            attempt: Some(attempt),
            error: None,
        },
        Err(f) => RunResult {
            attempt: Some(attempt),
            error: Some(RunError {
                reason: f.reason.to_string(),
                message: truncate(&f.message, 4096),
                retryable: f.retryable(),
            }),
            ..RunResult::default()
        },
    }
}

/// The erased keys for the status, up to 64 KiB of keys (a status must stay
/// well below the API server's object size limit); and whether some were left out.
fn erased_list(erased: &[Erased]) -> (Vec<ErasedObject>, bool) {
    let mut budget = 64 << 10;
    let mut out = Vec::new();
    for e in erased {
        if e.key.len() > budget {
            return (out, true);
        }
        budget -= e.key.len();
        out.push(ErasedObject {
            key: e.key.clone(),
            from_destination: e.from_destination,
            from_source: e.from_source,
        });
    }
    (out, false)
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Reports progress at most once per `every` and only when it moved, until the
/// returned task is aborted. A failed write is logged and retried next time:
/// progress is informative, the run goes on.
pub fn spawn_progress(
    reporter: Reporter,
    progress: Arc<Progress>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = None;
        loop {
            tokio::time::sleep(every).await;
            let now = live(&progress);
            if last.as_ref() == Some(&now) {
                continue;
            }
            match reporter.progress(&progress).await {
                Ok(()) => last = Some(now),
                Err(e) => tracing::warn!(error = %e, "failed to report progress"),
            }
        }
    })
}

/// How an attempt runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The tenant's region, for `dataResidency: in-region-only`.
    pub tenant_region: Option<String>,
    /// The manifest the destination's record must reach, from the operator.
    pub anchor: Option<crate::crypto::Anchor>,
    /// Objects above 1 MiB copied at once; smaller ones up to four times as many.
    pub concurrency: usize,
    /// Base folder of relative local paths.
    pub base_dir: std::path::PathBuf,
    /// Least time between two progress reports.
    pub progress_every: Duration,
    /// Where lineage events go, if anywhere.
    pub lineage: Option<crate::lineage::Sink>,
    /// The platform team's settings, from the operator.
    pub platform: crate::config::Platform,
}

/// One attempt, start to end: load the run, fetch the Secrets, transfer (with
/// one re-read of the Secrets after an authentication failure), report the
/// result. Returns the outcome and whether reporting it worked.
pub async fn attempt(
    client: &Client,
    run: &RunRef,
    settings: &Settings,
    audit_out: Box<dyn std::io::Write + Send>,
) -> (Result<Report, Failure>, Result<(), kube::Error>) {
    let reporter = Reporter::new(client, run);
    let progress = Arc::new(Progress::default());
    let outcome = attempt_inner(
        client,
        run,
        settings,
        audit_out,
        &reporter,
        progress.clone(),
    )
    .await;
    let reported = reporter.result(&outcome, &progress).await;
    (outcome, reported)
}

async fn attempt_inner(
    client: &Client,
    run: &RunRef,
    settings: &Settings,
    audit_out: Box<dyn std::io::Write + Send>,
    reporter: &Reporter,
    progress: Arc<Progress>,
) -> Result<Report, Failure> {
    let (cr, connector) = load(client, run).await?;
    // One OpenLineage run per attempt: the run's uid and the attempt name it.
    let uid = cr.metadata.uid.as_deref().unwrap_or(&run.name);
    let lineage_run = match run.part {
        Part::Shard(s) => format!("{uid}/shard-{}/{}", s.index, run.attempt),
        _ => format!("{uid}/{}", run.attempt),
    };
    let mut prepared = prepare(
        &connector,
        &run.namespace,
        &run.name,
        &lineage_run,
        audit_out,
        settings.lineage.clone(),
    );
    // Who asked for the run, from the operator's record (not the status,
    // which this runner's own token may write).
    prepared.audit.attribution = RunRecord::of(&cr)
        .ok()
        .flatten()
        .and_then(|r| r.status.attribution)
        .unwrap_or_default();
    let job = Job {
        connector: &connector,
        mode: cr.spec.mode,
        erase: cr.spec.erase.as_ref(),
        tenant_region: settings.tenant_region.as_deref(),
        anchor: settings.anchor.as_ref(),
        run_id: &run.name,
        concurrency: settings.concurrency,
        base_dir: &settings.base_dir,
        lineage: prepared.lineage.as_ref(),
        platform: &settings.platform,
        part: run.part,
    };
    let ticker = spawn_progress(reporter.clone(), progress.clone(), settings.progress_every);
    let secrets = fetch_secrets(client, &run.namespace, &connector.spec);
    let reread = || fetch_secrets(client, &run.namespace, &connector.spec);
    let outcome = perform(job, secrets, reread, &prepared.audit, progress).await;
    ticker.abort();
    outcome
}
