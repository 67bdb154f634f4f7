//! No client required: the objects of one run attempt, as pure functions of the
//! validated run (DESIGN.md, "A run, step by step", 2). Everything here is owned
//! by the ConnectorRun, so deleting the run deletes them.
//!
//! [`ValidatedRun::new`] is the one step that can fail (a run without a name,
//! namespace or uid yet); the builders take what it made and cannot fail:
//! [`identity`] (ServiceAccount, Role, RoleBinding), [`network_policy`] and
//! [`pod`]. [`ObjectKind::ALL`] lists every kind of object a run has: creation
//! ([`super::apply::apply`]) and deletion ([`super::apply::cleanup`]) both go
//! through it, so a new kind is deleted as surely as it is created.

pub mod identity;
pub mod network_policy;
pub mod pod;

use std::collections::BTreeMap;

use ferry_crds::{ConnectorRun, ConnectorSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::config::Config;
use crate::names;

pub use ferry_crds::AZURE_TOKEN_AUDIENCE;
pub use pod::{RUNNER_CONTAINER, RUNNER_UID};

/// What one attempt of a run is built from, all of it already validated by
/// the policy.
#[derive(Debug, Clone, Copy)]
pub struct RunInput<'a> {
    /// The run.
    pub run: &'a ConnectorRun,
    /// Its pinned Connector spec.
    pub spec: &'a ConnectorSpec,
    /// The manifest its destination's record must reach, pinned with the spec.
    pub manifest_anchor: Option<&'a str>,
    /// Attempt number, from 1 (of the shard, for a shard's pod).
    pub attempt: i32,
    /// All of the run, one shard of it, or its last step.
    pub part: Part,
    /// The tenant's region (namespace label), passed to the runner for its own
    /// residency checks.
    pub tenant_region: Option<&'a str>,
    /// The operator's configuration.
    pub config: &'a Config,
}

/// Which part of a run a pod does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Part {
    /// All of it: a run in one pod.
    #[default]
    Whole,
    /// Shard `index` (from 0) of `count`.
    Shard { index: i32, count: i32 },
    /// The last step of a run over `count` shards: its manifest.
    Commit { count: i32 },
}

/// Why the objects of a run cannot be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BuildError {
    #[error("failed to build the run's objects: the ConnectorRun has no {0} yet")]
    MissingMetadata(&'static str),
}

/// A run whose objects can be built: its input, and the metadata every object
/// takes from the run, checked once.
#[derive(Debug, Clone)]
pub struct ValidatedRun<'a> {
    pub input: RunInput<'a>,
    /// The run's name.
    pub name: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
    /// The run as controller owner, so deleting it deletes its objects.
    pub owner: OwnerReference,
}

impl<'a> ValidatedRun<'a> {
    /// Checks that the run has what its objects need from it.
    pub fn new(input: RunInput<'a>) -> Result<Self, BuildError> {
        let run = input.run;
        Ok(Self {
            input,
            name: run
                .metadata
                .name
                .as_deref()
                .ok_or(BuildError::MissingMetadata("name"))?,
            namespace: run
                .metadata
                .namespace
                .as_deref()
                .ok_or(BuildError::MissingMetadata("namespace"))?,
            owner: owner(run)?,
        })
    }

    /// Every object of the attempt.
    pub fn objects(&self) -> RunObjects {
        RunObjects {
            service_account: identity::service_account(self),
            role: identity::role(self),
            role_binding: identity::role_binding(self),
            network_policy: network_policy::network_policy(self),
            pod: pod::pod(self),
        }
    }

    /// Metadata of one of the run's objects: its name, the run's namespace,
    /// labels and owner.
    pub fn meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.to_string()),
            labels: Some(run_labels(self.input.run)),
            owner_references: Some(vec![self.owner.clone()]),
            ..Default::default()
        }
    }

    /// Name of the run's ServiceAccount, Role, RoleBinding and NetworkPolicy.
    pub fn identity_name(&self) -> String {
        names::run_identity(self.name)
    }
}

/// Every object of one attempt. Destructure it without `..` so that a new object
/// cannot be forgotten by the code that reads them.
#[derive(Debug, Clone, PartialEq)]
pub struct RunObjects {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub network_policy: NetworkPolicy,
    pub pod: Pod,
}

/// The kinds of object a run has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    ServiceAccount,
    Role,
    RoleBinding,
    NetworkPolicy,
    Pod,
}

impl ObjectKind {
    /// Every kind, in the order they are created: the identity first, the pod
    /// last, so the pod never starts without its ServiceAccount, Role and
    /// NetworkPolicy. They are deleted in the reverse order.
    pub const ALL: [ObjectKind; 5] = [
        ObjectKind::ServiceAccount,
        ObjectKind::Role,
        ObjectKind::RoleBinding,
        ObjectKind::NetworkPolicy,
        ObjectKind::Pod,
    ];

    /// The names of this kind's objects for a run named `run` that made
    /// `attempts` attempts, and whose shards made `shard_attempts`: one pod
    /// per attempt of the run and of each shard, one of each other kind.
    pub fn names(self, run: &str, attempts: i32, shard_attempts: &[i32]) -> Vec<String> {
        match self {
            ObjectKind::Pod => {
                (1..=attempts)
                    .map(|a| names::pod(run, a))
                    .chain(shard_attempts.iter().enumerate().flat_map(|(i, n)| {
                        (1..=*n).map(move |a| names::shard_pod(run, i as i32, a))
                    }))
                    .collect()
            }
            _ => vec![names::run_identity(run)],
        }
    }

    /// The kind as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::ServiceAccount => "ServiceAccount",
            ObjectKind::Role => "Role",
            ObjectKind::RoleBinding => "RoleBinding",
            ObjectKind::NetworkPolicy => "NetworkPolicy",
            ObjectKind::Pod => "Pod",
        }
    }
}

/// Builds every object of one attempt.
pub fn build(input: RunInput<'_>) -> Result<RunObjects, BuildError> {
    Ok(ValidatedRun::new(input)?.objects())
}

/// Labels every object of the run carries.
pub fn run_labels(run: &ConnectorRun) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            names::LABEL_MANAGED_BY.to_string(),
            names::MANAGED_BY.to_string(),
        ),
        (names::LABEL_COMPONENT.to_string(), "run".to_string()),
        (
            names::LABEL_RUN.to_string(),
            names::label_value(run.metadata.name.as_deref().unwrap_or_default()),
        ),
        (
            names::LABEL_CONNECTOR.to_string(),
            names::label_value(&run.spec.connector_ref.name),
        ),
    ])
}

/// The run as controller owner, so deleting it deletes its objects.
pub fn owner(run: &ConnectorRun) -> Result<OwnerReference, BuildError> {
    if run.metadata.uid.is_none() {
        return Err(BuildError::MissingMetadata("uid"));
    }
    run.controller_owner_ref(&())
        .ok_or(BuildError::MissingMetadata("name"))
}
