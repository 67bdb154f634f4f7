//! OpenLineage run events for runs that touch sensitive streams: START when the
//! run begins, COMPLETE or FAIL when it ends, with one input and one output
//! dataset per sensitive stream, each carrying the stream's sensitivity tags in
//! the standard `tags` dataset facet (and, for a minimised stream, the columns
//! kept in the `schema` facet of the output).
//!
//! Sinks: an HTTP endpoint (the event is POSTed as JSON; https, or http to a
//! loopback host with the explicit opt-out) or a file (one event per line).
//! A sink that fails is logged and audited; the transfer itself goes on.
//! Events name systems, datasets and tags: never a credential, never data.

use std::io::Write;
use std::path::PathBuf;

use ferry_crds::{ConnectorSpec, Endpoint, EndpointKind};
use serde_json::{Value, json};

use crate::storage::check_endpoint_url;

/// Who produced the events (the OpenLineage `producer` URI).
pub const PRODUCER: &str = concat!(
    "https://github.com/ferry-dev/ferry/tree/v",
    env!("CARGO_PKG_VERSION"),
    "/job-runner"
);
const RUN_EVENT_SCHEMA: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";
const TAGS_SCHEMA: &str =
    "https://openlineage.io/spec/facets/1-0-0/TagsDatasetFacet.json#/$defs/TagsDatasetFacet";
const SCHEMA_SCHEMA: &str =
    "https://openlineage.io/spec/facets/1-2-0/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet";
const ERROR_SCHEMA: &str = "https://openlineage.io/spec/facets/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet";

/// Where events go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// POSTed, one event per request.
    Http {
        url: String,
        client: reqwest::Client,
    },
    /// Appended, one event per line.
    File(PathBuf),
}

/// A sink could not be set up or did not take an event.
#[derive(Debug, thiserror::Error)]
pub enum LineageError {
    #[error("lineage endpoint refused: {0}")]
    Endpoint(String),
    #[error("failed to send a lineage event to {url}: {reason}")]
    Send { url: String, reason: String },
    #[error("failed to write a lineage event to {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Sink {
    /// An HTTP sink: `https://` (TLS 1.2 at least), or `http://` to a loopback
    /// host when `allow_plain_loopback` is set.
    pub fn http(url: &str, allow_plain_loopback: bool) -> Result<Self, LineageError> {
        check_endpoint_url("lineage", url, allow_plain_loopback)
            .map_err(|e| LineageError::Endpoint(e.to_string()))?;
        let client = reqwest::Client::builder()
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
            .https_only(!url.starts_with("http://"))
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| LineageError::Endpoint(e.to_string()))?;
        Ok(Sink::Http {
            url: url.to_string(),
            client,
        })
    }

    async fn send(&self, event: &Value) -> Result<(), LineageError> {
        match self {
            Sink::Http { url, client } => {
                let fail = |reason: String| LineageError::Send {
                    url: redact_url(url),
                    reason,
                };
                let resp = client
                    .post(url)
                    .json(event)
                    .send()
                    .await
                    .map_err(|e| fail(error_chain(&e)))?;
                if !resp.status().is_success() {
                    return Err(fail(format!("HTTP {}", resp.status())));
                }
                Ok(())
            }
            Sink::File(path) => {
                let line = format!("{event}\n");
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .and_then(|mut f| f.write_all(line.as_bytes()))
                        .map_err(|source| LineageError::File {
                            path: path.display().to_string(),
                            source,
                        })
                })
                .await
                .map_err(|e| LineageError::File {
                    path: String::new(),
                    source: std::io::Error::other(e.to_string()),
                })?
            }
        }
    }
}

/// The URL without its query (which may hold a token) or user info.
fn redact_url(url: &str) -> String {
    let no_query = url.split(['?', '#']).next().unwrap_or_default();
    match no_query.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
            format!("{scheme}://{rest}")
        }
        None => no_query.to_string(),
    }
}

