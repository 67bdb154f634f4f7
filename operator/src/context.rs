//! What every reconcile shares.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;

use crate::audit::{AuditLog, Record};
use crate::config::Config;
use crate::metrics::{Metrics, Queue};
use crate::run_cache::RunCache;

/// The current time; replaceable in tests.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Shared state of the controllers.
#[derive(Clone)]
pub struct Context {
    /// Client of the Kubernetes API.
    pub client: Client,
    /// The operator's own configuration.
    pub config: Config,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// The audit trail.
    pub audit: AuditLog,
    /// The current time.
    pub clock: Clock,
    /// Connectors changed and not yet reconciled.
    pub connector_queue: Arc<Queue>,
    /// ConnectorRuns changed and not yet reconciled.
    pub run_queue: Arc<Queue>,
    /// Every namespace, kept current by a watch: the tenants' region labels and
    /// sensitivity caps.
    pub namespaces: Store<Namespace>,
    /// Every ConnectorRun in the operator's scopes, filled by the Connector
    /// controllers' watch of them.
    pub runs: RunCache,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context with the system clock.
    pub fn new(
        client: Client,
        config: Config,
        metrics: Arc<Metrics>,
        audit: AuditLog,
        namespaces: Store<Namespace>,
        runs: RunCache,
    ) -> Self {
        let recorder = Recorder::new(client.clone(), Reporter::from("ferry-operator"));
        Self {
            client,
            config,
            metrics,
            recorder,
            audit,
            clock: Arc::new(Timestamp::now),
            connector_queue: Arc::default(),
            run_queue: Arc::default(),
            namespaces,
            runs,
        }
    }

    /// Now.
    pub fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// Publishes an Event. A failure to publish is logged, never fatal: the
    /// status and the audit trail still say what happened.
    pub async fn event(
        &self,
        reference: &ObjectReference,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(truncate(note, 1024)),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, reference).await {
            tracing::warn!(reason, error = %e, "failed to publish an event");
        }
    }

    /// Writes an audit record.
    pub fn audit(&self, record: &Record) {
        self.audit.record(record);
    }
}

/// At most `max` bytes of `s`, cut on a character boundary.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}
