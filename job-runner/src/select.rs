//! Which source objects a Connector takes, and which streams (with which
//! sensitivity tags and fields) each belongs to. Pure: no I/O.

use ferry_crds::{ConnectorSpec, Sensitivity};
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// A glob in a Connector does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid glob {glob:?} in {field}: {reason}")]
pub struct GlobError {
    pub field: String,
    pub glob: String,
    pub reason: String,
}

fn glob(field: &str, pattern: &str) -> Result<Glob, GlobError> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| GlobError {
            field: field.to_string(),
            glob: pattern.to_string(),
            reason: e.kind().to_string(),
        })
}

fn set(field: &str, patterns: &[String]) -> Result<GlobSet, GlobError> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(glob(field, p)?);
    }
    b.build().map_err(|e| GlobError {
        field: field.to_string(),
        glob: String::new(),
        reason: e.to_string(),
    })
}

/// A stream an object belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMatch {
    pub name: String,
    pub sensitivity: Vec<Sensitivity>,
    pub fields: Vec<String>,
}

/// The compiled include / exclude / stream globs of a Connector.
#[derive(Debug)]
pub struct Selector {
    include: Option<GlobSet>,
    exclude: GlobSet,
    streams: Vec<(GlobSet, StreamMatch)>,
}

/// What the selector decided for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Not included, or excluded.
    Skip,
    /// Taken, with the streams it belongs to (possibly none).
    Take(Vec<StreamMatch>),
}

impl Selector {
    /// Compiles the globs of `spec`.
    pub fn new(spec: &ConnectorSpec) -> Result<Self, GlobError> {
        let include = if spec.include.is_empty() {
            None
        } else {
            Some(set("include", &spec.include)?)
        };
        let exclude = set("exclude", &spec.exclude)?;
        let streams = spec
            .streams
            .iter()
            .map(|s| {
                let g = set(
                    &format!("streams[{}].match", s.name),
                    std::slice::from_ref(&s.match_glob),
                )?;
                Ok((
                    g,
                    StreamMatch {
                        name: s.name.clone(),
                        sensitivity: s.sensitivity.clone(),
                        fields: s.fields.clone(),
                    },
                ))
            })
            .collect::<Result<_, GlobError>>()?;
        Ok(Self {
            include,
            exclude,
            streams,
        })
    }

    /// The decision for a key relative to the source prefix.
    pub fn select(&self, key: &str) -> Selection {
        let included = self.include.as_ref().is_none_or(|g| g.is_match(key));
        if !included || self.exclude.is_match(key) {
            return Selection::Skip;
        }
        Selection::Take(
            self.streams
                .iter()
                .filter(|(g, _)| g.is_match(key))
                .map(|(_, s)| s.clone())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> ConnectorSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const BASE: &str = "source: {local: {path: a}}\ndestination: {local: {path: b}}\nencryption: {keyRef: {secretRef: {name: k}}}\n";

    #[test]
    fn include_exclude_and_streams() {
        let s = Selector::new(&spec(&format!(
            "{BASE}include: ['**/*.csv']\nexclude: ['tmp/**']\nstreams: [{{name: c, match: 'customers/**', sensitivity: [pii], fields: [id]}}]\n"
        )))
        .unwrap();
        assert_eq!(s.select("top.csv"), Selection::Take(vec![]));
        assert_eq!(s.select("x/y/z.csv"), Selection::Take(vec![]));
        assert_eq!(s.select("x/y/z.json"), Selection::Skip);
        assert_eq!(s.select("tmp/a.csv"), Selection::Skip);
        match s.select("customers/2026/a.csv") {
            Selection::Take(m) => assert_eq!(m[0].sensitivity, vec![Sensitivity::Pii]),
            Selection::Skip => panic!("customers taken"),
        }
        let all = Selector::new(&spec(BASE)).unwrap();
        assert_eq!(all.select("any/thing"), Selection::Take(vec![]));
    }

    #[test]
    fn single_star_does_not_cross_folders() {
        let s = Selector::new(&spec(&format!("{BASE}include: ['*.csv']\n"))).unwrap();
        assert_eq!(s.select("a.csv"), Selection::Take(vec![]));
        assert_eq!(s.select("d/a.csv"), Selection::Skip);
    }

    #[test]
    fn bad_glob_is_a_clear_error() {
        let e = Selector::new(&spec(&format!("{BASE}include: ['a[']\n"))).unwrap_err();
        assert_eq!(e.field, "include");
        assert!(e.to_string().contains("invalid glob \"a[\""));
    }
}
