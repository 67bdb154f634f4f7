//! Data minimisation: keep only the listed columns of a CSV file (with a header
//! row) or the listed top-level fields of NDJSON objects, streamed chunk by
//! chunk. Memory is bounded by the longest kept record ([`MAX_RECORD`]), never
//! by the file.
//!
//! Errors name the object, the row or line and the column, never a value: the
//! data may be exactly what minimisation exists to keep out of sight.
//!
//! - CSV: RFC 4180 quoting (quoted commas, doubled quotes, newlines inside
//!   quotes); a UTF-8 byte order mark is dropped; blank lines are skipped; every
//!   listed column must be in the header exactly once, and every row must have
//!   as many fields as the header. Kept columns stay in header order; output
//!   lines end with `\n` and fields are quoted only where needed.
//! - NDJSON (`.ndjson`, `.jsonl`): each non-blank line must be a JSON object;
//!   the listed top-level fields are kept in their original order with their
//!   exact original text (numbers are not reparsed); a missing field is left
//!   out of that line.

use serde::de::{Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The longest record (CSV row's kept fields, or NDJSON line) a projection holds.
pub const MAX_RECORD: usize = 16 << 20;

/// The file formats that can be projected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Ndjson,
}

impl Format {
    /// The format a key's extension names, if it is one that can be projected.
    pub fn of(key: &str) -> Option<Format> {
        let ext = key.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Format::Csv),
            "ndjson" | "jsonl" => Some(Format::Ndjson),
            _ => None,
        }
    }
}

/// Why an object could not be projected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectionError {
    #[error(
        "{key:?} cannot be minimised: only CSV (.csv, with a header row) and NDJSON (.ndjson, .jsonl) can be projected; refusing rather than copying every column"
    )]
    Unsupported { key: String },
    #[error("{key:?}: column {column:?} listed in fields is not in the header")]
    MissingColumn { key: String, column: String },
    #[error("{key:?}: column {column:?} appears more than once in the header")]
    DuplicateColumn { key: String, column: String },
    #[error("{key:?}: the header row is not valid UTF-8")]
    HeaderEncoding { key: String },
    #[error("{key:?}: row {row} has {found} field(s), the header has {expected}")]
    RowWidth {
        key: String,
        row: u64,
        found: usize,
        expected: usize,
    },
    #[error("{key:?}: line {line} is not a JSON object ({what})")]
    NotAnObject {
        key: String,
        line: u64,
        what: String,
    },
    #[error("{key:?}: {unit} {at} is longer than {limit} bytes")]
    RecordTooLong {
        key: String,
        unit: &'static str,
        at: u64,
        limit: usize,
    },
    #[error("{key:?}: the file ends inside a quoted field")]
    Truncated { key: String },
}

/// Projects one object.
#[derive(Debug)]
pub struct Projector {
    key: String,
    fields: Vec<String>,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Csv(Box<Csv>),
    Ndjson(Ndjson),
}

impl Projector {
    /// A projector keeping `fields` of the object at `key`, or an error if its
    /// format cannot be projected.
    pub fn new(key: &str, fields: &[String]) -> Result<Self, ProjectionError> {
        let inner = match Format::of(key) {
            Some(Format::Csv) => Inner::Csv(Box::new(Csv::new())),
            Some(Format::Ndjson) => Inner::Ndjson(Ndjson::default()),
            None => {
                return Err(ProjectionError::Unsupported {
                    key: key.to_string(),
                });
            }
        };
        Ok(Self {
            key: key.to_string(),
            fields: fields.to_vec(),
            inner,
        })
    }

    /// The columns kept.
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// Feeds the next chunk of the object; appends projected bytes to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), ProjectionError> {
        match &mut self.inner {
            Inner::Csv(c) => c.push(&self.key, &self.fields, input, out),
            Inner::Ndjson(n) => n.push(&self.key, &self.fields, input, out),
        }
    }

    /// Ends the object; appends what remains to `out`.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), ProjectionError> {
        match &mut self.inner {
            Inner::Csv(c) => c.finish(&self.key, &self.fields, out),
            Inner::Ndjson(n) => n.finish(&self.key, &self.fields, out),
        }
    }
}

