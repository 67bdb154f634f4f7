//! The operator's audit trail: one JSON line per security-relevant action, the
//! same schema as the runner's (docs/security.md). Systems are named by type and
//! host/bucket, never with a credential.

use std::io::Write;
use std::sync::{Arc, Mutex};

use ferry_crds::ConnectorSpec;

pub use ferry_crds::contract::Outcome;
use ferry_crds::contract::{Actor, AuditRecord};

/// One audit record (the operator's lines carry `actor: operator`).
pub type Record = AuditRecord;

/// A record about `run` of a Connector with this spec.
pub fn record(
    action: &str,
    outcome: Outcome,
    reason: Option<&str>,
    tenant: &str,
    connector: &str,
    run: &str,
    spec: Option<&ConnectorSpec>,
) -> Record {
    AuditRecord {
        timestamp: jiff::Timestamp::now().to_string(),
        action: action.to_string(),
        outcome,
        reason: reason.map(str::to_string),
        connector: connector.to_string(),
        tenant: tenant.to_string(),
        run: run.to_string(),
        source: spec.map(|s| s.source.system()).unwrap_or_default(),
        destination: spec.map(|s| s.destination.system()).unwrap_or_default(),
        object: None,
        actor: Actor::Operator,
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
        let line = match record.to_line() {
            Ok(l) => l,
            Err(e) => {
                eprintln!("failed to encode an audit record: {e}");
                return;
            }
        };
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
