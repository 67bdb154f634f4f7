//! The contract between the operator and the runner it starts: the reasons a
//! run fails for and what each means (retried or not, a policy refusal or
//! not), the environment of a run's pod, where tokens are projected, and the
//! audit record both write. The operator builds the pod from these names and
//! the runner reads it by them, so neither side can drift from the other.

use serde::{Deserialize, Serialize};

/// Why a run (or one attempt of it) failed: the `reason` of the runner's
/// reported error, of the run's conditions and Events, of audit lines and
/// metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    // Credentials and identities.
    InvalidCredentials,
    AccessDenied,
    HostKeyMismatch,
    InvalidHostKey,
    SecretKeyMissing,
    SecretNotOptedIn,
    SecretTypeRefused,
    InvalidEncryptionKey,
    SecretStoreDenied,
    // Policy, as only the runner can see it.
    ResidencyViolation,
    SensitivityNotAllowed,
    NotProjectable,
    ObjectsRefused,
    // The run itself.
    InvalidSpec,
    NotAdmitted,
    PinnedSpecTampered,
    IntegrityFailure,
    ContainerNotFound,
    // What another attempt may get past.
    ObjectNotFound,
    EndpointUnreachable,
    NoSpace,
    ObjectChanged,
    InvalidKey,
    StorageError,
    SourceError,
    EncryptionFailure,
    ObjectsFailed,
    KubernetesUnreachable,
    SecretStoreUnreachable,
}

impl Reason {
    /// Every reason, for tests and documentation.
    pub const ALL: [Reason; 29] = [
        Reason::InvalidCredentials,
        Reason::AccessDenied,
        Reason::HostKeyMismatch,
        Reason::InvalidHostKey,
        Reason::SecretKeyMissing,
        Reason::SecretNotOptedIn,
        Reason::SecretTypeRefused,
        Reason::InvalidEncryptionKey,
        Reason::SecretStoreDenied,
        Reason::ResidencyViolation,
        Reason::SensitivityNotAllowed,
        Reason::NotProjectable,
        Reason::ObjectsRefused,
        Reason::InvalidSpec,
        Reason::NotAdmitted,
        Reason::PinnedSpecTampered,
        Reason::IntegrityFailure,
        Reason::ContainerNotFound,
        Reason::ObjectNotFound,
        Reason::EndpointUnreachable,
        Reason::NoSpace,
        Reason::ObjectChanged,
        Reason::InvalidKey,
        Reason::StorageError,
        Reason::SourceError,
        Reason::EncryptionFailure,
        Reason::ObjectsFailed,
        Reason::KubernetesUnreachable,
        Reason::SecretStoreUnreachable,
    ];