/// CSV: csv-core's push parser, one field at a time.
#[derive(Debug)]
struct Csv {
    reader: csv_core::Reader,
    /// The first bytes, held until three are seen so a byte order mark split
    /// across chunks is still recognised.
    start: Vec<u8>,
    started: bool,
    /// Header names, until the header row ends.
    header: Vec<Vec<u8>>,
    /// Which columns are kept (set once the header is read).
    keep: Option<Vec<bool>>,
    /// The current field's bytes (only for header fields and kept columns).
    field: Vec<u8>,
    /// The current row's kept fields.
    row: Vec<Vec<u8>>,
    /// Field index within the current row.
    column: usize,
    /// Rows read, header included.
    rows: u64,
    kept_bytes: usize,
    scratch: Box<[u8]>,
    /// Raw bytes of the current field seen so far, whether it opened with a
    /// quote, and how many quote characters it holds: a quoted field with an odd
    /// count at the end of the data was cut off.
    raw_seen: bool,
    raw_quoted: bool,
    raw_quotes: u64,
}

impl Csv {
    fn new() -> Self {
        Self {
            // Not `Reader::default()`: that one has no compiled DFA.
            reader: csv_core::Reader::new(),
            start: Vec::new(),
            started: false,
            header: Vec::new(),
            keep: None,
            field: Vec::new(),
            row: Vec::new(),
            column: 0,
            rows: 0,
            kept_bytes: 0,
            scratch: vec![0u8; 64 << 10].into_boxed_slice(),
            raw_seen: false,
            raw_quoted: false,
            raw_quotes: 0,
        }
    }

