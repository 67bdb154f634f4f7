//! Where a run may connect: every address a host name resolves to is checked
//! against the networks the platform team denies (cloud metadata and
//! link-local addresses always, the cluster's pod and service ranges as
//! configured), after resolution and at connect time, for every client that
//! reaches a Connector's endpoints (S3 and STS, Azure, SFTP). The lineage
//! sink's URL is the operator's, and its client is not guarded. So a Connector naming a host
//! whose DNS answers with a metadata or cluster address is refused even on a
//! cluster whose network plugin ignores NetworkPolicy, and DNS rebinding gains
//! nothing (the address checked is the address connected to).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// Networks no run may reach, whatever the platform configures: link-local
/// (which holds the clouds' metadata services, 169.254.169.254 and
/// fd00:ec2::254 aside) and the metadata addresses themselves.
pub const ALWAYS_DENIED: [&str; 5] = [
    "169.254.0.0/16",
    "fe80::/10",
    "fd00:ec2::254/128",
    "100.100.100.200/32",
    "0.0.0.0/8",
];

/// The networks a run may not connect to.
#[derive(Debug, Clone)]
pub struct NetworkGuard {
    denied: Arc<Vec<IpNet>>,
}

impl Default for NetworkGuard {
    fn default() -> Self {
        Self::new(&[]).unwrap_or_else(|_| Self {
            denied: Arc::new(Vec::new()),
        })
    }
}

/// A network list that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a network (CIDR such as 10.0.0.0/8 or fd00::/8)")]
pub struct BadNetwork(pub String);

/// A connection refused because of where it would go.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{host} resolves only to addresses in networks runs may not reach ({addresses})")]
    Denied { host: String, addresses: String },
    #[error("failed to resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
}

impl NetworkGuard {
    /// The always-denied networks and `extra` (CIDRs, as the operator passes them).
    pub fn new(extra: &[String]) -> Result<Self, BadNetwork> {
        let mut denied = Vec::new();
        for n in ALWAYS_DENIED
            .iter()
            .map(|s| s.to_string())
            .chain(extra.iter().map(|s| s.trim().to_string()))
            .filter(|s| !s.is_empty())
        {
            let net = n
                .parse::<IpNet>()
                .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| BadNetwork(n.clone()))?;
            denied.push(net);
        }
        Ok(Self {
            denied: Arc::new(denied),
        })
    }

    /// Whether `ip` is in a denied network (IPv4-mapped IPv6 addresses are
    /// judged as the IPv4 address they carry).
    pub fn is_denied(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.denied.iter().any(|n| n.contains(&ip))
    }

    /// The addresses of `host` (a name or an IP literal) a run may connect to;
    /// an error when there are none.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let all: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|source| Refused::Resolve {
                    host: host.to_string(),
                    source,
                })?
                .collect(),
        };
        let allowed: Vec<SocketAddr> = all
            .iter()
            .copied()
            .filter(|a| !self.is_denied(a.ip()))
            .collect();
        if allowed.is_empty() {
            let addresses = all
                .iter()
                .map(|a| a.ip().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            tracing::warn!(host, %addresses, "refused to connect: denied network");
            return Err(Refused::Denied {
                host: host.to_string(),
                addresses,
            });
        }
        Ok(allowed)
    }
}

/// The guard as the AWS SDK's resolver (S3 and STS).
impl aws_smithy_runtime_api::client::dns::ResolveDns for NetworkGuard {
    fn resolve_dns<'a>(
        &'a self,
        name: &'a str,
    ) -> aws_smithy_runtime_api::client::dns::DnsFuture<'a> {
        aws_smithy_runtime_api::client::dns::DnsFuture::new(async move {
            self.resolve(name, 0)
                .await
                .map(|addrs| addrs.into_iter().map(|a| a.ip()).collect())
                .map_err(aws_smithy_runtime_api::client::dns::ResolveDnsError::new)
        })
    }
}

/// An HTTP client for the AWS SDK that connects only where the guard allows.
pub fn aws_http_client(
    guard: &NetworkGuard,
) -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .build_with_resolver(guard.clone())
}

/// The guard as object_store's resolver (Azure Blob).
impl object_store::client::DnsResolver for NetworkGuard {
    fn resolve(&self, host: &str) -> object_store::client::DnsFuture {
        let guard = self.clone();
        let host = host.to_string();
        Box::pin(async move {
            let addrs = guard.resolve(&host, 0).await?;
            Ok(addrs.into_iter().map(|a| a.ip()).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_link_local_and_configured_networks_are_denied() {
        let g = NetworkGuard::new(&["10.96.0.0/12".into(), "10.244.0.0/16".into()]).unwrap();
        for ip in [
            "169.254.169.254",
            "fd00:ec2::254",
            "fe80::1",
            "10.96.0.1",
            "10.244.3.7",
            "::ffff:169.254.169.254",
            "0.0.0.0",
        ] {
            assert!(g.is_denied(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["52.95.110.1", "127.0.0.1", "10.0.0.5", "2600:1f18::1"] {
            assert!(!g.is_denied(ip.parse().unwrap()), "{ip}");
        }
        assert!(NetworkGuard::new(&["nonsense".into()]).is_err());
    }

    /// Attack: a Connector names a host whose DNS answers with the cloud
    /// metadata address (or an IP literal of it): the runner never connects.
    #[tokio::test]
    async fn a_host_resolving_to_the_metadata_service_is_refused() {
        let g = NetworkGuard::default();
        let e = g.resolve("169.254.169.254", 80).await.unwrap_err();
        assert!(e.to_string().contains("may not reach"), "{e}");
        let e = g.resolve("[fd00:ec2::254]", 80).await.unwrap_err();
        assert!(matches!(e, Refused::Denied { .. }), "{e}");
        // A name that resolves to a denied address: localhost, with loopback denied.
        let no_loopback = NetworkGuard::new(&["127.0.0.0/8".into(), "::1/128".into()]).unwrap();
        assert!(no_loopback.resolve("localhost", 80).await.is_err());
        assert!(g.resolve("localhost", 80).await.is_ok());
    }
}