    /// The reason as conditions, Events, audit lines and metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidCredentials => "InvalidCredentials",
            Reason::AccessDenied => "AccessDenied",
            Reason::HostKeyMismatch => "HostKeyMismatch",
            Reason::InvalidHostKey => "InvalidHostKey",
            Reason::SecretKeyMissing => "SecretKeyMissing",
            Reason::SecretNotOptedIn => "SecretNotOptedIn",
            Reason::SecretTypeRefused => "SecretTypeRefused",
            Reason::InvalidEncryptionKey => "InvalidEncryptionKey",
            Reason::SecretStoreDenied => "SecretStoreDenied",
            Reason::ResidencyViolation => "ResidencyViolation",
            Reason::SensitivityNotAllowed => "SensitivityNotAllowed",
            Reason::NotProjectable => "NotProjectable",
            Reason::ObjectsRefused => "ObjectsRefused",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::NotAdmitted => "NotAdmitted",
            Reason::PinnedSpecTampered => "PinnedSpecTampered",
            Reason::IntegrityFailure => "IntegrityFailure",
            Reason::ContainerNotFound => "ContainerNotFound",
            Reason::ObjectNotFound => "ObjectNotFound",
            Reason::EndpointUnreachable => "EndpointUnreachable",
            Reason::NoSpace => "NoSpace",
            Reason::ObjectChanged => "ObjectChanged",
            Reason::InvalidKey => "InvalidKey",
            Reason::StorageError => "StorageError",
            Reason::SourceError => "SourceError",
            Reason::EncryptionFailure => "EncryptionFailure",
            Reason::ObjectsFailed => "ObjectsFailed",
            Reason::KubernetesUnreachable => "KubernetesUnreachable",
            Reason::SecretStoreUnreachable => "SecretStoreUnreachable",
        }
    }

    /// The reason spelled `s`, if it is one of the runner's.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether another attempt may succeed. Credentials, policy, integrity and
    /// configuration failures fail the same way again.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Reason::ObjectNotFound
                | Reason::EndpointUnreachable
                | Reason::NoSpace
                | Reason::ObjectChanged
                | Reason::InvalidKey
                | Reason::StorageError
                | Reason::SourceError
                | Reason::EncryptionFailure
                | Reason::ObjectsFailed
                | Reason::KubernetesUnreachable
                | Reason::SecretStoreUnreachable
        )
    }

    /// Whether the runner refused the run for a policy (what only it can see:
    /// where a bucket really is, an object's stream, a file that cannot be
    /// minimised, a Secret it may not read). The operator counts these with
    /// its own denials and shows a `PolicyViolation` condition.
    pub fn policy_refusal(self) -> bool {
        matches!(
            self,
            Reason::ResidencyViolation
                | Reason::SensitivityNotAllowed
                | Reason::NotProjectable
                | Reason::ObjectsRefused
                | Reason::SecretNotOptedIn
                | Reason::SecretTypeRefused
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for Reason {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

/// Whether an attempt that failed for `reason` may be tried again: the
/// contract decides for the runner's reasons; for any other (a runner of
/// another version) the runner's own word stands.
pub fn retryable(reason: &str, runner_says: bool) -> bool {
    Reason::parse(reason).map_or(runner_says, Reason::retryable)
}

/// Whether `reason` is one of the runner's policy refusals.
pub fn policy_refusal(reason: &str) -> bool {
    Reason::parse(reason).is_some_and(Reason::policy_refusal)
}

/// The environment of a run's pod: set by the operator, read by the runner.
pub mod env {
    /// Name of the ConnectorRun.
    pub const RUN_NAME: &str = "FERRY_RUN_NAME";
    /// Its namespace (from the downward API).
    pub const RUN_NAMESPACE: &str = "FERRY_RUN_NAMESPACE";
    /// Which attempt the pod is, from 1.
    pub const RUN_ATTEMPT: &str = "FERRY_RUN_ATTEMPT";
    /// Hash of the Connector spec pinned for the run; the runner checks the
    /// spec it reads from the run's record against it.
    pub const SPEC_HASH: &str = "FERRY_SPEC_HASH";
    /// The manifest the destination's record must reach (`SEQUENCE:LINK`).
    pub const MANIFEST_ANCHOR: &str = "FERRY_MANIFEST_ANCHOR";
    /// The tenant's region (the namespace's `ferry.dev/region` label).
    pub const TENANT_REGION: &str = "FERRY_TENANT_REGION";
    /// Objects copied at once.
    pub const CONCURRENCY: &str = "FERRY_CONCURRENCY";
    /// Seconds between progress reports.
    pub const PROGRESS_INTERVAL: &str = "FERRY_PROGRESS_INTERVAL";
    /// Base folder of relative local paths.
    pub const BASE_DIR: &str = "FERRY_BASE_DIR";
    /// Log format on stderr (`json` in a pod).
    pub const LOG_FORMAT: &str = "FERRY_LOG_FORMAT";
    /// The log filter.
    pub const RUST_LOG: &str = "RUST_LOG";
    /// Where OpenLineage events go.
    pub const LINEAGE_URL: &str = "FERRY_LINEAGE_URL";
    /// The STS endpoint the platform team configured (none: the official
    /// regional endpoint).
    pub const STS_ENDPOINT: &str = "FERRY_STS_ENDPOINT";
    /// The endpoint of AWS Secrets Manager and KMS the platform team
    /// configured (none: the official regional endpoints).
    pub const AWS_ENDPOINT: &str = "FERRY_AWS_ENDPOINT";
    /// Networks (CIDRs, comma separated) the runner refuses to connect to,
    /// besides those it always refuses.
    pub const DENIED_NETWORKS: &str = "FERRY_DENIED_NETWORKS";
    /// Private networks (CIDRs, comma separated) the runner may connect to
    /// (private ranges are denied by default, [`crate::network`]).
    pub const ALLOWED_NETWORKS: &str = "FERRY_ALLOWED_NETWORKS";
    /// The pod's `activeDeadlineSeconds`: the runner's cloud sessions (STS)
    /// end soon after the run must.
    pub const ACTIVE_DEADLINE_SECONDS: &str = "FERRY_ACTIVE_DEADLINE_SECONDS";
    /// The AWS web identity token file (the AWS SDKs' own variable).
    pub const AWS_WEB_IDENTITY_TOKEN_FILE: &str = "AWS_WEB_IDENTITY_TOKEN_FILE";
    /// The Azure federated token file (Azure workload identity's variable).
    pub const AZURE_FEDERATED_TOKEN_FILE: &str = "AZURE_FEDERATED_TOKEN_FILE";
    /// The shard this pod is of a run spread over several (`INDEX/COUNT`,
    /// the index from 0).
    pub const SHARD: &str = "FERRY_SHARD";
    /// Set on the last step of a run spread over shards: how many there
    /// are. The pod writes the run's manifest from the shards' parts.
    pub const SHARDS: &str = "FERRY_SHARDS";
    /// The platform's Vault (or OpenBao) address.
    pub const VAULT_ADDR: &str = "FERRY_VAULT_ADDR";
    /// The mount of its JWT auth method.
    pub const VAULT_AUTH_MOUNT: &str = "FERRY_VAULT_AUTH_MOUNT";
    /// The role a run logs in as.
    pub const VAULT_ROLE: &str = "FERRY_VAULT_ROLE";
    /// The run's projected token for Vault.
    pub const VAULT_TOKEN_FILE: &str = "FERRY_VAULT_TOKEN_FILE";
}

/// Where a run's pod holds its projected tokens.
pub mod paths {
    /// The Kubernetes API token, CA and namespace: where Kubernetes clients
    /// look in a pod.
    pub const API_ACCESS_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    /// The folder of the AWS web identity token.
    pub const AWS_TOKEN_DIR: &str = "/var/run/secrets/ferry.dev/aws";
    /// The AWS web identity token.
    pub const AWS_TOKEN_FILE: &str = "/var/run/secrets/ferry.dev/aws/token";
    /// The folder of the Azure federated token.
    pub const AZURE_TOKEN_DIR: &str = "/var/run/secrets/ferry.dev/azure";
    /// The Azure federated token.
    pub const AZURE_TOKEN_FILE: &str = "/var/run/secrets/ferry.dev/azure/token";
    /// The folder of the run's token for Vault.
    pub const VAULT_TOKEN_DIR: &str = "/var/run/secrets/ferry.dev/vault";
    /// The run's token for Vault.
    pub const VAULT_TOKEN_FILE: &str = "/var/run/secrets/ferry.dev/vault/token";
    /// The file name of a token in its projected folder.
    pub const TOKEN_FILE_NAME: &str = "token";
    /// The runner's scratch space (a memory-backed emptyDir).
    pub const SCRATCH_DIR: &str = "/tmp";
}

/// Outcome of an audited action.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

/// Who wrote an audit line.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Actor {
    Operator,
    Runner,
}

/// One audit line: the same schema from the operator and the runner
/// (docs/security.md, "What is logged"). It names systems (type and
/// host/bucket/folder), never a credential and never data.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// RFC 3339, UTC.
    pub timestamp: String,
    pub action: String,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub connector: String,
    pub tenant: String,
    pub run: String,
    pub source: String,
    pub destination: String,
    /// The object key, for per-object actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    pub actor: Actor,
    /// Who asked for the run (`requestedBy`, `connectorChangedBy`), when known.
    #[serde(flatten)]
    pub attribution: crate::Attribution,
}

impl AuditRecord {
    /// The record as one line of JSON, newline included.
    pub fn to_line(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut line = serde_json::to_vec(self)?;
        line.push(b'\n');
        Ok(line)
    }
}

/// Where audit lines go, for the operator and the runner alike: one JSON line
/// per record, flushed at once. A line that cannot be written is reported on
/// stderr: losing it silently would defeat its purpose.
///
/// Each sink is one writer of a tamper-evident chain: its lines carry the
/// writer's name (`writer`, unique to the process and sink), a sequence number
/// from 1 (`seq`) and the SHA-256 of the writer's previous line as written
/// (`prev`; 64 zeros for the first), so a deleted, edited or reordered line
/// breaks the chain where it was ([`verify_audit`]).
#[derive(Clone)]
pub struct AuditSink {
    writer: std::sync::Arc<str>,
    state: std::sync::Arc<std::sync::Mutex<Chain>>,
}

struct Chain {
    out: Box<dyn std::io::Write + Send>,
    seq: u64,
    prev: [u8; 32],
}

/// A record as a chained line carries it.
#[derive(Serialize)]
struct Chained<'a> {
    #[serde(flatten)]
    record: &'a AuditRecord,
    writer: &'a str,
    seq: u64,
    prev: String,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSink")
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

impl AuditSink {
    /// A sink writing to `out`, as a new writer named after `who` (for
    /// example `operator/<pod>` or `runner/<namespace>/<run>`), the time and
    /// the process.
    pub fn new(who: &str, out: Box<dyn std::io::Write + Send>) -> Self {
        static SINKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SINKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Self {
            writer: format!("{who}@{started:x}.{:x}.{n}", std::process::id()).into(),
            state: std::sync::Arc::new(std::sync::Mutex::new(Chain {
                out,
                seq: 0,
                prev: [0; 32],
            })),
        }
    }

    /// A sink that keeps its lines in memory, for tests.
    pub fn memory() -> (Self, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        (Self::new("memory", Box::new(SharedBuf(buf.clone()))), buf)
    }

    /// This sink's writer name, as its lines carry it.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// Writes one record, the next link of this writer's chain.
    pub fn record(&self, record: &AuditRecord) {
        use sha2::Digest;
        let mut chain = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let line = Chained {
            record,
            writer: &self.writer,
            seq: chain.seq + 1,
            prev: hex::encode(chain.prev),
        };
        let mut bytes = match serde_json::to_vec(&line) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("audit: failed to encode a record: {e}");
                return;
            }
        };
        chain.seq += 1;
        chain.prev = sha2::Sha256::digest(&bytes).into();
        bytes.push(b'\n');
        if let Err(e) = chain.out.write_all(&bytes).and_then(|()| chain.out.flush()) {
            eprintln!("audit: failed to write a record: {e}");
        }
    }
}