/// An error and its causes, one line (TLS alerts are in the causes).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// The state of a run's event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Start,
    Complete,
    Fail,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Start => "START",
            EventType::Complete => "COMPLETE",
            EventType::Fail => "FAIL",
        }
    }
}

/// The lineage of one run.
#[derive(Debug, Clone)]
pub struct Lineage {
    sink: Sink,
    run_id: String,
    job_namespace: String,
    job_name: String,
    inputs: Vec<Value>,
    outputs: Vec<Value>,
}

/// OpenLineage's dataset namespace of an endpoint, and the path its datasets'
/// names start with.
fn dataset_base(endpoint: &Endpoint) -> Option<(String, String)> {
    Some(match endpoint.kind()? {
        EndpointKind::S3(s) => (format!("s3://{}", s.bucket), s.prefix.clone()),
        EndpointKind::AzureBlob(a) => (
            format!(
                "wasbs://{}@{}.blob.core.windows.net",
                a.container, a.account
            ),
            a.prefix.clone(),
        ),
        EndpointKind::Sftp(s) => (
            format!("sftp://{}:{}", s.host, s.port),
            format!("{}/", s.path.trim_end_matches('/')),
        ),
        EndpointKind::Local(l) => (
            "file".to_string(),
            format!("{}/", l.path.trim_end_matches('/')),
        ),
    })
}

impl Lineage {
    /// The lineage of a run of `spec`, or `None` when no stream is tagged
    /// sensitive. `run_key` identifies the run (the ConnectorRun's uid and the
    /// attempt in a cluster; a random value in local mode) and becomes the
    /// OpenLineage run id.
    pub fn for_run(
        spec: &ConnectorSpec,
        tenant: &str,
        connector: &str,
        run_key: &str,
        sink: Sink,
    ) -> Option<Self> {
        let sensitive: Vec<_> = spec
            .streams
            .iter()
            .filter(|s| !s.sensitivity.is_empty())
            .collect();
        if sensitive.is_empty() {
            return None;
        }
        let (src_ns, src_base) = dataset_base(&spec.source)?;
        let (dst_ns, dst_base) = dataset_base(&spec.destination)?;
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        for s in sensitive {
            let tags = json!({
                "_producer": PRODUCER,
                "_schemaURL": TAGS_SCHEMA,
                "tags": s.sensitivity.iter().map(|t| json!({
                    "key": t.as_str(),
                    "value": "true",
                    "source": "ferry",
                })).collect::<Vec<_>>(),
            });
            inputs.push(json!({
                "namespace": src_ns,
                "name": format!("{src_base}{}", s.match_glob),
                "facets": {"tags": tags},
            }));
            let mut out_facets = json!({"tags": tags});
            if !s.fields.is_empty() {
                out_facets["schema"] = json!({
                    "_producer": PRODUCER,
                    "_schemaURL": SCHEMA_SCHEMA,
                    "fields": s.fields.iter().map(|f| json!({"name": f})).collect::<Vec<_>>(),
                });
            }
            outputs.push(json!({
                "namespace": dst_ns,
                "name": format!("{dst_base}{}", s.match_glob),
                "facets": out_facets,
            }));
        }
        Some(Self {
            sink,
            run_id: run_uuid(run_key),
            job_namespace: format!("ferry/{tenant}"),
            job_name: connector.to_string(),
            inputs,
            outputs,
        })
    }

    /// The OpenLineage run id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The event of `kind`; `error` goes into the FAIL event's error facet.
    pub fn event(&self, kind: EventType, error: Option<&str>) -> Value {
        let mut run = json!({"runId": self.run_id});
        if let (EventType::Fail, Some(message)) = (kind, error) {
            run["facets"] = json!({"errorMessage": {
                "_producer": PRODUCER,
                "_schemaURL": ERROR_SCHEMA,
                "message": message,
                "programmingLanguage": "RUST",
            }});
        }
        json!({
            "eventType": kind.as_str(),
            "eventTime": jiff::Timestamp::now().to_string(),
            "producer": PRODUCER,
            "schemaURL": RUN_EVENT_SCHEMA,
            "run": run,
            "job": {"namespace": self.job_namespace, "name": self.job_name},
            "inputs": self.inputs,
            "outputs": self.outputs,
        })
    }

