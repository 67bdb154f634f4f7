//! One run of a Connector, the same in local and cluster mode: check residency
//! (declared regions, then where the stores say they are), read the KEK, open
//! both stores, transfer or erase. On an authentication failure the
//! Secrets are read again once (they may have been rotated meanwhile); if they
//! changed the run is tried once more, else it fails fast.

use crate::crypto::Anchor;
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use ferry_crds::{Connector, DataResidency, Reason};

use crate::audit::{AuditLog, Outcome};
use crate::aws::AwsKms;
use crate::config::{self, SecretsDir};
use crate::crypto::KeyRing;
use crate::crypto::keys::{KeyError, Kms, run_key_ring};
use crate::lineage::{EventType, Lineage, Sink};
use crate::storage::{ObjectStore, StorageError};
use crate::transfer::{self, EraseRequest, Mode, Options, Part, Progress, Report};
use crate::vault;
use crate::vault::VaultTransit;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    /// The Connector (in cluster mode: its metadata with the run's pinned spec).
    pub connector: &'a Connector,
    pub mode: Mode,
    /// The request of an erasure run (`mode` is [`Mode::Erase`]).
    pub erase: Option<&'a EraseRequest>,
    /// The tenant's region, for `dataResidency: in-region-only`.
    pub tenant_region: Option<&'a str>,
    /// The manifest the destination's record must reach (the operator's
    /// record of the last one); none: its newest manifest is trusted.
    pub anchor: Option<&'a Anchor>,
    /// Names the manifest.
    pub run_id: &'a str,
    /// Objects above 1 MiB copied at once; smaller ones up to four times as many.
    pub concurrency: usize,
    /// Base folder of relative local paths.
    pub base_dir: &'a Path,
    /// Where OpenLineage events of a sync go (runs touching sensitive streams).
    pub lineage: Option<&'a Lineage>,
    /// The platform team's settings (STS endpoint).
    pub platform: &'a config::Platform,
    /// All of a sync, one shard of it, or its last step.
    pub part: Part,
}

/// Why a run failed: a stable reason and a message naming the endpoint and
/// object, never a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
}

