//! No client required: what became of an attempt, read from its pod and the
//! runner's report.

use ferry_crds::contract;
use ferry_crds::{RunError, RunResult};
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod, PodStatus};

use crate::run::build::RUNNER_CONTAINER;

/// The fate of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Not finished. `running` once the container runs; `message` says why a
    /// pod is stuck (image pull, scheduling).
    Waiting {
        running: bool,
        message: Option<String>,
    },
    /// The runner finished its work.
    Succeeded,
    /// The attempt failed.
    Failed {
        reason: String,
        message: String,
        retryable: bool,
    },
}

fn failed(reason: &str, message: impl Into<String>, retryable: bool) -> Fate {
    Fate::Failed {
        reason: reason.to_string(),
        message: message.into(),
        retryable,
    }
}

/// The runner's own report of why it failed. Whether it is worth another
/// attempt is the contract's word for the reasons it knows, the runner's for
/// any other (a runner of another version).
fn reported(e: &RunError) -> Fate {
    failed(
        &e.reason,
        e.message.clone(),
        contract::retryable(&e.reason, e.retryable),
    )
}

fn terminated(pod: &Pod) -> Option<&ContainerStateTerminated> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == RUNNER_CONTAINER)?
        .state
        .as_ref()?
        .terminated
        .as_ref()
}

/// Reads the fate of attempt `attempt` from its pod and the runner's result
/// (only a result reported by that same attempt counts).
pub fn fate(pod: &Pod, result: Option<&RunResult>, attempt: i32) -> Fate {
    let status = pod.status.clone().unwrap_or_default();
    let result = result.filter(|r| r.attempt == Some(attempt));
    let reported_error = result.and_then(|r| r.error.as_ref());
    match status.phase.as_deref() {
        Some("Succeeded") => match reported_error {
            Some(e) => reported(e),
            None => Fate::Succeeded,
        },
        Some("Failed") => pod_failed(pod, &status, reported_error),
        phase => waiting(&status, phase == Some("Running")),
    }
}

/// A pod that failed: what Kubernetes says first (deadline, eviction, memory),
/// then what the runner reported, then its exit code.
fn pod_failed(pod: &Pod, status: &PodStatus, reported_error: Option<&RunError>) -> Fate {
    let message = || status.message.as_deref().unwrap_or("no reason given");
    match status.reason.as_deref() {
        Some("DeadlineExceeded") => {
            return failed(
                "DeadlineExceeded",
                "the run took longer than run.activeDeadlineSeconds and was stopped",
                false,
            );
        }
        Some("Evicted") => {
            let note = format!("the run's pod was evicted: {}", message());
            return failed("Evicted", note, true);
        }
        _ => {}
    }
    let term = terminated(pod);
    if term.and_then(|t| t.reason.as_deref()) == Some("OOMKilled") {
        return failed(
            "OOMKilled",
            "the runner ran out of memory; raise run.resources.limits.memory",
            true,
        );
    }
    if let Some(e) = reported_error {
        return reported(e);
    }
    match term {
        Some(t) => failed(
            "RunnerFailed",
            format!(
                "the runner exited with code {} without reporting why",
                t.exit_code
            ),
            true,
        ),
        None => failed(
            "PodFailed",
            format!("the run's pod failed: {}", message()),
            true,
        ),
    }
}

/// A pod not yet ended: running, or waiting for what its container or the
/// scheduler names.
fn waiting(status: &PodStatus, running: bool) -> Fate {
    let waiting = status
        .container_statuses
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.name == RUNNER_CONTAINER))
        .and_then(|c| c.state.as_ref()?.waiting.as_ref())
        .and_then(|w| w.reason.clone());
    let unschedulable = status
        .conditions
        .as_ref()
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        })
        .and_then(|c| c.message.clone());
    Fate::Waiting {
        running,
        message: waiting.or(unschedulable),
    }
}

