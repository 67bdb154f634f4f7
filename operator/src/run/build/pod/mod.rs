//! The pod of one attempt: Pod Security "restricted" ([`security`]), no
//! automounted token, projected tokens that expire with the run ([`volumes`]),
//! the runner's environment from the operator↔runner contract ([`env`]), the
//! tenant's knobs for scheduling and resources ([`resources`]), and the
//! operator's image and command only.

pub mod env;
pub mod resources;
pub mod security;
pub mod volumes;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};

use super::{Part, ValidatedRun};
use crate::names;

/// UID and GID the runner runs as (distroless `nonroot`).
pub const RUNNER_UID: i64 = 65532;
/// Name of the runner container.
pub const RUNNER_CONTAINER: &str = "runner";

/// The pod of one attempt.
pub fn pod(run: &ValidatedRun<'_>) -> Pod {
    let input = run.input;
    let template = &input.spec.run;
    let pod_name = match input.part {
        Part::Shard { index, .. } => names::shard_pod(run.name, index, input.attempt),
        Part::Whole | Part::Commit { .. } => names::pod(run.name, input.attempt),
    };
    let mut metadata = run.meta(pod_name);
    let mut labels = template.pod_labels.clone();
    labels.extend(super::run_labels(input.run));
    labels.insert(names::LABEL_ATTEMPT.into(), input.attempt.to_string());
    if let Part::Shard { index, .. } = input.part {
        labels.insert(names::LABEL_SHARD.into(), index.to_string());
    }
    metadata.labels = Some(labels);
    // The tenant's annotations (allow-listed by the policy) first, Ferry's over
    // them: Ferry's keys always win.
    let mut annotations = template.pod_annotations.clone();
    // A mesh sidecar would keep the pod running after the runner exits, and
    // would not meet Pod Security "restricted".
    annotations.insert("sidecar.istio.io/inject".to_string(), "false".to_string());
    metadata.annotations = Some(annotations);

    let files = volumes::volumes(input.spec, input.config);
    let container = Container {
        name: RUNNER_CONTAINER.into(),
        image: Some(input.config.runner_image.clone()),
        image_pull_policy: input.config.runner_image_pull_policy.clone(),
        command: Some(input.config.runner_command.clone()),
        args: Some(vec!["cluster".into()]),
        env: Some(env::env(run, &files)),
        resources: Some(resources::resources(
            template.resources.as_ref(),
            &input.config.runner_resources,
        )),
        volume_mounts: Some(files.mounts),
        security_context: Some(security::container()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    Pod {
        metadata,
        spec: Some(PodSpec {
            service_account_name: Some(run.identity_name()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(template.active_deadline_seconds),
            security_context: Some(security::pod()),
            containers: vec![container],
            volumes: Some(files.volumes),
            node_selector: (!template.node_selector.is_empty())
                .then(|| template.node_selector.clone()),
            tolerations: (!template.tolerations.is_empty()).then(|| template.tolerations.clone()),
            affinity: template.affinity.clone(),
            ..Default::default()
        }),
        status: None,
    }
}
