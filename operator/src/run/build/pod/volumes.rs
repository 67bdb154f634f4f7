//! What the runner's filesystem holds besides its image: the Kubernetes API
//! token, CA and namespace where clients look for them; memory scratch; and
//! the cloud tokens its endpoints need, each with its own audience. Every
//! token is projected, expires a little after the run's deadline, and dies
//! with the run's ServiceAccount. Paths come from the operator↔runner
//! contract ([`ferry_crds::contract::paths`]).

use ferry_crds::ConnectorSpec;
use ferry_crds::contract::paths;
use k8s_openapi::api::core::v1::{
    ConfigMapProjection, DownwardAPIProjection, DownwardAPIVolumeFile, EmptyDirVolumeSource,
    KeyToPath, ObjectFieldSelector, ProjectedVolumeSource, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::config::Config;

/// Projected tokens live at least this long (the API server's minimum is 600 s).
const MIN_TOKEN_SECONDS: i64 = 600;

/// The pod's volumes, the runner's mounts of them, and the token files the
/// runner is told about.
#[derive(Debug, Default)]
pub struct Files {
    pub volumes: Vec<Volume>,
    pub mounts: Vec<VolumeMount>,
    /// The AWS web identity token, when an end assumes a role with it.
    pub aws_token: Option<&'static str>,
    /// The Azure federated token, when an end uses workload identity.
    pub azure_token: Option<&'static str>,
    /// The run's token for the platform's Vault, when an end keeps its
    /// credentials there.
    pub vault_token: Option<&'static str>,
}

fn token_seconds(spec: &ConnectorSpec) -> i64 {
    // A little beyond the deadline: the pod cannot outlive it, and the
    // ServiceAccount (which invalidates its tokens) is deleted at the end.
    (spec.run.active_deadline_seconds + 120).max(MIN_TOKEN_SECONDS)
}

fn token_projection(audience: Option<&str>, seconds: i64) -> VolumeProjection {
    VolumeProjection {
        service_account_token: Some(ServiceAccountTokenProjection {
            audience: audience.map(str::to_string),
            expiration_seconds: Some(seconds),
            path: paths::TOKEN_FILE_NAME.into(),
        }),
        ..Default::default()
    }
}

fn projected(name: &str, sources: Vec<VolumeProjection>) -> Volume {
    Volume {
        name: name.to_string(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o440),
            sources: Some(sources),
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

/// The API access volume: the run's token, the cluster's CA and the namespace,
/// laid out as Kubernetes clients expect them in a pod.
fn api_access(seconds: i64) -> Volume {
    let ca = VolumeProjection {
        config_map: Some(ConfigMapProjection {
            name: "kube-root-ca.crt".into(),
            items: Some(vec![KeyToPath {
                key: "ca.crt".into(),
                path: "ca.crt".into(),
                mode: None,
            }]),
            optional: None,
        }),
        ..Default::default()
    };
    let namespace = VolumeProjection {
        downward_api: Some(DownwardAPIProjection {
            items: Some(vec![DownwardAPIVolumeFile {
                path: "namespace".into(),
                field_ref: Some(ObjectFieldSelector {
                    api_version: Some("v1".into()),
                    field_path: "metadata.namespace".into(),
                }),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    };
    projected(
        "kube-api-access",
        vec![token_projection(None, seconds), ca, namespace],
    )
}

/// Every volume of the pod, and where the runner mounts it.
pub fn volumes(spec: &ConnectorSpec, config: &Config) -> Files {
    let seconds = token_seconds(spec);
    let mut files = Files {
        volumes: vec![
            api_access(seconds),
            Volume {
                name: "scratch".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".into()),
                    size_limit: Some(Quantity(config.scratch_size.clone())),
                }),
                ..Default::default()
            },
        ],
        mounts: vec![
            mount("kube-api-access", paths::API_ACCESS_DIR, true),
            mount("scratch", paths::SCRATCH_DIR, false),
        ],
        ..Files::default()
    };
    let ends = [&spec.source, &spec.destination];
    let aws_audience = ferry_crds::aws_web_identities(spec)
        .first()
        .map(|(_, w)| w.audience.clone());
    if let Some(audience) = aws_audience {
        files.volumes.push(projected(
            "aws-token",
            vec![token_projection(Some(&audience), seconds)],
        ));
        files
            .mounts
            .push(mount("aws-token", paths::AWS_TOKEN_DIR, true));
        files.aws_token = Some(paths::AWS_TOKEN_FILE);
    }
    let azure_wi = ends.into_iter().any(|e| {
        e.azure_blob
            .as_ref()
            .is_some_and(|a| a.credentials.workload_identity.is_some())
    });
    if azure_wi {
        files.volumes.push(projected(
            "azure-token",
            vec![token_projection(
                Some(ferry_crds::AZURE_TOKEN_AUDIENCE),
                seconds,
            )],
        ));
        files
            .mounts
            .push(mount("azure-token", paths::AZURE_TOKEN_DIR, true));
        files.azure_token = Some(paths::AZURE_TOKEN_FILE);
    }
    if let Some(vault) = &config.vault
        && ferry_crds::uses_vault(spec)
    {
        files.volumes.push(projected(
            "vault-token",
            vec![token_projection(Some(&vault.audience), seconds)],
        ));
        files
            .mounts
            .push(mount("vault-token", paths::VAULT_TOKEN_DIR, true));
        files.vault_token = Some(paths::VAULT_TOKEN_FILE);
    }
    files
}