impl Failure {
    /// Whether another attempt may succeed. Credentials, policy, integrity and
    /// configuration failures will fail the same way again.
    pub fn retryable(&self) -> bool {
        self.reason.retryable()
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for Failure {}

/// A read of the run's keys or credentials that failed: audited
/// (`secret.read`, the reason, never a value), then the run's failure.
fn refused_read(audit: &AuditLog, reason: Reason, e: impl std::fmt::Display) -> Failure {
    audit.record("secret.read", Outcome::Failure, Some(reason.as_str()), None);
    failure(reason, e)
}

fn failure(reason: Reason, e: impl std::fmt::Display) -> Failure {
    Failure {
        reason,
        message: e.to_string(),
    }
}

/// Runs the job once with these Secrets.
pub async fn execute(
    job: Job<'_>,
    secrets: &SecretsDir,
    audit: &AuditLog,
    progress: Arc<Progress>,
) -> Result<Report, Failure> {
    let connector = job.connector;
    if let Err(e) = config::check_residency(connector, job.tenant_region) {
        audit.record(
            "policy.residency",
            Outcome::Denied,
            Some(e.reason().as_str()),
            None,
        );
        return Err(failure(e.reason(), e));
    }
    let keys = Arc::new(key_ring(&job, secrets, audit).await?);
    let signer = secrets
        .signer(connector)
        .map_err(|e| refused_read(audit, e.reason(), e))?;
    if signer.is_some() {
        audit.record("secret.read", Outcome::Success, None, None);
    }
    let signer = signer.map(Arc::new);
    let spec = &connector.spec;
    let src = config::open_store("source", &spec.source, job.base_dir, secrets, job.platform)
        .map_err(|e| failure(e.reason(), e))?;
    let dst = config::open_store(
        "destination",
        &spec.destination,
        job.base_dir,
        secrets,
        job.platform,
    )
    .map_err(|e| failure(e.reason(), e))?;
    if spec.compliance.data_residency == DataResidency::InRegionOnly
        && let Some(tenant) = job.tenant_region
    {
        for (side, store) in [("source", &src), ("destination", &dst)] {
            check_store_region(side, store.as_ref(), tenant, audit).await?;
        }
    }
    let opts = Options {
        mode: job.mode,
        run_id: job.run_id.to_string(),
        connector: format!(
            "{}/{}",
            connector.metadata.namespace.as_deref().unwrap_or("default"),
            connector.metadata.name.as_deref().unwrap_or("connector")
        ),
        concurrency: job.concurrency,
        anchor: job.anchor.cloned(),
        signer,
        shard: match job.part {
            Part::Shard(s) => Some(s),
            _ => None,
        },
        ..Options::default()
    };
    match (job.mode, job.erase, job.part) {
        (Mode::Erase, Some(request), _) => {
            transfer::erase(src, dst, keys, request, &opts, audit).await
        }
        (Mode::Erase, None, _) => {
            return Err(failure(
                Reason::InvalidSpec,
                "an erase run needs the source keys to erase",
            ));
        }
        (Mode::Sync, _, Part::Commit(count)) => {
            transfer::commit(dst, keys, &opts, count, audit).await
        }
        _ => transfer::run(spec, src, dst, keys, &opts, audit, progress).await,
    }
    .map_err(|e| failure(e.reason(), e))
}

/// The run's keys: the KEK from its Secret or, when the Connector's KEK is a
/// key of a KMS (Vault Transit, AWS KMS), a new run key from it (one call,
/// audited as `kms.datakey`) that also unwraps earlier runs' keys.
async fn key_ring(
    job: &Job<'_>,
    secrets: &SecretsDir,
    audit: &AuditLog,
) -> Result<KeyRing, Failure> {
    let Some(kms) = &job.connector.spec.encryption.kms else {
        let kek = secrets
            .kek(job.connector)
            .map_err(|e| refused_read(audit, e.reason(), e))?;
        audit.record("secret.read", Outcome::Success, None, None);
        return Ok(KeyRing::new(vec![kek]));
    };
    let kms: Arc<dyn Kms> = match (&kms.vault_transit, &kms.aws_kms) {
        (Some(transit), _) => Arc::new(
            VaultTransit::login(job.platform.vault.as_ref(), transit, audit.clone())
                .await
                .map_err(|e| refused_read(audit, e.reason(), e))?,
        ),
        (None, Some(key)) => Arc::new(
            AwsKms::for_run(key, job.platform, audit.clone())
                .map_err(|e| refused_read(audit, e.reason(), e))?,
        ),
        (None, None) => {
            return Err(failure(
                Reason::InvalidSpec,
                "encryption.kms names no key: set vaultTransit or awsKms",
            ));
        }
    };
    run_key_ring(kms).await.map_err(|e| match e {
        KeyError::Kms(k) if k.unreachable => failure(Reason::SecretStoreUnreachable, k),
        KeyError::Kms(k) => failure(Reason::SecretStoreDenied, k),
        other => failure(Reason::InvalidEncryptionKey, other),
    })
}

/// Residency as the store reports it: a bucket whose real region is not the
/// tenant's is refused, whatever the Connector declares. A store that cannot
/// tell (Azure Blob without management access, SFTP, local folders) keeps the
/// declared region, already checked; so does one whose credentials may not ask
/// (S3 needs `s3:GetBucketLocation`), with a warning and an audit line.
async fn check_store_region(
    side: &str,
    store: &dyn ObjectStore,
    tenant: &str,
    audit: &AuditLog,
) -> Result<(), Failure> {
    match store.region().await {
        Ok(Some(actual)) if actual != tenant => {
            let reason = Reason::ResidencyViolation;
            audit.record(
                "policy.residency",
                Outcome::Denied,
                Some(reason.as_str()),
                None,
            );
            Err(failure(
                reason,
                format!(
                    "{side} {} is in region {actual:?} (as the store reports), outside the tenant's region {tenant:?} (dataResidency: in-region-only)",
                    store.describe()
                ),
            ))
        }
        Ok(_) => Ok(()),
        Err(e @ StorageError::AccessDenied { .. }) => {
            tracing::warn!(side, error = %e, "the store's region cannot be asked; relying on the declared region");
            audit.record(
                "policy.residency",
                Outcome::Success,
                Some("RegionUnverified"),
                None,
            );
            Ok(())
        }
        Err(e) => Err(failure(e.reason(), e)),
    }
}

/// Sends a lineage event of a sync; a sink that fails is logged and audited, the
/// run goes on.
async fn lineage_event(job: &Job<'_>, kind: EventType, error: Option<&str>, audit: &AuditLog) {
    let Some(lineage) = job.lineage.filter(|_| job.mode == Mode::Sync) else {
        return;
    };
    match lineage.emit(kind, error).await {
        Ok(()) => audit.record("lineage.emit", Outcome::Success, None, None),
        Err(e) => {
            tracing::warn!(error = %e, "lineage event not delivered");
            audit.record(
                "lineage.emit",
                Outcome::Failure,
                Some("LineageSinkFailed"),
                None,
            );
        }
    }
}

/// Runs the job, between lineage START and COMPLETE/FAIL events.
pub async fn execute_with_rotation<F, Fut>(
    job: Job<'_>,
    secrets: SecretsDir,
    reread: F,
    audit: &AuditLog,
    progress: Arc<Progress>,
) -> Result<Report, Failure>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<SecretsDir, Failure>>,
{
    lineage_event(&job, EventType::Start, None, audit).await;
    let outcome = rotating(job, secrets, reread, audit, progress).await;
    match &outcome {
        Ok(_) => lineage_event(&job, EventType::Complete, None, audit).await,
        Err(f) => lineage_event(&job, EventType::Fail, Some(&f.to_string()), audit).await,
    }
    outcome
}

/// `secrets` with the credentials the Connector keeps in the platform's Vault
/// or in AWS Secrets Manager: read by the run with its own identity, each read
/// audited with its name and version (never a value).
async fn with_store_secrets(
    job: &Job<'_>,
    secrets: SecretsDir,
    audit: &AuditLog,
) -> Result<SecretsDir, Failure> {
    let vault = vault::fetch(job.platform.vault.as_ref(), &job.connector.spec)
        .await
        .map_err(|e| refused_read(audit, e.reason(), e))?;
    let aws = crate::aws::fetch(&job.connector.spec, job.platform)
        .await
        .map_err(|e| refused_read(audit, e.reason(), e))?;
    let mut secrets = secrets;
    for fetched in [vault, aws] {
        for read in &fetched.reads {
            let what = format!("{}@{}", read.name, read.version);
            audit.record("secret.read", Outcome::Success, None, Some(&what));
        }
        secrets = secrets.with_store_secrets(fetched.secrets);
    }
    Ok(secrets)
}

/// Runs the job; after an authentication failure reads the Secrets (and the
/// Vault secrets) again with `reread` and, if they changed, tries once more.
async fn rotating<F, Fut>(
    job: Job<'_>,
    secrets: SecretsDir,
    reread: F,
    audit: &AuditLog,
    progress: Arc<Progress>,
) -> Result<Report, Failure>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<SecretsDir, Failure>>,
{
    let secrets = with_store_secrets(&job, secrets, audit).await?;
    let first = execute(job, &secrets, audit, progress.clone()).await;
    match first {
        Err(f) if f.reason == Reason::InvalidCredentials => {
            audit.record(
                "auth.failure",
                Outcome::Failure,
                Some(f.reason.as_str()),
                None,
            );
            let fresh = with_store_secrets(&job, reread().await?, audit).await?;
            if fresh == secrets {
                return Err(f);
            }
            audit.record(
                "secret.reread",
                Outcome::Success,
                Some("CredentialsRotated"),
                None,
            );
            tracing::info!("credentials were refused; the Secrets changed since, trying once more");
            let second = execute(job, &fresh, audit, progress).await;
            if let Err(f) = &second
                && f.reason == Reason::InvalidCredentials
            {
                audit.record(
                    "auth.failure",
                    Outcome::Failure,
                    Some(f.reason.as_str()),
                    None,
                );
            }
            second
        }
        other => other,
    }
}

/// What local and cluster mode both set up around a job: its audit trail and
/// its lineage run.
#[derive(Debug)]
pub struct Prepared {
    pub audit: AuditLog,
    pub lineage: Option<Lineage>,
}

/// Prepares a run of `connector` in `namespace`, named `run`: its audit lines
/// go to `audit_out`; lineage events (when there is a sink and the run touches
/// streams tagged sensitive) name the OpenLineage run `lineage_run`.
pub fn prepare(
    connector: &Connector,
    namespace: &str,
    run: &str,
    lineage_run: &str,
    audit_out: Box<dyn Write + Send>,
    sink: Option<Sink>,
) -> Prepared {
    let name = connector.metadata.name.as_deref().unwrap_or("connector");
    let spec = &connector.spec;
    Prepared {
        audit: AuditLog::new(
            audit_out,
            name,
            namespace,
            run,
            &spec.source.system(),
            &spec.destination.system(),
        ),
        lineage: sink.and_then(|sink| Lineage::for_run(spec, namespace, name, lineage_run, sink)),
    }
}

/// Runs a prepared job between its `run.started` and `run.finished` audit
/// lines: the Secrets come from `secrets`, and again from `reread` after an
/// authentication failure.
pub async fn perform<S, F, Fut>(
    job: Job<'_>,
    secrets: S,
    reread: F,
    audit: &AuditLog,
    progress: Arc<Progress>,
) -> Result<Report, Failure>
where
    S: Future<Output = Result<SecretsDir, Failure>>,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<SecretsDir, Failure>>,
{
    audit.record("run.started", Outcome::Success, None, None);
    let vault = job.platform.vault.clone();
    let outcome = match secrets.await {
        Ok(secrets) => execute_with_rotation(job, secrets, reread, audit, progress).await,
        Err(f) => Err(f),
    };
    // The run's Vault token ends with the run, not when its TTL runs out.
    if let Some(vault) = vault {
        vault.log_out().await;
    }
    match &outcome {
        Ok(_) => audit.record("run.finished", Outcome::Success, None, None),
        Err(f) => audit.record(
            "run.finished",
            Outcome::Failure,
            Some(f.reason.as_str()),
            None,
        ),
    }
    outcome
}