    fn push(
        &mut self,
        key: &str,
        fields: &[String],
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ProjectionError> {
        if !self.started {
            self.start.extend_from_slice(input);
            if self.start.len() < 3 {
                return Ok(());
            }
            self.started = true;
            let start = std::mem::take(&mut self.start);
            return self.feed(key, fields, &start, out);
        }
        self.feed(key, fields, input, out)
    }

    fn finish(
        &mut self,
        key: &str,
        fields: &[String],
        out: &mut Vec<u8>,
    ) -> Result<(), ProjectionError> {
        if !self.started {
            self.started = true;
            let start = std::mem::take(&mut self.start);
            self.feed(key, fields, &start, out)?;
        }
        // Empty input tells csv-core the data ended.
        self.step(key, fields, &[], out).map(|_| ())
    }

    fn feed(
        &mut self,
        key: &str,
        fields: &[String],
        mut input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ProjectionError> {
        while !input.is_empty() {
            let n = self.step(key, fields, input, out)?;
            input = &input[n..];
        }
        Ok(())
    }

    /// One call to csv-core; returns the input bytes consumed.
    fn step(
        &mut self,
        key: &str,
        fields: &[String],
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, ProjectionError> {
        let mut consumed = 0;
        loop {
            let (res, nin, nout) = self
                .reader
                .read_field(&input[consumed..], &mut self.scratch);
            for &b in &input[consumed..consumed + nin] {
                if !self.raw_seen && !matches!(b, b'\r' | b'\n') {
                    self.raw_seen = true;
                    self.raw_quoted = b == b'"';
                }
                self.raw_quotes += u64::from(b == b'"');
            }
            consumed += nin;
            let keeping = match &self.keep {
                None => true,
                Some(k) => k.get(self.column).copied().unwrap_or(false),
            };
            if keeping {
                self.kept_bytes += nout;
                if self.kept_bytes > MAX_RECORD {
                    return Err(ProjectionError::RecordTooLong {
                        key: key.to_string(),
                        unit: "row",
                        at: self.rows + 1,
                        limit: MAX_RECORD,
                    });
                }
                self.field.extend_from_slice(&self.scratch[..nout]);
            }
            match res {
                csv_core::ReadFieldResult::InputEmpty => {
                    if input.is_empty() {
                        // End of data inside a field: only a dangling quote does this.
                        return Err(ProjectionError::Truncated {
                            key: key.to_string(),
                        });
                    }
                    return Ok(consumed);
                }
                csv_core::ReadFieldResult::OutputFull => continue,
                csv_core::ReadFieldResult::End => return Ok(consumed),
                csv_core::ReadFieldResult::Field { record_end } => {
                    if input.is_empty() && self.raw_quoted && self.raw_quotes % 2 == 1 {
                        return Err(ProjectionError::Truncated {
                            key: key.to_string(),
                        });
                    }
                    (self.raw_seen, self.raw_quoted, self.raw_quotes) = (false, false, 0);
                    self.end_field(keeping);
                    if record_end {
                        self.end_row(key, fields, out)?;
                    }
                    if consumed == input.len() && !input.is_empty() {
                        return Ok(consumed);
                    }
                }
            }
        }
    }

    fn end_field(&mut self, keeping: bool) {
        let field = std::mem::take(&mut self.field);
        if self.keep.is_none() {
            self.header.push(field);
        } else if keeping {
            self.row.push(field);
        }
        self.column += 1;
    }

    fn end_row(
        &mut self,
        key: &str,
        fields: &[String],
        out: &mut Vec<u8>,
    ) -> Result<(), ProjectionError> {
        let width = self.column;
        self.column = 0;
        self.kept_bytes = 0;
        self.rows += 1;
        if self.keep.is_none() {
            return self.end_header(key, fields, out);
        }
        let expected = self.keep.as_ref().map_or(0, Vec::len);
        if width != expected {
            return Err(ProjectionError::RowWidth {
                key: key.to_string(),
                row: self.rows,
                found: width,
                expected,
            });
        }
        write_csv_row(out, self.row.drain(..));
        Ok(())
    }

    fn end_header(
        &mut self,
        key: &str,
        fields: &[String],
        out: &mut Vec<u8>,
    ) -> Result<(), ProjectionError> {
        let header = std::mem::take(&mut self.header);
        let names = header
            .iter()
            .map(|h| std::str::from_utf8(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ProjectionError::HeaderEncoding {
                key: key.to_string(),
            })?;
        for f in fields {
            match names.iter().filter(|n| *n == f).count() {
                1 => {}
                0 => {
                    return Err(ProjectionError::MissingColumn {
                        key: key.to_string(),
                        column: f.clone(),
                    });
                }
                _ => {
                    return Err(ProjectionError::DuplicateColumn {
                        key: key.to_string(),
                        column: f.clone(),
                    });
                }
            }
        }
        let keep: Vec<bool> = names
            .iter()
            .map(|n| fields.iter().any(|f| f == n))
            .collect();
        write_csv_row(
            out,
            header
                .iter()
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|(h, _)| h.clone()),
        );
        self.keep = Some(keep);
        Ok(())
    }
}

fn write_csv_row(out: &mut Vec<u8>, fields: impl Iterator<Item = Vec<u8>>) {
    for (i, f) in fields.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if f.iter().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
            out.push(b'"');
            for &b in &f {
                if b == b'"' {
                    out.push(b'"');
                }
                out.push(b);
            }
            out.push(b'"');
        } else {
            out.extend_from_slice(&f);
        }
    }
    out.push(b'\n');
}

/// NDJSON: lines, each a JSON object.
#[derive(Debug, Default)]
struct Ndjson {
    line: Vec<u8>,
    lines: u64,
}

impl Ndjson {
    fn push(
        &mut self,
        key: &str,
        fields: &[String],
        mut input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ProjectionError> {
        while let Some(nl) = input.iter().position(|&b| b == b'\n') {
            self.append(key, &input[..nl])?;
            input = &input[nl + 1..];
            self.end_line(key, fields, out)?;
        }
        self.append(key, input)
    }

    fn append(&mut self, key: &str, bytes: &[u8]) -> Result<(), ProjectionError> {
        if self.line.len() + bytes.len() > MAX_RECORD {
            return Err(ProjectionError::RecordTooLong {
                key: key.to_string(),
                unit: "line",
                at: self.lines + 1,
                limit: MAX_RECORD,
            });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn finish(
        &mut self,
        key: &str,
        fields: &[String],
        out: &mut Vec<u8>,
    ) -> Result<(), ProjectionError> {
        if !self.line.is_empty() {
            self.end_line(key, fields, out)?;
        }
        Ok(())
    }

    fn end_line(
        &mut self,
        key: &str,
        fields: &[String],
        out: &mut Vec<u8>,
    ) -> Result<(), ProjectionError> {
        self.lines += 1;
        let mut line = std::mem::take(&mut self.line);
        let mut text: &[u8] = &line;
        if self.lines == 1 {
            text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(text);
        }
        if text.iter().all(u8::is_ascii_whitespace) {
            line.clear();
            self.line = line;
            return Ok(());
        }
        let not_object = |what: String| ProjectionError::NotAnObject {
            key: key.to_string(),
            line: self.lines,
            what,
        };
        let mut de = serde_json::Deserializer::from_slice(text);
        let members = de
            .deserialize_any(Members)
            .map_err(|e| not_object(classify(&e)))?;
        de.end().map_err(|e| not_object(classify(&e)))?;
        let members = members.ok_or_else(|| not_object("another JSON value".into()))?;
        out.push(b'{');
        let mut first = true;
        for (name, value) in members
            .iter()
            .filter(|(name, _)| fields.iter().any(|f| f == name))
        {
            if !first {
                out.push(b',');
            }
            first = false;
            // A string always encodes.
            out.extend_from_slice(serde_json::to_string(name).unwrap_or_default().as_bytes());
            out.push(b':');
            out.extend_from_slice(value.get().as_bytes());
        }
        out.extend_from_slice(b"}\n");
        line.clear();
        self.line = line;
        Ok(())
    }
}

/// What went wrong parsing a line, without quoting it.
fn classify(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Eof => "it ends early".into(),
        _ => format!("invalid JSON at column {}", e.column()),
    }
}

/// The members of a JSON object in order, values as their original text; `None`
/// for any other JSON value.
struct Members;

type Borrowed<'a> = Option<Vec<(std::borrow::Cow<'a, str>, &'a RawValue)>>;

impl<'de> Visitor<'de> for Members {
    type Value = Borrowed<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::new();
        while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let value: &'de RawValue = map.next_value()?;
            members.push((name, value));
        }
        Ok(Some(members))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// The fields kept for an object that several streams match: those every stream
/// with a `fields` list keeps (the most restrictive wins), in the first list's
/// order. `None` when no stream minimises.
pub fn combine<'a>(lists: impl IntoIterator<Item = &'a [String]>) -> Option<Vec<String>> {
    let mut kept: Option<Vec<String>> = None;
    for list in lists.into_iter().filter(|l| !l.is_empty()) {
        kept = Some(match kept {
            None => list.to_vec(),
            Some(k) => k.into_iter().filter(|f| list.contains(f)).collect(),
        });
    }
    kept
}

/// Projects a whole buffer (for tests and small objects).
pub fn project_all(key: &str, fields: &[String], data: &[u8]) -> Result<Vec<u8>, ProjectionError> {
    let mut p = Projector::new(key, fields)?;
    let mut out = Vec::new();
    p.push(data, &mut out)?;
    p.finish(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Projects `data` fed in chunks of every size from 1 to 7 and whole; all
    /// must agree.
    fn project(key: &str, fields: &[&str], data: &[u8]) -> Result<String, ProjectionError> {
        let fields = f(fields);
        let whole = project_all(key, &fields, data);
        for size in 1..=7 {
            let mut p = Projector::new(key, &fields)?;
            let mut out = Vec::new();
            let r = data
                .chunks(size)
                .try_for_each(|c| p.push(c, &mut out))
                .and_then(|()| p.finish(&mut out))
                .map(|()| out);
            assert_eq!(r, whole, "chunks of {size} differ from the whole");
        }
        whole.map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn csv_keeps_listed_columns_in_header_order() {
        let out = project(
            "a.csv",
            &["country", "id"],
            b"id,name,country\n1,Ann,FR\n2,Bob,DE\n",
        )
        .unwrap();
        assert_eq!(out, "id,country\n1,FR\n2,DE\n");
    }

    #[test]
    fn csv_quoted_commas_quotes_and_newlines_survive() {
        let data = b"id,name,address\r\n1,\"Doe, Jane\",\"1 Main St\nApt 2\"\r\n2,\"say \"\"hi\"\"\",x\r\n";
        let out = project("a.CSV", &["id", "address"], data).unwrap();
        assert_eq!(out, "id,address\n1,\"1 Main St\nApt 2\"\n2,x\n");
        let out = project("a.csv", &["name"], data).unwrap();
        assert_eq!(out, "name\n\"Doe, Jane\"\n\"say \"\"hi\"\"\"\n");
    }

    #[test]
    fn csv_byte_order_mark_is_dropped_and_blank_lines_skipped() {
        let out = project("a.csv", &["id"], b"\xef\xbb\xbfid,x\n\n1,2\n\n3,4").unwrap();
        assert_eq!(out, "id\n1\n3\n");
    }

    #[test]
    fn csv_missing_or_duplicate_column_is_refused() {
        assert_eq!(
            project("a.csv", &["id", "email"], b"id,name\n1,a\n").unwrap_err(),
            ProjectionError::MissingColumn {
                key: "a.csv".into(),
                column: "email".into()
            }
        );
        assert!(matches!(
            project("a.csv", &["id"], b"id,id\n1,2\n").unwrap_err(),
            ProjectionError::DuplicateColumn { .. }
        ));
    }

    #[test]
    fn csv_ragged_rows_are_refused_without_their_values() {
        let e = project("a.csv", &["id"], b"id,secret\n1,s3cr3t-value\n2\n").unwrap_err();
        assert_eq!(
            e,
            ProjectionError::RowWidth {
                key: "a.csv".into(),
                row: 3,
                found: 1,
                expected: 2
            }
        );
        assert!(!e.to_string().contains("s3cr3t"));
        let e = project("a.csv", &["id"], b"id,b\n1,2,3\n").unwrap_err();
        assert!(matches!(e, ProjectionError::RowWidth { found: 3, .. }));
    }

    #[test]
    fn csv_empty_header_only_and_unterminated() {
        assert_eq!(project("a.csv", &["id"], b"").unwrap(), "");
        assert_eq!(project("a.csv", &["id"], b"id,b").unwrap(), "id\n");
        assert_eq!(project("a.csv", &["b"], b"id,b\n1,2").unwrap(), "b\n2\n");
        assert!(matches!(
            project("a.csv", &["id"], b"id,b\n1,\"open \"\"x\"\"").unwrap_err(),
            ProjectionError::Truncated { .. }
        ));
        assert_eq!(
            project("a.csv", &["b"], b"id,b\n1,\"a\"\"b\"").unwrap(),
            "b\n\"a\"\"b\"\n"
        );
    }

    #[test]
    fn csv_huge_rows_stream_and_the_limit_holds() {
        // A 5 MiB dropped column costs no memory; a 5 MiB kept one fits.
        let big = "x".repeat(5 << 20);
        let data = format!("id,blob\n1,{big}\n2,y\n");
        assert_eq!(
            project_all("a.csv", &f(&["id"]), data.as_bytes()).unwrap(),
            b"id\n1\n2\n"
        );
        let kept = project_all("a.csv", &f(&["blob"]), data.as_bytes()).unwrap();
        assert_eq!(kept.len(), "blob\n".len() + big.len() + 1 + "y\n".len());
        let huge = format!("id,blob\n1,{}\n", "x".repeat(MAX_RECORD + 1));
        let e = project_all("a.csv", &f(&["blob"]), huge.as_bytes()).unwrap_err();
        assert!(
            matches!(e, ProjectionError::RecordTooLong { at: 2, .. }),
            "{e}"
        );
        // Dropped, the same column is fine.
        assert_eq!(
            project_all("a.csv", &f(&["id"]), huge.as_bytes()).unwrap(),
            b"id\n1\n"
        );
    }

    #[test]
    fn ndjson_keeps_fields_with_their_exact_text() {
        let data = b"{\"id\":12345678901234567890123,\"name\":\"A\",\"geo\":{\"c\":\"FR\"}}\n\r\n{\"name\":\"B\",\"id\":2.50}\r\n{\"name\":\"C\"}";
        let out = project("x/a.ndjson", &["id", "geo"], data).unwrap();
        assert_eq!(
            out,
            "{\"id\":12345678901234567890123,\"geo\":{\"c\":\"FR\"}}\n{\"id\":2.50}\n{}\n"
        );
    }

    #[test]
    fn ndjson_bom_escapes_and_non_objects() {
        let out = project(
            "a.jsonl",
            &["k\"q"],
            b"\xef\xbb\xbf{\"k\\\"q\":\"v\\n\",\"x\":1}\n",
        )
        .unwrap();
        assert_eq!(out, "{\"k\\\"q\":\"v\\n\"}\n");
        let e = project("a.jsonl", &["id"], b"{\"id\":1}\n[1,2]\n").unwrap_err();
        assert!(
            matches!(e, ProjectionError::NotAnObject { line: 2, .. }),
            "{e}"
        );
        let e = project("a.jsonl", &["id"], b"{\"id\":\"secret-value\"\n").unwrap_err();
        assert!(
            matches!(e, ProjectionError::NotAnObject { line: 1, .. }),
            "{e}"
        );
        assert!(!e.to_string().contains("secret-value"));
        let e = project("a.jsonl", &["id"], b"{\"id\":1} {\"id\":2}\n").unwrap_err();
        assert!(matches!(e, ProjectionError::NotAnObject { .. }), "{e}");
    }

    #[test]
    fn ndjson_huge_lines() {
        let line = format!("{{\"id\":1,\"blob\":\"{}\"}}\n", "x".repeat(5 << 20));
        assert_eq!(
            project_all("a.ndjson", &f(&["id"]), line.as_bytes()).unwrap(),
            b"{\"id\":1}\n"
        );
        let huge = format!("{{\"blob\":\"{}\"}}\n", "x".repeat(MAX_RECORD));
        let e = project_all("a.ndjson", &f(&["id"]), huge.as_bytes()).unwrap_err();
        assert!(matches!(
            e,
            ProjectionError::RecordTooLong { unit: "line", .. }
        ));
    }

    #[test]
    fn other_formats_are_refused() {
        for key in ["a.csv.gz", "a.parquet", "a", "a.json"] {
            assert_eq!(
                Projector::new(key, &f(&["id"])).unwrap_err(),
                ProjectionError::Unsupported { key: key.into() }
            );
        }
    }

    #[test]
    fn several_streams_keep_what_all_keep() {
        let a = f(&["id", "country", "email"]);
        let b = f(&["country", "id"]);
        let none: Vec<String> = vec![];
        assert_eq!(
            combine([a.as_slice(), none.as_slice(), b.as_slice()]),
            Some(f(&["id", "country"]))
        );
        assert_eq!(combine([none.as_slice()]), None);
        assert_eq!(
            combine([f(&["a"]).as_slice(), f(&["b"]).as_slice()]),
            Some(vec![])
        );
    }
}
