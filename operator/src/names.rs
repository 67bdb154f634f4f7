//! Names and labels of the objects the operator creates. Kubernetes limits label
//! values to 63 characters; long names are shortened with a hash so they stay
//! unique and stable.

use sha2::{Digest, Sha256};

/// Label naming the ConnectorRun an object belongs to (shortened if needed).
pub const LABEL_RUN: &str = "ferry.dev/run";
/// Label naming the Connector of a run (shortened if needed).
pub const LABEL_CONNECTOR: &str = "ferry.dev/connector";
/// Label with the attempt number of a run's pod.
pub const LABEL_ATTEMPT: &str = "ferry.dev/attempt";
/// Label with the shard index of a shard's pod.
pub const LABEL_SHARD: &str = "ferry.dev/shard";
/// Annotation on a scheduled run: the time it was scheduled for (RFC 3339).
pub const ANNOTATION_SCHEDULED_AT: &str = "ferry.dev/scheduled-at";
/// The standard label naming the tool managing an object.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "ferry";
/// The standard label naming the part of the application.
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";

/// The longest label value Kubernetes accepts.
const LABEL_MAX: usize = 63;

/// `name` if it is at most `max` characters, else a prefix of it and 10 hex
/// digits of its SHA-256, `max` characters in all, ending in an alphanumeric.
pub fn shorten(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_string();
    }
    let digest = hex::encode(Sha256::digest(name.as_bytes()));
    let keep = max.saturating_sub(11);
    let prefix: String = name.chars().take(keep).collect();
    let prefix = prefix.trim_end_matches(['-', '.']);
    format!("{prefix}-{}", &digest[..10])
}

/// A name as a label value.
pub fn label_value(name: &str) -> String {
    shorten(name, LABEL_MAX)
}

/// Name of the per-run ServiceAccount, Role, RoleBinding and NetworkPolicy.
pub fn run_identity(run: &str) -> String {
    // 63 so the name is also a valid label value and DNS label.
    shorten(&format!("ferry-run-{run}"), LABEL_MAX)
}

/// Name of the pod of one attempt of a run.
pub fn pod(run: &str, attempt: i32) -> String {
    let suffix = format!("-{attempt}");
    format!("{}{suffix}", shorten(run, LABEL_MAX - suffix.len()))
}

/// Name of the pod of one attempt of shard `shard` (from 0) of a run:
/// `<run>-<attempt>-s<shard>`. A run's own pods end in `-<attempt>` (digits
/// only), a shard's in `-s<shard>` (never digits only), and the attempt comes
/// right before it, so no two runs' pods can share a name: with the shard
/// before the attempt, run `x`'s shard 0 and run `x-s0` both had `x-s0-1`.
pub fn shard_pod(run: &str, shard: i32, attempt: i32) -> String {
    let suffix = format!("-{attempt}-s{shard}");
    format!("{}{suffix}", shorten(run, LABEL_MAX - suffix.len()))
}

/// Name of the run a schedule creates for the time `unix_seconds`, like a
/// CronJob's jobs: the Connector's name and the scheduled minute.
pub fn scheduled_run(connector: &str, unix_seconds: i64) -> String {
    let suffix = format!("-{}", unix_seconds.div_euclid(60));
    // Object names may have 253 characters; leave room for a pod suffix.
    format!("{}{suffix}", shorten(connector, 200))
}

#[cfg(test)]
mod tests {
    /// Attack: a tenant names a run so that its pod takes the name of another
    /// run's pod (run `x-s0`'s first pod was `x-s0-1`, the name of run `x`'s
    /// shard 0): the operator, finding the name taken, could never start the
    /// other run's pod. Every run, attempt and shard has a name of its own.
    #[test]
    fn two_runs_never_share_a_pod_name() {
        let runs = [
            "x", "x-1", "x-s0", "x-s0-1", "x-1-s0", "x-2", "x-s1", "x-11", "x-1-1", "s0", "x-s",
        ];
        let mut seen = std::collections::HashMap::new();
        for run in runs {
            for attempt in 1..=12 {
                let mut pods = vec![(pod(run, attempt), None)];
                for shard in 0..12 {
                    pods.push((shard_pod(run, shard, attempt), Some(shard)));
                }
                for (name, shard) in pods {
                    if let Some(other) = seen.insert(name.clone(), (run, attempt, shard)) {
                        panic!("{name}: {other:?} and {:?}", (run, attempt, shard));
                    }
                }
            }
        }
    }

    use super::*;

    #[test]
    fn short_names_are_kept_and_long_ones_hashed() {
        assert_eq!(shorten("abc", 63), "abc");
        let long = "a".repeat(100);
        let s = shorten(&long, 63);
        assert_eq!(s.len(), 63);
        assert_ne!(s, shorten(&"a".repeat(101), 63));
        assert_eq!(s, shorten(&long, 63), "stable");
        assert_eq!(pod(&long, 12).len(), 63);
        assert!(pod("nightly", 2) == "nightly-2");
        assert_eq!(run_identity("nightly"), "ferry-run-nightly");
        assert!(run_identity(&long).len() <= 63);
    }

    #[test]
    fn shortened_names_do_not_end_in_a_separator() {
        let name = format!("{}-{}", "a".repeat(51), "b".repeat(40));
        let s = shorten(&name, 63);
        assert!(!s.contains("--"), "{s}");
    }

    #[test]
    fn scheduled_runs_are_named_by_minute() {
        assert_eq!(scheduled_run("sales", 1_700_000_040), "sales-28333334");
    }
}
