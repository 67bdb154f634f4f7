//! The one rule for endpoint URLs that a Connector names, applied by the
//! operator before a pod exists and by the runner before it connects, with the
//! parser the clients themselves use (the `url` crate, WHATWG URL parsing, as
//! `object_store` and `reqwest` do), so the host that is checked is the host
//! that is reached.
//!
//! Refused outright, because parsers disagree about them: backslashes (a
//! WHATWG parser reads `\` as `/` in an http URL, others keep it), white space
//! and control characters, and user information (`user@host`). Plain `http://`
//! is accepted only for a loopback address and only when the caller allows it.

use std::net::IpAddr;

/// Why an endpoint URL is refused. Messages never repeat the URL's path or
/// query (a query may carry a SAS token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlRefusal {
    /// Not an absolute URL with a host.
    NotAUrl,
    /// A character or part that parsers read differently.
    Ambiguous(&'static str),
    /// A scheme other than https (or http).
    Scheme(String),
    /// Plain http to a host that is not loopback.
    PlainHttp { host: String },
    /// Plain http to a loopback host without the opt-out.
    PlainHttpNotAllowed { host: String },
}

impl std::fmt::Display for UrlRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UrlRefusal::NotAUrl => write!(f, "endpoint is not an absolute URL with a host"),
            UrlRefusal::Ambiguous(what) => write!(
                f,
                "endpoint URL holds {what}, which URL parsers read differently: remove it"
            ),
            UrlRefusal::Scheme(s) => write!(f, "unsupported scheme {s:?}: use https"),
            UrlRefusal::PlainHttp { host } => {
                write!(f, "plain http to {host} is refused: use https")
            }
            UrlRefusal::PlainHttpNotAllowed { host } => write!(
                f,
                "plain http to {host} needs insecurePlainHttpOnLoopback: true and an operator that allows it"
            ),
        }
    }
}

impl std::error::Error for UrlRefusal {}

/// An endpoint URL that passed [`check_endpoint_url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl {
    url: url::Url,
}

impl EndpointUrl {
    /// The host as the clients will resolve or connect to it (no brackets).
    pub fn host(&self) -> String {
        match self.url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(h) => h.to_string(),
            None => String::new(),
        }
    }

    /// The TCP port, the scheme's default when none is given.
    pub fn port(&self) -> u16 {
        self.url.port_or_known_default().unwrap_or(443)
    }

    /// Whether the URL is plain `http://`.
    pub fn is_plain_http(&self) -> bool {
        self.url.scheme() == "http"
    }

    /// The parsed URL.
    pub fn url(&self) -> &url::Url {
        &self.url
    }
}

/// Whether `host` names the loopback interface: `localhost`, 127.0.0.0/8 or ::1.
pub fn is_loopback_host(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        url::Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

/// Checks an endpoint URL: https, or plain http to a loopback host when
/// `allow_plain_loopback`; never backslashes, white space or user information.
pub fn check_endpoint_url(
    raw: &str,
    allow_plain_loopback: bool,
) -> Result<EndpointUrl, UrlRefusal> {
    if raw.contains('\\') {
        return Err(UrlRefusal::Ambiguous("a backslash"));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(UrlRefusal::Ambiguous("white space or a control character"));
    }
    let url = url::Url::parse(raw).map_err(|_| UrlRefusal::NotAUrl)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlRefusal::Ambiguous("user information (user@host)"));
    }
    let Some(host) = url.host() else {
        return Err(UrlRefusal::NotAUrl);
    };
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(&host) => {
            if !allow_plain_loopback {
                return Err(UrlRefusal::PlainHttpNotAllowed {
                    host: host.to_string(),
                });
            }
        }
        "http" => {
            return Err(UrlRefusal::PlainHttp {
                host: host.to_string(),
            });
        }
        other => return Err(UrlRefusal::Scheme(other.to_string())),
    }
    Ok(EndpointUrl { url })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_anywhere_and_plain_http_only_to_loopback_when_allowed() {
        let ok = |u: &str, allow| check_endpoint_url(u, allow).is_ok();
        assert!(ok("https://s3.eu-west-1.amazonaws.com", false));
        assert!(ok("https://s3.example.com:9000/path?x=1", false));
        assert!(ok("http://127.0.0.1:9000", true));
        assert!(ok("http://127.1.2.3:9000", true));
        assert!(ok("http://[::1]:9000/x", true));
        assert!(ok("http://localhost:10000/devstoreaccount1", true));
        assert!(!ok("http://127.0.0.1:9000", false));
        assert!(!ok("http://10.0.0.1:9000", true));
        assert!(!ok("ftp://127.0.0.1", true));
        assert!(!ok("127.0.0.1:9000", true));
        assert!(!ok("https://", true));
        let u = check_endpoint_url("http://[::1]:9000/x", true).unwrap();
        assert_eq!((u.host().as_str(), u.port()), ("::1", 9000));
        assert_eq!(check_endpoint_url("https://h", false).unwrap().port(), 443);
    }

    /// Attack: a URL that a hand-written check reads as loopback while the
    /// client's parser connects elsewhere (backslash, user information), or
    /// that hides a host behind white space.
    #[test]
    fn a_url_that_parsers_read_differently_is_refused() {
        for (url, why) in [
            ("http://10.0.0.5:8080\\@localhost:8080", "a backslash"),
            ("http://10.0.0.5:8080\\\\@127.0.0.1/", "a backslash"),
            ("http://user@127.0.0.2@evil.com", "user information"),
            ("http://example.com@127.0.0.1/", "user information"),
            ("https://user:pw@s3.example.com", "user information"),
            ("http://127.0.0.1 .evil.com", "white space"),
            ("http://127.0.0.1\t/", "white space"),
        ] {
            let refused = check_endpoint_url(url, true).unwrap_err();
            assert!(refused.to_string().contains(why), "{url}: {refused}");
        }
        assert!(check_endpoint_url("http://127.0.0.1.evil.com", true).is_err());
        assert!(check_endpoint_url("http://0x7f000001.evil.com", true).is_err());
    }

    #[test]
    fn messages_do_not_repeat_the_query() {
        let e = check_endpoint_url("http://h.example/?sig=SECRET", false).unwrap_err();
        assert!(!e.to_string().contains("SECRET"));
    }
}