/// Backoff before attempt `next` (2, 3, ...): 10 s doubled per failure, at most
/// 6 minutes, like a Job's.
pub fn backoff_seconds(failed_attempts: i32) -> i64 {
    let exp = failed_attempts.clamp(1, 16) - 1;
    (10_i64 << exp).min(360)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_crds::RunError;

    fn pod(yaml: &str) -> Pod {
        serde_saphyr::from_str(yaml).expect("fixture parses")
    }

    const OOM: &str = r#"
status:
  phase: Failed
  containerStatuses:
  - name: runner
    image: x
    imageID: ""
    ready: false
    restartCount: 0
    state: {terminated: {exitCode: 137, reason: OOMKilled}}
"#;

    #[test]
    fn pod_phases_map_to_fates() {
        assert_eq!(
            fate(&pod("status: {phase: Succeeded}"), None, 1),
            Fate::Succeeded
        );
        assert!(matches!(
            fate(&pod("status: {phase: Running}"), None, 1),
            Fate::Waiting { running: true, .. }
        ));
        assert!(matches!(
            fate(&pod("status: {phase: Pending}"), None, 1),
            Fate::Waiting { running: false, .. }
        ));
        assert_eq!(
            fate(
                &pod("status: {phase: Failed, reason: DeadlineExceeded}"),
                None,
                1
            ),
            failed(
                "DeadlineExceeded",
                "the run took longer than run.activeDeadlineSeconds and was stopped",
                false
            )
        );
        assert!(
            matches!(fate(&pod("status: {phase: Failed, reason: Evicted, message: low memory}"), None, 1),
            Fate::Failed { ref reason, retryable: true, ref message } if reason == "Evicted" && message.contains("low memory"))
        );
        assert!(
            matches!(fate(&pod(OOM), None, 1), Fate::Failed { ref reason, retryable: true, .. } if reason == "OOMKilled")
        );
        assert!(
            matches!(fate(&pod(&OOM.replace("reason: OOMKilled", "reason: Error")), None, 1),
            Fate::Failed { ref reason, .. } if reason == "RunnerFailed")
        );
    }

    #[test]
    fn the_runner_report_of_the_same_attempt_decides() {
        let result = RunResult {
            attempt: Some(2),
            error: Some(RunError {
                reason: "InvalidCredentials".into(),
                message: "s3: access denied".into(),
                retryable: false,
            }),
            ..Default::default()
        };
        let failed_pod = pod("status: {phase: Failed}");
        assert_eq!(
            fate(&failed_pod, Some(&result), 2),
            failed("InvalidCredentials", "s3: access denied", false)
        );
        // A report left by attempt 2 says nothing about attempt 3.
        assert!(
            matches!(fate(&failed_pod, Some(&result), 3), Fate::Failed { ref reason, retryable: true, .. } if reason == "PodFailed")
        );
    }

    /// The runner's token may write the run's result: a runner that reports
    /// a credentials or policy failure as retryable (to be started again and
    /// again) is not believed; the contract decides for the reasons it knows.
    #[test]
    fn a_runner_claiming_a_refusal_is_retryable_is_not_believed() {
        let claim = |reason: &str, retryable| RunResult {
            attempt: Some(1),
            error: Some(RunError {
                reason: reason.into(),
                message: "m".into(),
                retryable,
            }),
            ..Default::default()
        };
        let failed_pod = pod("status: {phase: Failed}");
        for reason in [
            "InvalidCredentials",
            "ResidencyViolation",
            "IntegrityFailure",
        ] {
            assert_eq!(
                fate(&failed_pod, Some(&claim(reason, true)), 1),
                failed(reason, "m", false),
                "{reason}"
            );
        }
        // A transient failure stays retryable whatever the runner says, and
        // an unknown reason keeps the runner's word.
        assert_eq!(
            fate(&failed_pod, Some(&claim("EndpointUnreachable", false)), 1),
            failed("EndpointUnreachable", "m", true)
        );
        assert_eq!(
            fate(&failed_pod, Some(&claim("SomethingNew", false)), 1),
            failed("SomethingNew", "m", false)
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_seconds(1), 10);
        assert_eq!(backoff_seconds(2), 20);
        assert_eq!(backoff_seconds(6), 320);
        assert_eq!(backoff_seconds(7), 360);
        assert_eq!(backoff_seconds(100), 360);
    }
}
