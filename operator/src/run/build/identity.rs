//! The run's identity: its own ServiceAccount, a Role that can read exactly
//! what the run needs, and the RoleBinding between them.

use ferry_crds::secret_names;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::ValidatedRun;

/// The run's own ServiceAccount. Its tokens are only ever projected into the
/// run's pod, and die with it.
pub fn service_account(run: &ValidatedRun<'_>) -> ServiceAccount {
    ServiceAccount {
        metadata: run.meta(run.identity_name()),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

/// The run's Role: `get` on exactly the Secrets it reads, on itself and on its
/// Connector, and `patch` on its own status. resourceNames everywhere.
pub fn role(run: &ValidatedRun<'_>) -> Role {
    let mut rules = Vec::new();
    let secrets = secret_names(run.input.spec);
    if !secrets.is_empty() {
        rules.push(rule("", "secrets", "get", secrets));
    }
    let own = vec![run.name.to_string()];
    rules.push(rule(ferry_crds::GROUP, "connectorruns", "get", own.clone()));
    rules.push(rule(
        ferry_crds::GROUP,
        "connectorruns/status",
        "patch",
        own,
    ));
    rules.push(rule(
        ferry_crds::GROUP,
        "connectors",
        "get",
        vec![run.input.run.spec.connector_ref.name.clone()],
    ));
    Role {
        metadata: run.meta(run.identity_name()),
        rules: Some(rules),
    }
}

fn rule(group: &str, resource: &str, verb: &str, names: Vec<String>) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(vec![resource.to_string()]),
        verbs: vec![verb.to_string()],
        resource_names: Some(names),
        non_resource_urls: None,
    }
}

/// Binds the run's Role to the run's ServiceAccount.
pub fn role_binding(run: &ValidatedRun<'_>) -> RoleBinding {
    let name = run.identity_name();
    RoleBinding {
        metadata: run.meta(name.clone()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: Some(run.namespace.to_string()),
            api_group: None,
        }]),
    }
}
