//! Errors of the reconcilers. Each has a stable category: a metric label and the
//! basis of the retry decision in `error_policy`.

use std::time::Duration;

use kube::runtime::controller::Action;

use crate::run::build::BuildError;

/// The step of a reconcile an error stopped: the error policy decides by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Reading what a decision needs: the object, its Connector, its Secrets,
    /// its pod.
    Read,
    /// Building a run's objects from its validated spec.
    Build,
    /// Creating or deleting what a decision asks for: a run's objects, a
    /// scheduled run, a pruned one.
    Act,
    /// Writing a run's record, the commit point of its decisions.
    Record,
    /// Writing a status.
    Status,
}

impl Step {
    /// The step's name, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Read => "read",
            Step::Build => "build",
            Step::Act => "act",
            Step::Record => "record",
            Step::Status => "status",
        }
    }
}

/// A reconcile that could not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to {action} {kind} {name:?}: {source}")]
    Kube {
        step: Step,
        action: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("failed to encode the status of {name:?}: {source}")]
    Encode {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "failed to create {kind} {name:?}: an object of that name exists that this run does not own"
    )]
    Foreign { kind: &'static str, name: String },
    #[error(
        "pod {name:?} claimed to be the run's but was not created by the operator: it was deleted"
    )]
    ForeignPod { name: String },
    #[error(transparent)]
    NotFilled(#[from] crate::run_cache::NotFilled),
    #[error(
        "no address of the API server is known: set runner.network.apiServerCIDRs, or let the operator read the kubernetes Service's EndpointSlices in namespace default"
    )]
    ApiServerUnknown,
    #[error("{kind} has no {field}")]
    MissingMetadata {
        kind: &'static str,
        field: &'static str,
    },
}

impl Error {
    /// Wraps an API error with the step and what was being done.
    pub fn kube(
        step: Step,
        action: &'static str,
        kind: &'static str,
        name: &str,
        source: kube::Error,
    ) -> Self {
        Error::Kube {
            step,
            action,
            kind,
            name: name.to_string(),
            source: Box::new(source),
        }
    }

    /// Stable category, for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { source, .. } => match source.as_ref() {
                kube::Error::Api(s) if s.code == 409 => "conflict",
                kube::Error::Api(s) if s.code == 403 => "forbidden",
                kube::Error::Api(_) => "api",
                _ => "transport",
            },
            Error::Build(_) => "build",
            Error::Encode { .. } => "encode",
            Error::MissingMetadata { .. } => "invalid",
            Error::Foreign { .. } => "conflict",
            Error::ForeignPod { .. } => "tampered",
            Error::NotFilled(_) => "cache",
            Error::ApiServerUnknown => "config",
        }
    }
}

impl Error {
    /// The step the error stopped.
    pub fn step(&self) -> Step {
        match self {
            Error::Kube { step, .. } => *step,
            Error::Build(_) => Step::Build,
            Error::Foreign { .. } | Error::ForeignPod { .. } => Step::Act,
            Error::MissingMetadata { .. } | Error::NotFilled(_) | Error::ApiServerUnknown => {
                Step::Read
            }
            Error::Encode { .. } => Step::Status,
        }
    }

    /// What a controller does after a reconcile of `name` failed with this
    /// error, by step: an object that cannot be read or built waits for a
    /// change of it; an object of the run's name that the run does not own
    /// waits for a person to remove it, looked at again each minute; a write
    /// of the record or the status that conflicted with another writer is
    /// tried again at once (the next read has the other write); any other API
    /// failure is tried again after [`RETRY`].
    pub fn policy(&self, controller: &str, name: &str) -> Action {
        tracing::warn!(controller, name, step = self.step().as_str(), error = %self, category = self.category(), "reconcile failed");
        match (self.step(), self) {
            (_, Error::MissingMetadata { .. }) | (Step::Build, _) => Action::await_change(),
            (_, Error::Foreign { .. }) => Action::requeue(FOREIGN_RETRY),
            (Step::Record | Step::Status, _) if self.category() == "conflict" => {
                Action::requeue(CONFLICT_RETRY)
            }
            _ => Action::requeue(RETRY),
        }
    }
}

/// How soon a write that conflicted with another writer is tried again.
pub const CONFLICT_RETRY: Duration = Duration::from_secs(1);
/// How often a run blocked by an object it does not own is looked at again.
pub const FOREIGN_RETRY: Duration = Duration::from_secs(60);
/// How soon a reconcile that failed on the API is tried again.
pub const RETRY: Duration = Duration::from_secs(15);

/// The kind of `K` as a static name, for errors: every kind the operator
/// writes.
pub fn static_kind<K: kube::Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "Connector" => "Connector",
        "ConnectorRun" => "ConnectorRun",
        "Pod" => "Pod",
        "ServiceAccount" => "ServiceAccount",
        "Role" => "Role",
        "RoleBinding" => "RoleBinding",
        "NetworkPolicy" => "NetworkPolicy",
        _ => "object",
    }
}

/// Whether an API error says the object does not exist.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Whether an API error says the object already exists.
pub fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            ..Default::default()
        }))
    }

    #[test]
    fn errors_name_each_kind_the_operator_writes() {
        use k8s_openapi::api::core::v1::Pod;
        assert_eq!(static_kind::<ferry_crds::Connector>(), "Connector");
        assert_eq!(static_kind::<ferry_crds::ConnectorRun>(), "ConnectorRun");
        assert_eq!(static_kind::<Pod>(), "Pod");
        assert_eq!(
            static_kind::<k8s_openapi::api::core::v1::Namespace>(),
            "object"
        );
    }

    #[test]
    fn the_policy_decides_by_step() {
        let conflict = |step| Error::kube(step, "write", "ConnectorRun", "r", api(409));
        assert_eq!(
            conflict(Step::Record).policy("c", "r"),
            Action::requeue(CONFLICT_RETRY)
        );
        assert_eq!(
            conflict(Step::Status).policy("c", "r"),
            Action::requeue(CONFLICT_RETRY)
        );
        // A conflict creating an object is not cured by reading again.
        assert_eq!(conflict(Step::Act).policy("c", "r"), Action::requeue(RETRY));
        let unavailable = Error::kube(Step::Read, "get", "Pod", "p", api(503));
        assert_eq!(unavailable.policy("c", "r"), Action::requeue(RETRY));
        let foreign = Error::Foreign {
            kind: "Pod",
            name: "p".into(),
        };
        assert_eq!(foreign.step(), Step::Act);
        assert_eq!(foreign.policy("c", "r"), Action::requeue(FOREIGN_RETRY));
        let invalid = Error::MissingMetadata {
            kind: "ConnectorRun",
            field: "namespace",
        };
        assert_eq!(invalid.policy("c", "r"), Action::await_change());
    }
}