/// What [`verify_audit`] found in a stream of audit lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerified {
    /// Chained audit lines checked.
    pub lines: usize,
    /// Writers (processes) whose chains they form.
    pub writers: usize,
    /// Lines that are not chained audit records (other logs), left aside.
    pub ignored: usize,
}

/// The first line of a stream that breaks its writer's chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} (writer {writer}, seq {seq}): {what}")]
pub struct AuditBreak {
    /// The line's number in the stream, from 1.
    pub line: usize,
    pub writer: String,
    pub seq: u64,
    /// What is wrong with it.
    pub what: String,
}

/// Checks a stream of audit lines (one writer's or several interleaved, other
/// log lines mixed in): per writer, sequence numbers follow each other from 1
/// and each line names the SHA-256 of the writer's line before it. A line
/// deleted, edited or moved breaks the chain at the first line after it; the
/// break names that line. The lines must be kept byte for byte as written.
/// (Lines cut from the end of a writer leave no gap: the run's status and the
/// operator's records say how a run ended.)
pub fn verify_audit(text: &str) -> Result<AuditVerified, AuditBreak> {
    use sha2::Digest;
    // Per writer: its last sequence number, the hash of that line, its number.
    let mut writers: std::collections::BTreeMap<String, (u64, [u8; 32], usize)> =
        Default::default();
    let (mut lines, mut ignored) = (0, 0);
    for (n, raw) in text.lines().enumerate() {
        let Ok(serde_json::Value::Object(v)) = serde_json::from_str(raw) else {
            ignored += 1;
            continue;
        };
        let (Some(writer), Some(seq), Some(prev)) = (
            v.get("writer").and_then(|w| w.as_str()),
            v.get("seq").and_then(|s| s.as_u64()),
            v.get("prev").and_then(|p| p.as_str()),
        ) else {
            ignored += 1;
            continue;
        };
        let (last, hash, at) = writers.entry(writer.to_string()).or_insert((0, [0; 32], 0));
        if seq != *last + 1 {
            return Err(AuditBreak {
                line: n + 1,
                writer: writer.to_string(),
                seq,
                what: format!(
                    "sequence {seq} follows {last}: a line before it was deleted or moved"
                ),
            });
        }
        if prev != hex::encode(*hash) {
            // The line before it in this writer's chain is not what was written.
            return Err(AuditBreak {
                line: *at,
                writer: writer.to_string(),
                seq: *last,
                what: format!(
                    "edited or replaced: line {} names another line before it",
                    n + 1
                ),
            });
        }
        *last = seq;
        *hash = sha2::Sha256::digest(raw.as_bytes()).into();
        *at = n + 1;
        lines += 1;
    }
    Ok(AuditVerified {
        lines,
        writers: writers.len(),
        ignored,
    })
}

