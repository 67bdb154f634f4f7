//! The record one shard of a run leaves for the run's last step: the segments
//! holding the entries of the keys it owns, the records it wrote, its counts,
//! and the manifest it planned against, under an HMAC-SHA256 with the same
//! derived key as a manifest's. Its format tag opens what the MAC covers, so
//! a part is never taken for a manifest, nor a manifest for a part.
//!
//! ```text
//! {"format":"ferry-shard-part/v1","run":..,"connector":..,"shard":1,"shards":3,
//!  "base":<link of the manifest planned against, or absent>,"kekId":..,
//!  "segments":[..],"records":[..],"counts":{..},"mac":..}
//! stored at .ferry/shards/<run>/<shard>-of-<shards>.json
//! ```
//!
//! A shard owns a key when the first 8 bytes (big endian) of
//! SHA-256("ferry-shard" || 0x00 || key), modulo the number of shards, are
//! its index ([`shard_of`]).

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::manifest::{
    ManifestEntry, ManifestError, put_entry, put_opt, put_segments, put_str, put_u64, record_mac,
};
use super::segments::{self, SegmentRef};
use super::{Kek, KeyRing};

/// The format tag of a shard's part.
pub const PART_FORMAT: &str = "ferry-shard-part/v1";
/// Where parts are stored under a destination prefix.
pub const PART_DIR: &str = ".ferry/shards/";
/// The most shards a run may be spread over.
pub const MAX_SHARDS: u32 = 64;

/// One shard of a run: its index, from 0, and how many there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// Whether this shard copies and records `key`.
    pub fn owns(&self, key: &str) -> bool {
        shard_of(key, self.count) == self.index
    }

    /// Where this shard of run `run` stores its part.
    pub fn part_key(&self, run: &str) -> String {
        format!("{PART_DIR}{run}/{}-of-{}.json", self.index, self.count)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `INDEX/COUNT`, the index from 0.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "{s:?} is not a shard: expected INDEX/COUNT, 0 <= INDEX < COUNT <= {MAX_SHARDS}"
            )
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || count > MAX_SHARDS || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

/// The shard of `count` that owns `key`.
pub fn shard_of(key: &str, count: u32) -> u32 {
    let mut h = Sha256::new();
    h.update(b"ferry-shard\0");
    h.update(key.as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(first) % u64::from(count.max(1))) as u32
}

/// What a shard did, as its part records it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PartCounts {
    pub copied: u64,
    pub skipped: u64,
    pub tombstoned: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub manifest_bytes: u64,
}

/// A shard's part.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ShardPart {
    /// Always [`PART_FORMAT`].
    pub format: String,
    pub run: String,
    pub connector: String,
    pub shard: u32,
    pub shards: u32,
    /// The link of the manifest the shard planned against; none when the
    /// destination had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    pub kek_id: String,
    /// When the KEK is a run key from a KMS, its wrapped form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms: Option<String>,
    /// The segments of the shard's entries, in key order.
    #[serde(default)]
    pub segments: Vec<SegmentRef>,
    /// Ferry's own records the shard wrote (its audit lines).
    #[serde(default)]
    pub records: Vec<ManifestEntry>,
    pub counts: PartCounts,
    pub mac: String,
}

/// What a part is about, before it is signed.
#[derive(Clone, Debug)]
pub struct PartContents {
    pub run: String,
    pub connector: String,
    pub shard: Shard,
    pub base: Option<String>,
    pub segments: Vec<SegmentRef>,
    pub records: Vec<ManifestEntry>,
    pub counts: PartCounts,
}

impl ShardPart {
    /// A part of `contents`, MAC'd with `kek`.
    pub fn sign(kek: &Kek, contents: PartContents) -> Self {
        let mut p = Self {
            format: PART_FORMAT.into(),
            run: contents.run,
            connector: contents.connector,
            shard: contents.shard.index,
            shards: contents.shard.count,
            base: contents.base,
            kek_id: kek.id().to_string(),
            kms: kek.wrapped().map(str::to_string),
            segments: contents.segments,
            records: contents.records,
            counts: contents.counts,
            mac: String::new(),
        };
        p.mac = hex::encode(p.mac_with(kek).finalize().into_bytes());
        p
    }

    fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.segments.len() * 200);
        out.extend_from_slice(self.format.as_bytes());
        out.push(0);
        put_str(&mut out, &self.run);
        put_str(&mut out, &self.connector);
        put_u64(&mut out, u64::from(self.shard));
        put_u64(&mut out, u64::from(self.shards));
        put_opt(&mut out, self.base.as_deref());
        put_str(&mut out, &self.kek_id);
        put_opt(&mut out, self.kms.as_deref());
        put_segments(&mut out, &self.segments);
        put_u64(&mut out, self.records.len() as u64);
        for e in &self.records {
            put_entry(&mut out, e, true);
        }
        let c = &self.counts;
        for n in [
            c.copied,
            c.skipped,
            c.tombstoned,
            c.bytes_read,
            c.bytes_written,
            c.manifest_bytes,
        ] {
            put_u64(&mut out, n);
        }
        out
    }

    fn mac_with(&self, kek: &Kek) -> Hmac<Sha256> {
        record_mac(kek, &self.canonical())
    }

    /// Checks the format, the MAC (its KEK already resolved in `keys`), that
    /// it is the part `expected` of `run` and that its segments are in order.
    pub fn verify(&self, keys: &KeyRing, run: &str, expected: Shard) -> Result<(), ManifestError> {
        if self.format != PART_FORMAT {
            return Err(ManifestError::Format(self.format.clone()));
        }
        let kek = keys.get(&self.kek_id)?;
        let tag = hex::decode(&self.mac).map_err(|_| ManifestError::Mac)?;
        self.mac_with(&kek)
            .verify_slice(&tag)
            .map_err(|_| ManifestError::Mac)?;
        if self.run != run || self.shard != expected.index || self.shards != expected.count {
            return Err(ManifestError::Misplaced {
                key: expected.part_key(run),
                name: Shard {
                    index: self.shard,
                    count: self.shards,
                }
                .part_key(&self.run),
            });
        }
        segments::check_refs(&self.segments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(kek: &Kek) -> ShardPart {
        ShardPart::sign(
            kek,
            PartContents {
                run: "r-1".into(),
                connector: "ns/c".into(),
                shard: Shard { index: 1, count: 3 },
                base: Some("ab".into()),
                segments: vec![],
                records: vec![],
                counts: PartCounts {
                    copied: 2,
                    ..PartCounts::default()
                },
            },
        )
    }

    #[test]
    fn every_key_has_one_owner_and_the_shards_share_the_keys() {
        let mut per = [0u32; 3];
        for i in 0..3000 {
            let key = format!("daily/{i}.csv");
            let owner = shard_of(&key, 3);
            per[owner as usize] += 1;
            let owners = (0..3)
                .filter(|&s| Shard { index: s, count: 3 }.owns(&key))
                .count();
            assert_eq!(owners, 1);
        }
        assert!(per.iter().all(|n| (850..1150).contains(n)), "{per:?}");
        assert_eq!(shard_of("anything", 1), 0);
    }

    #[test]
    fn shards_parse_and_bad_ones_are_refused() {
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { index: 2, count: 3 }));
        for bad in ["3/3", "0/0", "1", "a/3", "0/65", "-1/3"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    /// Attack: a part edited after it was written (counts raised, a segment
    /// dropped, its shard renumbered), or passed off as another shard's.
    #[test]
    fn an_edited_or_renumbered_part_is_refused() {
        let kek = Kek::from_bytes([7; 32]);
        let keys = KeyRing::new(vec![Kek::from_bytes([7; 32])]);
        let good = part(&kek);
        good.verify(&keys, "r-1", Shard { index: 1, count: 3 })
            .expect("verifies");
        let mut edited = good.clone();
        edited.counts.copied = 20;
        assert_eq!(
            edited.verify(&keys, "r-1", Shard { index: 1, count: 3 }),
            Err(ManifestError::Mac)
        );
        let mut renumbered = good.clone();
        renumbered.shard = 2;
        assert_eq!(
            renumbered.verify(&keys, "r-1", Shard { index: 2, count: 3 }),
            Err(ManifestError::Mac)
        );
        assert!(matches!(
            good.verify(&keys, "r-1", Shard { index: 2, count: 3 }),
            Err(ManifestError::Misplaced { .. })
        ));
        assert!(matches!(
            good.verify(&keys, "r-2", Shard { index: 1, count: 3 }),
            Err(ManifestError::Misplaced { .. })
        ));
        let other = Kek::from_bytes([8; 32]);
        let forged = part(&other);
        let both = KeyRing::new(vec![kek, Kek::from_bytes([8; 32])]);
        forged
            .verify(&both, "r-1", Shard { index: 1, count: 3 })
            .expect("a part signed with a trusted key verifies");
        assert!(
            forged
                .verify(&keys, "r-1", Shard { index: 1, count: 3 })
                .is_err(),
            "a key outside the ring"
        );
    }
}
