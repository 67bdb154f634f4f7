//! The residency rule on declared regions, as the operator checks it before a
//! run's pod exists and the runner checks it again before it opens a store: one
//! rule, so the two checks cannot drift.

use crate::{ConnectorSpec, DataResidency, Endpoint, EndpointKind};

impl Endpoint {
    /// The region this endpoint declares (local folders may declare none).
    pub fn declared_region(&self) -> Option<&str> {
        match self.kind()? {
            EndpointKind::S3(s) => Some(&s.region),
            EndpointKind::AzureBlob(a) => Some(&a.region),
            EndpointKind::Sftp(s) => Some(&s.region),
            EndpointKind::Local(l) => l.region.as_deref(),
        }
    }
}

/// How a Connector breaks `dataResidency: in-region-only`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResidencyBreach {
    /// The tenant's region is not known (no namespace label, no
    /// `--tenant-region`); the caller says where it should come from.
    TenantRegionUnknown,
    /// An end declares another region.
    Outside {
        side: &'static str,
        region: String,
        tenant: String,
    },
    /// An end declares no region.
    Undeclared { side: &'static str, tenant: String },
}

impl std::fmt::Display for ResidencyBreach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResidencyBreach::TenantRegionUnknown => {
                f.write_str("dataResidency is in-region-only but the tenant's region is unknown")
            }
            ResidencyBreach::Outside {
                side,
                region,
                tenant,
            } => write!(
                f,
                "{side} is in region {region:?}, outside the tenant's region {tenant:?} (dataResidency: in-region-only)"
            ),
            ResidencyBreach::Undeclared { side, tenant } => write!(
                f,
                "{side} declares no region; dataResidency: in-region-only needs one equal to {tenant:?}"
            ),
        }
    }
}

/// Every breach of the residency rule by `spec` for a tenant in
/// `tenant_region`: with `in-region-only`, both ends must declare the tenant's
/// region. Empty when the rule holds (always, with `dataResidency: any`).
pub fn residency_breaches(
    spec: &ConnectorSpec,
    tenant_region: Option<&str>,
) -> Vec<ResidencyBreach> {
    if spec.compliance.data_residency == DataResidency::Any {
        return Vec::new();
    }
    let Some(tenant) = tenant_region else {
        return vec![ResidencyBreach::TenantRegionUnknown];
    };
    [("source", &spec.source), ("destination", &spec.destination)]
        .into_iter()
        .filter_map(|(side, endpoint)| match endpoint.declared_region() {
            Some(r) if r == tenant => None,
            Some(r) => Some(ResidencyBreach::Outside {
                side,
                region: r.to_string(),
                tenant: tenant.to_string(),
            }),
            None => Some(ResidencyBreach::Undeclared {
                side,
                tenant: tenant.to_string(),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(residency: &str, src_region: &str) -> ConnectorSpec {
        serde_saphyr::from_str(&format!(
            "source: {{local: {{path: a{src_region}}}}}\ndestination: {{sftp: {{host: h, path: /p, region: eu-west-1, credentials: {{secretRef: {{name: s}}}}, hostKey: {{fingerprint: 'SHA256:x'}}}}}}\nencryption: {{keyRef: {{secretRef: {{name: k}}}}}}\ncompliance: {{dataResidency: {residency}}}\n"
        ))
        .expect("spec")
    }

    #[test]
    fn both_ends_must_declare_the_tenants_region() {
        let inside = spec("in-region-only", ", region: eu-west-1");
        assert!(residency_breaches(&inside, Some("eu-west-1")).is_empty());
        assert_eq!(
            residency_breaches(&inside, None),
            [ResidencyBreach::TenantRegionUnknown]
        );
        let undeclared = spec("in-region-only", "");
        let found = residency_breaches(&undeclared, Some("eu-west-1"));
        assert_eq!(
            found,
            [ResidencyBreach::Undeclared {
                side: "source",
                tenant: "eu-west-1".into()
            }]
        );
        let both = residency_breaches(&inside, Some("eastus"));
        assert_eq!(both.len(), 2);
        assert!(
            both[1]
                .to_string()
                .starts_with("destination is in region \"eu-west-1\"")
        );
        assert!(residency_breaches(&spec("any", ""), None).is_empty());
    }
}