struct SharedBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_and_are_distinct() {
        let mut seen = std::collections::BTreeSet::new();
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
            assert!(seen.insert(r.as_str()), "{r} twice");
        }
        assert_eq!(Reason::parse("NoSuchReason"), None);
    }

    #[test]
    fn policy_refusals_are_never_retried() {
        for r in Reason::ALL.into_iter().filter(|r| r.policy_refusal()) {
            assert!(!r.retryable(), "{r}");
        }
        assert!(!retryable("InvalidCredentials", true));
        assert!(retryable("EndpointUnreachable", false));
        // A reason this version does not know: the runner's word stands.
        assert!(retryable("SomethingNew", true));
        assert!(!retryable("SomethingNew", false));
    }

    fn trail(writers: &[&str], lines: usize) -> String {
        let sinks: Vec<_> = writers
            .iter()
            .map(|w| {
                let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
                (AuditSink::new(w, Box::new(SharedBuf(buf.clone()))), buf)
            })
            .collect();
        for i in 0..lines {
            let (sink, _) = &sinks[i % sinks.len()];
            sink.record(&AuditRecord {
                timestamp: format!("2026-12-06T00:00:{i:02}Z"),
                action: "object.copy".into(),
                outcome: Outcome::Success,
                reason: None,
                connector: "c".into(),
                tenant: "t".into(),
                run: "r".into(),
                source: "s3:b".into(),
                destination: "azure:a/c".into(),
                object: Some(format!("k{i}")),
                actor: Actor::Runner,
                attribution: Default::default(),
            });
        }
        // Interleaved as a log pipeline would collect them, other logs between.
        let mut out = String::new();
        let texts: Vec<Vec<String>> = sinks
            .iter()
            .map(|(_, b)| {
                String::from_utf8(b.lock().unwrap().clone())
                    .unwrap()
                    .lines()
                    .map(String::from)
                    .collect()
            })
            .collect();
        for i in 0..lines {
            out.push_str(&texts[i % texts.len()][i / texts.len()]);
            out.push('\n');
            if i == 2 {
                out.push_str("{\"level\":\"INFO\",\"message\":\"not an audit line\"}\n");
            }
        }
        out
    }

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(String::from).collect()
    }

    #[test]
    fn an_intact_audit_trail_verifies() {
        let text = trail(&["runner/t/r", "operator/a"], 8);
        assert_eq!(
            verify_audit(&text),
            Ok(AuditVerified {
                lines: 8,
                writers: 2,
                ignored: 1
            })
        );
    }

    #[test]
    fn a_deleted_audit_line_is_found() {
        let mut l = lines(&trail(&["runner/t/r"], 6));
        l.remove(1); // the second record
        let err = verify_audit(&l.join("\n")).unwrap_err();
        assert_eq!((err.line, err.seq), (2, 3), "{err}");
        assert!(err.what.contains("deleted or moved"), "{err}");
    }

    #[test]
    fn an_edited_audit_line_is_named() {
        let mut l = lines(&trail(&["runner/t/r"], 6));
        l[1] = l[1].replace("\"success\"", "\"denied\"");
        let err = verify_audit(&l.join("\n")).unwrap_err();
        assert_eq!((err.line, err.seq), (2, 2), "the edited line itself: {err}");
        assert!(err.what.contains("edited"), "{err}");
    }

    #[test]
    fn swapped_audit_lines_are_found() {
        let mut l = lines(&trail(&["runner/t/r"], 6));
        l.swap(1, 2);
        let err = verify_audit(&l.join("\n")).unwrap_err();
        assert_eq!(err.line, 2, "{err}");
    }

    #[test]
    fn a_line_made_to_look_chained_does_not_verify() {
        // Renumbering the lines after a deletion: the hashes still break.
        let mut l = lines(&trail(&["runner/t/r"], 4));
        l.remove(1);
        for (i, line) in l.iter_mut().enumerate() {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            v["seq"] = (i as u64 + 1).into();
            *line = v.to_string();
        }
        assert!(verify_audit(&l.join("\n")).is_err());
    }

    #[test]
    fn token_files_are_in_their_folders() {
        for (dir, file) in [
            (paths::AWS_TOKEN_DIR, paths::AWS_TOKEN_FILE),
            (paths::AZURE_TOKEN_DIR, paths::AZURE_TOKEN_FILE),
        ] {
            assert_eq!(file, format!("{dir}/{}", paths::TOKEN_FILE_NAME));
        }
    }

    #[test]
    fn an_audit_line_reads_back() {
        let record = AuditRecord {
            timestamp: "2026-12-05T00:00:00Z".into(),
            action: "object.copy".into(),
            outcome: Outcome::Success,
            reason: None,
            connector: "c".into(),
            tenant: "t".into(),
            run: "r".into(),
            source: "local:a".into(),
            destination: "local:b".into(),
            object: Some("k".into()),
            actor: Actor::Runner,
            attribution: crate::Attribution {
                requested_by: Some("alice@example.com".into()),
                connector_changed_by: None,
            },
        };
        let line = record.to_line().unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        let text = String::from_utf8(line).unwrap();
        assert!(text.contains(r#""actor":"runner""#), "{text}");
        assert!(!text.contains("reason"), "{text}");
        assert!(
            text.contains(r#""requestedBy":"alice@example.com""#)
                && !text.contains("connectorChangedBy"),
            "{text}"
        );
        let back: AuditRecord = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(back, record);
    }
}
