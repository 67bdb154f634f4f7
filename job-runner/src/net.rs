//! Where a run may connect: every address a host name resolves to is checked
//! against the networks runs may not reach (cloud metadata and link-local
//! addresses always, private ranges unless the platform team allows them, and
//! the networks it denies: [`ferry_crds::network`]), after resolution and at
//! connect time, and every endpoint given as an IP literal before its client
//! is built, for every client that
//! reaches a Connector's endpoints (S3 and STS, Azure, SFTP). The lineage
//! sink's URL is the operator's, and its client is not guarded. So a Connector naming a host
//! whose DNS answers with a metadata or cluster address is refused even on a
//! cluster whose network plugin ignores NetworkPolicy, and DNS rebinding gains
//! nothing (the address checked is the address connected to).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ferry_crds::network::Reach;

pub use ferry_crds::network::BadNetwork;

/// The networks a run may not connect to ([`ferry_crds::network`]: metadata
/// and link-local always, private ranges unless allowed, the platform's own).
#[derive(Debug, Clone, Default)]
pub struct NetworkGuard {
    reach: Arc<Reach>,
}

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
    /// The rule with the platform's `denied` and `allowed` networks (CIDRs,
    /// as the operator passes them).
    pub fn new(denied: &[String], allowed: &[String]) -> Result<Self, BadNetwork> {
        Ok(Self {
            reach: Arc::new(Reach::new(denied, allowed)?),
        })
    }

    /// Whether `ip` is in a denied network (IPv4-mapped IPv6 addresses are
    /// judged as the IPv4 address they carry).
    pub fn is_denied(&self, ip: IpAddr) -> bool {
        self.reach.is_denied(ip)
    }

    /// Refuses a URL whose host is an IP literal in a denied network. The HTTP
    /// clients (hyper under the AWS SDK, reqwest under object_store) connect
    /// to a literal without asking the resolver, so the check the resolver
    /// makes for names is made here, before a client is built, for every
    /// endpoint URL. Names (and URLs that do not parse, which the endpoint
    /// rule refuses) pass: the resolver judges them at connect time.
    pub fn check_url(&self, url: &str) -> Result<(), Refused> {
        let Ok(parsed) = ferry_crds::check_endpoint_url(url, true) else {
            return Ok(());
        };
        let host = parsed.host();
        match host.parse::<IpAddr>() {
            Ok(ip) if self.is_denied(ip) => {
                tracing::warn!(host, "refused to connect: denied network");
                Err(Refused::Denied {
                    addresses: ip.to_string(),
                    host,
                })
            }
            _ => Ok(()),
        }
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
        let g = NetworkGuard::new(&["203.0.113.0/24".into()], &["10.1.0.0/16".into()]).unwrap();
        for ip in [
            "169.254.169.254",
            "fd00:ec2::254",
            "fe80::1",
            "10.96.0.1",
            "10.244.3.7",
            "192.168.1.1",
            "fd12::1",
            "203.0.113.9",
            "::ffff:169.254.169.254",
            "0.0.0.0",
        ] {
            assert!(g.is_denied(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["52.95.110.1", "127.0.0.1", "10.1.0.5", "2600:1f18::1"] {
            assert!(!g.is_denied(ip.parse().unwrap()), "{ip}");
        }
        assert!(NetworkGuard::new(&["nonsense".into()], &[]).is_err());
        assert!(NetworkGuard::new(&[], &["nonsense".into()]).is_err());
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
        let no_loopback =
            NetworkGuard::new(&["127.0.0.0/8".into(), "::1/128".into()], &[]).unwrap();
        assert!(no_loopback.resolve("localhost", 80).await.is_err());
        assert!(g.resolve("localhost", 80).await.is_ok());
    }

    /// Attack: a Connector gives its endpoint as an IP literal in a denied
    /// network (`https://10.0.0.7`, the metadata service): the HTTP clients
    /// connect to a literal without the resolver, so the name rule alone let
    /// it through while `https://internal.example` resolving there was refused.
    #[test]
    fn an_endpoint_given_as_an_ip_literal_in_a_denied_network_is_refused() {
        let g = NetworkGuard::default();
        for url in [
            "https://10.0.0.7",
            "https://10.0.0.7:9000/bucket",
            "https://169.254.169.254/latest",
            "https://[fd00:ec2::254]/",
            "https://[::ffff:10.0.0.7]/",
            // WHATWG URL parsing reads these as IPv4 literals too.
            "https://0x0a.0.0.7/",
            "https://167772167/",
        ] {
            let e = g.check_url(url).unwrap_err();
            assert!(matches!(e, Refused::Denied { .. }), "{url}: {e}");
            assert!(e.to_string().contains("may not reach"), "{e}");
        }
        // Control: allowed literals and names (judged by the resolver) pass.
        for url in [
            "https://52.95.110.1",
            "http://127.0.0.1:9000",
            "https://[2600:1f18::1]/",
            "https://s3.eu-west-1.amazonaws.com",
            "https://internal.example",
        ] {
            assert!(g.check_url(url).is_ok(), "{url}");
        }
    }
}
