//! Errors of the reconcilers. Each has a stable category: a metric label and the
//! basis of the retry decision in `error_policy`.

use crate::run::build::BuildError;

/// A reconcile that could not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to {action} {kind} {name:?}: {source}")]
    Kube {
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
    #[error("{kind} has no {field}")]
    MissingMetadata {
        kind: &'static str,
        field: &'static str,
    },
}

impl Error {
    /// Wraps an API error with what was being done.
    pub fn kube(action: &'static str, kind: &'static str, name: &str, source: kube::Error) -> Self {
        Error::Kube {
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
        }
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
