//! Where a run may connect, shared by the operator (the run's NetworkPolicy)
//! and the runner (every address its clients connect to): closed by default.
//!
//! Three lists make the rule. [`ALWAYS_DENIED`] (link-local, which holds the
//! clouds' metadata services, and the metadata addresses themselves) is never
//! reachable. [`PRIVATE`] (RFC 1918, CGNAT, IPv6 unique-local: where a
//! cluster's pods, services and nodes live) is not reachable unless the
//! platform team lists a range of it as allowed (an on-premises SFTP server or
//! S3 store). Networks the platform team denies besides are never reachable,
//! an allowed range inside them included. Everything else (public addresses,
//! and loopback, which in a pod is the pod itself) is.

use std::net::IpAddr;

use ipnet::IpNet;

/// Networks no run may reach, whatever is configured: link-local (the
/// clouds' metadata services at 169.254.169.254 and fd00:ec2::254 among
/// them), Alibaba's metadata address and "this network".
pub const ALWAYS_DENIED: [&str; 5] = [
    "0.0.0.0/8",
    "100.100.100.200/32",
    "169.254.0.0/16",
    "fd00:ec2::254/128",
    "fe80::/10",
];

/// Private networks, denied unless the platform team allows a range of them:
/// RFC 1918, carrier-grade NAT (RFC 6598) and IPv6 unique-local addresses.
pub const PRIVATE: [&str; 5] = [
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
];

/// A network list entry that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a network (CIDR such as 10.0.0.0/8 or fd00::/8)")]
pub struct BadNetwork(pub String);

/// One NetworkPolicy `ipBlock`: a network and the parts of it excepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub cidr: String,
    pub except: Vec<String>,
}

/// The networks a run may connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// Always denied, and denied by the platform team: never reachable.
    denied: Vec<IpNet>,
    /// Private: reachable only inside `allowed`.
    private: Vec<IpNet>,
    /// Private ranges the platform team allows.
    allowed: Vec<IpNet>,
}

impl Default for Reach {
    fn default() -> Self {
        Self::new(&[], &[]).unwrap_or_else(|_| unreachable_default())
    }
}

fn unreachable_default() -> Reach {
    // The constants parse (tested); this keeps `Default` free of a panic.
    Reach {
        denied: Vec::new(),
        private: Vec::new(),
        allowed: Vec::new(),
    }
}

/// Parses a CIDR, or a bare address as its single-address network.
pub fn parse_network(s: &str) -> Result<IpNet, BadNetwork> {
    let s = s.trim();
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| BadNetwork(s.to_string()))
}

fn parse_all<'a>(list: impl IntoIterator<Item = &'a str>) -> Result<Vec<IpNet>, BadNetwork> {
    list.into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_network)
        .collect()
}

/// Whether `outer` holds all of `inner`.
fn covers(outer: &IpNet, inner: &IpNet) -> bool {
    outer.contains(&inner.network()) && outer.prefix_len() <= inner.prefix_len()
}

impl Reach {
    /// The rule with the platform team's `denied` and `allowed` networks.
    pub fn new(denied: &[String], allowed: &[String]) -> Result<Self, BadNetwork> {
        let mut all_denied = parse_all(ALWAYS_DENIED)?;
        all_denied.extend(parse_all(denied.iter().map(String::as_str))?);
        Ok(Self {
            denied: all_denied,
            private: parse_all(PRIVATE)?,
            allowed: parse_all(allowed.iter().map(String::as_str))?,
        })
    }

    /// Whether a run may not connect to `ip` (an IPv4-mapped IPv6 address is
    /// judged as the IPv4 address it carries).
    pub fn is_denied(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.denied.iter().any(|n| n.contains(&ip))
            || (self.private.iter().any(|n| n.contains(&ip))
                && !self.allowed.iter().any(|n| n.contains(&ip)))
    }

    /// The same rule as NetworkPolicy `ipBlock`s (ORed, as a rule's peers
    /// are): every address but the denied and private networks, then each
    /// allowed range but the denied networks inside it. An allowed range that
    /// lies inside a denied one is left out (denied wins). Sorted, so the
    /// policy is the same for the same settings.
    pub fn blocks(&self) -> Vec<Block> {
        let mut blocks = Vec::new();
        for any in ["0.0.0.0/0", "::/0"] {
            let Ok(any) = any.parse::<IpNet>() else {
                continue;
            };
            blocks.push(Block {
                cidr: any.to_string(),
                except: Self::inside(&any, self.denied.iter().chain(&self.private)),
            });
        }
        for allowed in &self.allowed {
            if self.denied.iter().any(|d| covers(d, allowed)) {
                continue;
            }
            blocks.push(Block {
                cidr: allowed.to_string(),
                except: Self::inside(allowed, self.denied.iter()),
            });
        }
        blocks
    }

