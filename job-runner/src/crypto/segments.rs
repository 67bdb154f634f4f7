//! The entries of a version 6 manifest, in segments: key-ordered runs of
//! entries stored apart from the manifest, each named by the SHA-256 of its
//! bytes, under a manifest (the root) that lists each segment's digest, size,
//! entry count and first and last keys, and authenticates that list.
//!
//! Where a segment ends depends on the keys alone: after an entry whose key's
//! cut hash (below) has its low ten bits zero, once the segment holds
//! [`MIN_ENTRIES`], and always at [`MAX_ENTRIES`]. A run that changes one
//! object therefore changes one segment, and the others keep their bytes and
//! names: they are not written again. A segment is
//!
//! ```text
//! {"format":"ferry-manifest-segment/v1","objects":[entry, ...]}
//! cut hash = first 8 bytes, big endian, of SHA-256("ferry-segment-cut" || 0x00 || key)
//! name     = .ferry/segments/<hex SHA-256 of the segment's bytes>.json
//! ```
//!
//! A reader checks a segment's bytes against the root before it parses them
//! (size first, so a planted huge file is not read), then its count, order
//! and first and last keys: with the MAC over the root, every entry is
//! authenticated, in order, once.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::manifest::{ManifestEntry, ManifestError};

/// Where segments are stored under a destination prefix.
pub const SEGMENT_DIR: &str = ".ferry/segments/";
/// The format tag of a segment.
pub const SEGMENT_FORMAT: &str = "ferry-manifest-segment/v1";
/// Fewest entries before a segment may end (but the last).
pub const MIN_ENTRIES: usize = 256;
/// Most entries in a segment.
pub const MAX_ENTRIES: usize = 4096;
/// A segment ends after an entry whose cut hash has these bits zero: on
/// average every 1024 entries, past the minimum.
const CUT_MASK: u64 = 0x3ff;
/// The largest segment a reader accepts: `MAX_ENTRIES` entries of long keys.
pub const MAX_SEGMENT_BYTES: u64 = 64 << 20;

/// One segment as the root lists it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SegmentRef {
    /// Hex SHA-256 of the stored segment.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// How many entries it holds.
    pub count: u64,
    /// Its first key.
    pub first: String,
    /// Its last key.
    pub last: String,
}

impl SegmentRef {
    /// Where the segment is stored under the destination prefix.
    pub fn key(&self) -> String {
        format!("{SEGMENT_DIR}{}.json", self.sha256)
    }
}

#[derive(Serialize, Deserialize)]
struct SegmentFile {
    format: String,
    objects: Vec<ManifestEntry>,
}

/// A sealed segment: what the root lists, and the bytes to store.
#[derive(Debug)]
pub struct Segment {
    pub reference: SegmentRef,
    pub bytes: Vec<u8>,
}

/// Whether a segment ends after the entry with `key`.
fn cuts_after(key: &str) -> bool {
    let digest = Sha256::new()
        .chain_update(b"ferry-segment-cut\0")
        .chain_update(key.as_bytes())
        .finalize();
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(head) & CUT_MASK == 0
}

/// Cuts a key-ordered sequence of entries into segments, holding one segment
/// at a time.
#[derive(Debug, Default)]
pub struct Cutter {
    entries: Vec<ManifestEntry>,
    last: Option<String>,
}

impl Cutter {
    /// Adds the next entry; returns the segment it ended, if it ended one. An
    /// entry not after the previous one (out of order, or repeated) is refused.
    pub fn push(&mut self, entry: ManifestEntry) -> Result<Option<Segment>, ManifestError> {
        if let Some(last) = &self.last
            && entry.key.as_str() <= last.as_str()
        {
            return Err(ManifestError::Unordered {
                key: entry.key,
                after: last.clone(),
            });
        }
        self.last = Some(entry.key.clone());
        let cut = cuts_after(&entry.key);
        self.entries.push(entry);
        let n = self.entries.len();
        if n >= MAX_ENTRIES || (n >= MIN_ENTRIES && cut) {
            return Ok(Some(seal(std::mem::take(&mut self.entries))));
        }
        Ok(None)
    }

    /// The last segment, if any entry is left.
    pub fn finish(self) -> Option<Segment> {
        (!self.entries.is_empty()).then(|| seal(self.entries))
    }
}

/// Every segment of `entries` (in key order), at once.
pub fn cut_all(
    entries: impl IntoIterator<Item = ManifestEntry>,
) -> Result<Vec<Segment>, ManifestError> {
    let mut cutter = Cutter::default();
    let mut out = Vec::new();
    for e in entries {
        out.extend(cutter.push(e)?);
    }
    out.extend(cutter.finish());
    Ok(out)
}

fn seal(objects: Vec<ManifestEntry>) -> Segment {
    let first = objects.first().map(|e| e.key.clone()).unwrap_or_default();
    let last = objects.last().map(|e| e.key.clone()).unwrap_or_default();
    let count = objects.len() as u64;
    let file = SegmentFile {
        format: SEGMENT_FORMAT.to_string(),
        objects,
    };
    // Plain data of strings and numbers: serialising it cannot fail.
    let bytes = serde_json::to_vec(&file).unwrap_or_else(|_| unreachable!("entries serialise"));
    Segment {
        reference: SegmentRef {
            sha256: hex::encode(Sha256::digest(&bytes)),
            size: bytes.len() as u64,
            count,
            first,
            last,
        },
        bytes,
    }
}

