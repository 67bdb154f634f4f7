//! The runner's environment: which run and attempt it is, the spec hash it
//! checks, the platform's settings, and where its tokens are. Every name comes
//! from the operator↔runner contract ([`ferry_crds::contract::env`]), which the
//! runner reads its arguments by.

use ferry_crds::contract::env as names;
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector};

use super::volumes::Files;
use crate::run::build::network_policy::uses_web_identity;
use crate::run::build::{Part, ValidatedRun};

fn var(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// The runner container's environment.
pub fn env(run: &ValidatedRun<'_>, files: &Files) -> Vec<EnvVar> {
    let input = run.input;
    let config = input.config;
    let mut vars = vec![
        var(names::RUN_NAME, run.name),
        var(names::RUN_ATTEMPT, input.attempt.to_string()),
        EnvVar {
            name: names::RUN_NAMESPACE.into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: Some("v1".into()),
                    field_path: "metadata.namespace".into(),
                }),
                ..Default::default()
            }),
        },
        // The runner checks the spec it reads from the run's record against
        // this: the pod is immutable and only the operator creates it.
        var(names::SPEC_HASH, ferry_crds::spec_hash(input.spec)),
        var(names::RUST_LOG, config.runner_log.clone()),
        var(names::LOG_FORMAT, "json"),
    ];
    match input.part {
        Part::Whole => {}
        Part::Shard { index, count } => vars.push(var(names::SHARD, format!("{index}/{count}"))),
        Part::Commit { count } => vars.push(var(names::SHARDS, count.to_string())),
    }
    if let Some(anchor) = input.manifest_anchor {
        vars.push(var(names::MANIFEST_ANCHOR, anchor));
    }
    if let Some(region) = input.tenant_region {
        vars.push(var(names::TENANT_REGION, region));
    }
    if let Some(url) = &config.lineage_url {
        vars.push(var(names::LINEAGE_URL, url.clone()));
    }
    if let Some(url) = &config.sts_endpoint
        && uses_web_identity(input.spec)
    {
        vars.push(var(names::STS_ENDPOINT, url.clone()));
    }
    if let Some(url) = &config.aws_endpoint
        && ferry_crds::uses_aws_apis(input.spec)
    {
        vars.push(var(names::AWS_ENDPOINT, url.clone()));
    }
    if !config.network.denied_cidrs.is_empty() {
        vars.push(var(
            names::DENIED_NETWORKS,
            config.network.denied_cidrs.join(","),
        ));
    }
    vars.push(var(
        names::ACTIVE_DEADLINE_SECONDS,
        input.spec.run.active_deadline_seconds.to_string(),
    ));
    if !config.network.allowed_cidrs.is_empty() {
        vars.push(var(
            names::ALLOWED_NETWORKS,
            config.network.allowed_cidrs.join(","),
        ));
    }
    if let Some(file) = files.aws_token {
        vars.push(var(names::AWS_WEB_IDENTITY_TOKEN_FILE, file));
    }
    if let Some(file) = files.azure_token {
        vars.push(var(names::AZURE_FEDERATED_TOKEN_FILE, file));
    }
    if let (Some(file), Some(vault)) = (files.vault_token, &config.vault) {
        vars.push(var(names::VAULT_ADDR, vault.addr.clone()));
        vars.push(var(names::VAULT_AUTH_MOUNT, vault.auth_mount.clone()));
        vars.push(var(names::VAULT_ROLE, vault.role_for(run.namespace)));
        vars.push(var(names::VAULT_TOKEN_FILE, file));
    }
    vars
}