    /// The networks of `nets` strictly inside `outer` (NetworkPolicy's rule
    /// for `except`), as strings, sorted and without repeats.
    fn inside<'a>(outer: &IpNet, nets: impl Iterator<Item = &'a IpNet>) -> Vec<String> {
        let mut except: Vec<String> = nets
            .filter(|n| covers(outer, n) && n.prefix_len() > outer.prefix_len())
            .map(IpNet::to_string)
            .collect();
        except.sort();
        except.dedup();
        except
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(reach: &Reach, ip: &str) -> bool {
        reach.is_denied(ip.parse().unwrap())
    }

    #[test]
    fn closed_by_default() {
        let r = Reach::default();
        assert_eq!(r.denied.len(), ALWAYS_DENIED.len());
        assert_eq!(r.private.len(), PRIVATE.len());
        for ip in [
            "169.254.169.254",
            "fd00:ec2::254",
            "fe80::1",
            "100.100.100.200",
            "10.0.0.7",
            "10.96.0.1",
            "172.20.1.1",
            "192.168.1.1",
            "100.64.0.1",
            "fd12::1",
            "::ffff:10.0.0.7",
            "::ffff:169.254.169.254",
            "0.0.0.0",
        ] {
            assert!(denied(&r, ip), "{ip}");
        }
        for ip in [
            "52.95.110.1",
            "127.0.0.1",
            "::1",
            "2600:1f18::1",
            "172.32.0.1",
        ] {
            assert!(!denied(&r, ip), "{ip}");
        }
    }

    #[test]
    fn the_platform_allows_private_ranges_and_denies_more() {
        let r = Reach::new(
            &["203.0.113.0/24".into(), "10.1.2.0/24".into()],
            &[
                "10.1.0.0/16".into(),
                "169.254.169.254/32".into(),
                "10.1.2.128/25".into(),
            ],
        )
        .unwrap();
        assert!(!denied(&r, "10.1.9.9"), "allowed");
        assert!(denied(&r, "10.2.0.1"), "private, not allowed");
        assert!(denied(&r, "10.1.2.200"), "denied wins over allowed");
        assert!(denied(&r, "169.254.169.254"), "metadata is never allowed");
        assert!(denied(&r, "203.0.113.5"));
        assert!(Reach::new(&["nonsense".into()], &[]).is_err());
        assert!(Reach::new(&[], &["10.0.0.0/33".into()]).is_err());
    }

    #[test]
    fn blocks_say_the_same_as_the_rule() {
        let r = Reach::new(
            &[
                "203.0.113.0/24".into(),
                "10.1.2.0/24".into(),
                "fd10::/64".into(),
            ],
            &[
                "10.1.0.0/16".into(),
                "169.254.169.254".into(),
                "fd10::/96".into(),
            ],
        )
        .unwrap();
        let blocks = r.blocks();
        assert_eq!(
            blocks,
            vec![
                Block {
                    cidr: "0.0.0.0/0".into(),
                    except: [
                        "0.0.0.0/8",
                        "10.0.0.0/8",
                        "10.1.2.0/24",
                        "100.100.100.200/32",
                        "100.64.0.0/10",
                        "169.254.0.0/16",
                        "172.16.0.0/12",
                        "192.168.0.0/16",
                        "203.0.113.0/24"
                    ]
                    .map(String::from)
                    .to_vec(),
                },
                Block {
                    cidr: "::/0".into(),
                    except: ["fc00::/7", "fd00:ec2::254/128", "fd10::/64", "fe80::/10"]
                        .map(String::from)
                        .to_vec(),
                },
                // The allowed range, but the denied network inside it; the
                // metadata address and the range inside a denied one are left out.
                Block {
                    cidr: "10.1.0.0/16".into(),
                    except: vec!["10.1.2.0/24".into()],
                },
            ]
        );
        // Each address is let through by some block exactly when the rule allows it.
        let through = |ip: &str| {
            let ip: IpAddr = ip.parse().unwrap();
            blocks.iter().any(|b| {
                let cidr: IpNet = b.cidr.parse().unwrap();
                cidr.contains(&ip)
                    && !b
                        .except
                        .iter()
                        .any(|e| e.parse::<IpNet>().unwrap().contains(&ip))
            })
        };
        for ip in [
            "10.1.9.9",
            "10.1.2.7",
            "10.2.0.1",
            "169.254.169.254",
            "52.95.110.1",
            "203.0.113.5",
            "fd10::1",
            "fd11::1",
            "2600:1f18::1",
            "100.64.0.1",
        ] {
            assert_eq!(through(ip), !denied(&r, ip), "{ip}");
        }
    }
}
