//! The link of a manifest in a destination's chain, computed alike by the
//! runner (which writes it into the next manifest as `previous`) and the
//! operator (which checks the place a runner reports against what it knows:
//! the run's name, its Connector, the anchor it pinned).

use sha2::{Digest, Sha256};

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

/// What a manifest's link covers: its own key, its place, the link of the
/// manifest it builds on, the run and Connector that wrote it, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInput<'a> {
    pub name: &'a str,
    pub sequence: u64,
    pub previous: Option<&'a str>,
    pub run: &'a str,
    pub connector: &'a str,
    pub created: &'a str,
}

/// The link (hex SHA-256) the next manifest names as its `previous`.
pub fn manifest_link(m: LinkInput<'_>) -> String {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"ferry-manifest-link\0");
    put_str(&mut out, m.name);
    put_u64(&mut out, m.sequence);
    put_opt(&mut out, m.previous);
    put_str(&mut out, m.run);
    put_str(&mut out, m.connector);
    put_str(&mut out, m.created);
    hex::encode(Sha256::digest(&out))
}

/// A place in a chain, `SEQUENCE:LINK`, as the runner reports it and the
/// operator pins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub sequence: u64,
    pub link: String,
}

impl std::str::FromStr for Place {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (sequence, link) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not SEQUENCE:LINK"))?;
        let sequence = sequence
            .parse()
            .map_err(|_| format!("{sequence:?} is not a sequence number"))?;
        if link.len() != 64 || !link.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{link:?} is not a manifest link (64 hex digits)"));
        }
        Ok(Self {
            sequence,
            link: link.to_ascii_lowercase(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_parse() {
        let p: Place = format!("7:{}", "AB".repeat(32)).parse().unwrap();
        assert_eq!((p.sequence, p.link), (7, "ab".repeat(32)));
        for bad in ["7", "x:ab", "7:abc", &format!("-1:{}", "ab".repeat(32))] {
            assert!(bad.parse::<Place>().is_err(), "{bad}");
        }
    }
}
