//! The runner's audit trail: one line per security-relevant action, in the
//! schema both the operator and the runner write ([`ferry_crds::AuditRecord`]).

use std::io::Write;

use ferry_crds::Attribution;
pub use ferry_crds::contract::Outcome;
use ferry_crds::contract::{Actor, AuditRecord, AuditSink};

/// Where audit lines go, with the fields common to a run.
#[derive(Clone)]
pub struct AuditLog {
    sink: AuditSink,
    pub connector: String,
    pub tenant: String,
    pub run: String,
    pub source: String,
    pub destination: String,
    /// Who asked for the run, as the operator recorded it.
    pub attribution: Attribution,
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
            sink: AuditSink::new(&format!("runner/{tenant}/{run}"), out),
            connector: connector.into(),
            tenant: tenant.into(),
            run: run.into(),
            source: source.into(),
            destination: destination.into(),
            attribution: Attribution::default(),
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
        let record = AuditRecord {
            timestamp: jiff::Timestamp::now().to_string(),
            action: action.into(),
            outcome,
            reason: reason.map(str::to_string),
            connector: self.connector.clone(),
            tenant: self.tenant.clone(),
            run: self.run.clone(),
            source: self.source.clone(),
            destination: self.destination.clone(),
            object: object.map(str::to_string),
            actor: Actor::Runner,
            attribution: self.attribution.clone(),
        };
        self.sink.record(&record);
    }
}