/// The entries of the segment stored as `bytes`, checked against what the
/// (verified) root says of it.
pub fn open(reference: &SegmentRef, bytes: &[u8]) -> Result<Vec<ManifestEntry>, ManifestError> {
    let bad = |what: &'static str| ManifestError::Segment {
        segment: reference.key(),
        what,
    };
    if bytes.len() as u64 != reference.size {
        return Err(bad("its size is not the one the manifest lists"));
    }
    if hex::encode(Sha256::digest(bytes)) != reference.sha256 {
        return Err(bad("its SHA-256 is not the one the manifest lists"));
    }
    let file: SegmentFile =
        serde_json::from_slice(bytes).map_err(|_| bad("it is not a segment"))?;
    if file.format != SEGMENT_FORMAT {
        return Err(bad("its format is not supported"));
    }
    if file.objects.len() as u64 != reference.count
        || file.objects.first().map(|e| e.key.as_str()) != Some(reference.first.as_str())
        || file.objects.last().map(|e| e.key.as_str()) != Some(reference.last.as_str())
        || file.objects.windows(2).any(|w| w[0].key >= w[1].key)
    {
        return Err(bad("its entries are not the ones the manifest lists"));
    }
    Ok(file.objects)
}

/// Checks the list of segments of a root: each non-empty with its first key
/// not after its last, and each after the one before, so no key can be in two.
pub fn check_refs(refs: &[SegmentRef]) -> Result<(), ManifestError> {
    for (i, r) in refs.iter().enumerate() {
        let overlaps = i > 0 && refs[i - 1].last >= r.first;
        if r.count == 0 || r.first > r.last || overlaps || r.size > MAX_SEGMENT_BYTES {
            return Err(ManifestError::Segment {
                segment: r.key(),
                what: "the manifest lists it out of order, empty, overlapping or too large",
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str) -> ManifestEntry {
        ManifestEntry {
            key: key.into(),
            size: 1,
            sha256: "00".into(),
            encrypted_size: 2,
            encrypted_sha256: "11".into(),
            source_modified: None,
            source_etag: None,
            source_size: None,
            fields: vec![],
        }
    }

    fn keys(n: usize) -> Vec<String> {
        let mut k: Vec<String> = (0..n).map(|i| format!("d{}/f{i:07}", i % 7)).collect();
        k.sort();
        k
    }

    #[test]
    fn segments_are_cut_by_key_and_bounded() {
        let segments = cut_all(keys(20_000).iter().map(|k| entry(k))).expect("ordered");
        let counts: Vec<u64> = segments.iter().map(|s| s.reference.count).collect();
        assert_eq!(counts.iter().sum::<u64>(), 20_000);
        assert!(counts.len() > 5 && counts.len() < 80, "{counts:?}");
        let (body, last) = counts.split_at(counts.len() - 1);
        assert!(
            body.iter()
                .all(|&c| c >= MIN_ENTRIES as u64 && c <= MAX_ENTRIES as u64)
        );
        assert!(last[0] >= 1);
        let refs: Vec<SegmentRef> = segments.iter().map(|s| s.reference.clone()).collect();
        check_refs(&refs).expect("ordered refs");
        for s in &segments {
            assert_eq!(
                open(&s.reference, &s.bytes).expect("opens").len() as u64,
                s.reference.count
            );
        }
    }

    #[test]
    fn one_changed_entry_changes_one_segment_and_an_insertion_few() {
        let all = keys(50_000);
        let before = cut_all(all.iter().map(|k| entry(k))).expect("ordered");
        let names = |s: &[Segment]| -> std::collections::BTreeSet<String> {
            s.iter().map(|s| s.reference.sha256.clone()).collect()
        };
        let mut changed: Vec<ManifestEntry> = all.iter().map(|k| entry(k)).collect();
        changed[31_337].sha256 = "ff".into();
        let after = cut_all(changed).expect("ordered");
        assert_eq!(names(&after).difference(&names(&before)).count(), 1);

        let mut inserted = all.clone();
        inserted.push("d3/f0031337x".into());
        inserted.sort();
        let after = cut_all(inserted.iter().map(|k| entry(k))).expect("ordered");
        let new = names(&after).difference(&names(&before)).count();
        assert!((1..=3).contains(&new), "{new} new segments");
    }

    #[test]
    fn out_of_order_or_repeated_keys_are_refused() {
        assert!(matches!(
            cut_all([entry("b"), entry("a")]),
            Err(ManifestError::Unordered { .. })
        ));
        assert!(matches!(
            cut_all([entry("a"), entry("a")]),
            Err(ManifestError::Unordered { .. })
        ));
    }

    #[test]
    fn a_segment_altered_swapped_or_planted_does_not_open() {
        let segments = cut_all(keys(3000).iter().map(|k| entry(k))).expect("ordered");
        let (a, b) = (&segments[0], &segments[1]);
        let mut altered = a.bytes.clone();
        let at = altered.len() / 2;
        altered[at] ^= 1;
        assert!(open(&a.reference, &altered).is_err());
        assert!(open(&a.reference, &b.bytes).is_err());
        // A segment whose digest is listed but whose entries are not those
        // the list says.
        let mut lying = b.reference.clone();
        lying.first = a.reference.first.clone();
        let mut planted = lying.clone();
        planted.sha256 = b.reference.sha256.clone();
        assert!(open(&planted, &b.bytes).is_err());
        let overlapping = vec![a.reference.clone(), lying];
        assert!(check_refs(&overlapping).is_err());
    }
}
