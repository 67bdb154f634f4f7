//! The operator's audit trail: one JSON line per security-relevant action, the
//! same schema as the runner's (docs/security.md). Systems are named by type and
//! host/bucket, never with a credential.

use std::io::Write;
use std::sync::{Arc, Mutex};

use ferry_crds::ConnectorSpec;
use serde::Serialize;

/// Outcome of an audited action.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

/// One audit record.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub timestamp: String,
    pub action: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub connector: String,
    pub tenant: String,
    pub run: String,
    pub source: String,
    pub destination: String,
    pub actor: &'static str,
}

impl Record {
    /// A record about `run` of a Connector with this spec.
    pub fn new(
        action: &str,
        outcome: Outcome,
        reason: Option<&str>,
        tenant: &str,
        connector: &str,
        run: &str,
        spec: Option<&ConnectorSpec>,
    ) -> Self {
        Self {
            timestamp: jiff::Timestamp::now().to_string(),
            action: action.to_string(),
            outcome,
            reason: reason.map(str::to_string),
            connector: connector.to_string(),
            tenant: tenant.to_string(),
            run: run.to_string(),
            source: spec.map(|s| s.source.system()).unwrap_or_default(),
            destination: spec.map(|s| s.destination.system()).unwrap_or_default(),
            actor: "operator",
        }
    }
}

/// Where audit lines go: stdout by default (collected with the logs, as one JSON
/// object per line), or a file.
#[derive(Clone)]
pub struct AuditLog {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

impl AuditLog {
    /// An audit log writing to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Arc::new(Mutex::new(out)),
        }
    }

    /// An audit log that keeps its lines in memory, for tests.
    pub fn memory() -> (Self, Arc<Mutex<Vec<u8>>>) {
        let buf = Arc::new(Mutex::new(Vec::new()));
        (Self::new(Box::new(SharedBuf(buf.clone()))), buf)
    }

    /// Writes one record. A line that cannot be written is reported on stderr:
    /// losing it silently would defeat its purpose.
    pub fn record(&self, record: &Record) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("failed to encode an audit record: {e}");
                return;
            }
        };
        line.push(b'\n');
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = out.write_all(&line).and_then(|()| out.flush()) {
            eprintln!("failed to write an audit record: {e}");
        }
    }
}

struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
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
