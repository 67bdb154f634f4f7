//! Ferry's Kubernetes API: the `Connector` and `ConnectorRun` custom resources
//! (group `ferry.dev`, version `v1alpha1`), and the generation of their CRDs.
//!
//! This crate does no I/O: it holds types, their schemas and pure helpers.
#![forbid(unsafe_code)]

pub mod chain;
pub mod common;
pub mod connector;
pub mod contract;
pub mod crdgen;
pub mod endpoint;
pub mod network;
pub mod residency;
pub mod run;
pub mod secrets;

pub use common::*;
pub use connector::*;
pub use contract::{AuditRecord, Reason};
pub use endpoint::{EndpointUrl, UrlRefusal, check_endpoint_url};
pub use residency::{ResidencyBreach, residency_breaches};
pub use run::*;
pub use secrets::{
    REFUSED_SECRET_TYPES, SECRET_OPT_IN_LABEL, SECRET_OPT_IN_VALUE, SecretNeed, SecretRefusal,
    aws_secrets, aws_web_identities, secret_names, secret_needs, secret_usable, uses_aws_apis,
    uses_vault, vault_secrets,
};

/// The API group of every Ferry resource.
pub const GROUP: &str = "ferry.dev";
/// The API version of every Ferry resource.
pub const VERSION: &str = "v1alpha1";
/// Namespace label, set by the platform team, naming the tenant's region.
pub const REGION_LABEL: &str = "ferry.dev/region";
/// Namespace annotation, set by the platform team, capping the sensitivity tags
/// any Connector of the namespace may allow (comma separated, e.g. `pii,phi`).
pub const ALLOWED_SENSITIVITY_ANNOTATION: &str = "ferry.dev/allowed-sensitivity";
/// Audience of the token AWS STS accepts for web identity (the default of
/// `webIdentity.audience`).
pub const AWS_TOKEN_AUDIENCE: &str = "sts.amazonaws.com";
/// Audience of Azure federated (workload identity) credentials.
pub const AZURE_TOKEN_AUDIENCE: &str = "api://AzureADTokenExchange";
