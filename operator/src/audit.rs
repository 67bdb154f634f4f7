//! The operator's audit trail: one JSON line per security-relevant action, the
//! same schema as the runner's (docs/security.md). Systems are named by type and
//! host/bucket, never with a credential.

use ferry_crds::{Attribution, ConnectorSpec};

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
        attribution: Default::default(),
    }
}

/// Adds who asked for the run to a record.
pub trait Attributed {
    /// The record, naming who asked for the run.
    fn by(self, attribution: &Attribution) -> Self;
}

impl Attributed for Record {
    fn by(mut self, attribution: &Attribution) -> Self {
        self.attribution = attribution.clone();
        self
    }
}

/// Where audit lines go: stdout by default (collected with the logs, as one
/// JSON object per line), or a file.
pub type AuditLog = ferry_crds::contract::AuditSink;
