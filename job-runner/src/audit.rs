//! Audit records: one JSON line per security-relevant action. A record names
//! systems (type and host/bucket/folder), never a credential and never data.

use std::io::Write;
use std::sync::{Arc, Mutex};

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
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Record<'a> {
    pub timestamp: String,
    pub action: &'a str,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    pub connector: &'a str,
    pub tenant: &'a str,
    pub run: &'a str,
    pub source: &'a str,
    pub destination: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<&'a str>,
}

/// Where audit lines go, with the fields common to a run.
#[derive(Clone)]
pub struct AuditLog {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    pub connector: String,
    pub tenant: String,
    pub run: String,
    pub source: String,
    pub destination: String,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// An audit log writing to `out`.
    pub fn new(
        out: Box<dyn Write + Send>,
        connector: &str,
        tenant: &str,
        run: &str,
        source: &str,
        destination: &str,
    ) -> Self {
        Self {
            out: Arc::new(Mutex::new(out)),
            connector: connector.into(),
            tenant: tenant.into(),
            run: run.into(),
            source: source.into(),
            destination: destination.into(),
        }
    }

    /// Writes one record. An audit line that cannot be written is reported on
    /// stderr: losing it silently would defeat its purpose.
    pub fn record(
        &self,
        action: &str,
        outcome: Outcome,
        reason: Option<&str>,
        object: Option<&str>,
    ) {
        let rec = Record {
            timestamp: jiff::Timestamp::now().to_string(),
            action,
            outcome,
            reason,
            connector: &self.connector,
            tenant: &self.tenant,
            run: &self.run,
            source: &self.source,
            destination: &self.destination,
            object,
        };
        let line = match serde_json::to_string(&rec) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("audit: failed to encode a record: {e}");
                return;
            }
        };
        let mut out = match self.out.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            eprintln!("audit: failed to write a record: {e}");
        }
    }
}