    /// Sends the event of `kind`.
    pub async fn emit(&self, kind: EventType, error: Option<&str>) -> Result<(), LineageError> {
        self.sink.send(&self.event(kind, error)).await
    }
}

/// A UUID (version 8, RFC 9562) derived from `key` with SHA-256, so the same
/// run and attempt always get the same run id.
pub fn run_uuid(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("ferry/openlineage-run/v1\0{key}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> ConnectorSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const SPEC: &str = "source: {s3: {bucket: raw, prefix: exports/, region: eu-west-1, credentials: {secretRef: {name: s3}}}}\ndestination: {azureBlob: {account: acct, container: bronze, prefix: in/, region: eu-west-1, credentials: {secretRef: {name: az}}}}\nencryption: {keyRef: {secretRef: {name: k}}}\n";

    fn sink() -> Sink {
        Sink::File(PathBuf::from("/dev/null"))
    }

    #[test]
    fn only_sensitive_streams_have_lineage() {
        assert!(Lineage::for_run(&spec(SPEC), "acme", "c", "r", sink()).is_none());
        let plain = format!("{SPEC}streams: [{{name: logs, match: 'logs/**'}}]\n");
        assert!(Lineage::for_run(&spec(&plain), "acme", "c", "r", sink()).is_none());
    }

    #[test]
    fn datasets_carry_tags_and_kept_columns() {
        let s = format!(
            "{SPEC}streams: [{{name: customers, match: 'customers/**', sensitivity: [pii, phi], fields: [id]}}, {{name: logs, match: 'logs/**'}}]\n"
        );
        let l = Lineage::for_run(&spec(&s), "acme", "sales", "uid-1/1", sink()).unwrap();
        let e = l.event(EventType::Start, None);
        assert_eq!(e["eventType"], "START");
        assert_eq!(
            e["job"],
            json!({"namespace": "ferry/acme", "name": "sales"})
        );
        assert_eq!(e["inputs"].as_array().unwrap().len(), 1);
        assert_eq!(e["inputs"][0]["namespace"], "s3://raw");
        assert_eq!(e["inputs"][0]["name"], "exports/customers/**");
        let tags = &e["inputs"][0]["facets"]["tags"]["tags"];
        assert_eq!(tags[0]["key"], "pii");
        assert_eq!(tags[1]["key"], "phi");
        assert_eq!(
            e["outputs"][0]["namespace"],
            "wasbs://bronze@acct.blob.core.windows.net"
        );
        assert_eq!(
            e["outputs"][0]["facets"]["schema"]["fields"][0]["name"],
            "id"
        );
        assert!(e["run"].get("facets").is_none());
        let f = l.event(EventType::Fail, Some("InvalidCredentials: s3://raw"));
        assert_eq!(
            f["run"]["facets"]["errorMessage"]["message"],
            "InvalidCredentials: s3://raw"
        );
        assert_eq!(f["run"]["runId"], e["run"]["runId"]);
    }

    #[test]
    fn run_ids_are_stable_uuids() {
        let a = run_uuid("uid/1");
        assert_eq!(a, run_uuid("uid/1"));
        assert_ne!(a, run_uuid("uid/2"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn http_sinks_follow_the_endpoint_rules() {
        assert!(Sink::http("http://lineage.example.com/api/v1/lineage", true).is_err());
        assert!(Sink::http("http://127.0.0.1:5000/api/v1/lineage", false).is_err());
        assert!(Sink::http("http://127.0.0.1:5000/api/v1/lineage", true).is_ok());
        assert!(Sink::http("https://lineage.example.com/api/v1/lineage", false).is_ok());
        assert_eq!(
            redact_url("https://user:pw@h.example/p?token=abc"),
            "https://h.example/p"
        );
    }
}
