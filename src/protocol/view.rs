//! Bounded, borrow-based views of the message bodies pgrelay inspects.
//!
//! Each function takes a body (the bytes after the 5-byte header) and returns `None` on any
//! malformed input: a short body, a missing NUL, invalid UTF-8, a count past the end. None of
//! them can read past the body they were given or panic on what a peer sent.

use super::TxStatus;

/// Splits a NUL-terminated string off the front of `buf`.
fn cstr(buf: &[u8]) -> Option<(&str, &[u8])> {
    let nul = memchr(buf)?;
    let s = std::str::from_utf8(&buf[..nul]).ok()?;
    Some((s, &buf[nul + 1..]))
}

fn memchr(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == 0)
}

fn i16_at(buf: &[u8]) -> Option<(i16, &[u8])> {
    let b = buf.get(..2)?;
    Some((i16::from_be_bytes([b[0], b[1]]), &buf[2..]))
}

fn i32_at(buf: &[u8]) -> Option<(i32, &[u8])> {
    let b = buf.get(..4)?;
    Some((i32::from_be_bytes([b[0], b[1], b[2], b[3]]), &buf[4..]))
}

/// Query: the SQL text.
pub fn query_text(body: &[u8]) -> Option<&str> {
    let (s, rest) = cstr(body)?;
    rest.is_empty().then_some(s)
}

/// Parse: statement name, SQL text, parameter type oids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseMessage<'a> {
    pub statement: &'a str,
    pub query: &'a str,
    pub param_types: Vec<u32>,
}

pub fn parse_message(body: &[u8]) -> Option<ParseMessage<'_>> {
    let (statement, rest) = cstr(body)?;
    let (query, rest) = cstr(rest)?;
    let (count, mut rest) = i16_at(rest)?;
    let count = usize::try_from(count).ok()?;
    let mut param_types = Vec::with_capacity(count.min(rest.len() / 4));
    for _ in 0..count {
        let (oid, after) = i32_at(rest)?;
        param_types.push(oid as u32);
        rest = after;
    }
    rest.is_empty().then_some(ParseMessage {
        statement,
        query,
        param_types,
    })
}

/// Bind: portal and statement names; `rest` is everything after them (formats, values,
/// result formats), which is what a cache key needs, kept as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMessage<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    pub rest: &'a [u8],
}

pub fn bind_message(body: &[u8]) -> Option<BindMessage<'_>> {
    let (portal, rest) = cstr(body)?;
    let (statement, rest) = cstr(rest)?;
    Some(BindMessage {
        portal,
        statement,
        rest,
    })
}

/// Close or Describe: 'S' (statement) or 'P' (portal) and the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub kind: u8,
    pub name: &'a str,
}

pub fn target_message(body: &[u8]) -> Option<Target<'_>> {
    let (&kind, rest) = body.split_first()?;
    if kind != b'S' && kind != b'P' {
        return None;
    }
    let (name, rest) = cstr(rest)?;
    rest.is_empty().then_some(Target { kind, name })
}

/// ReadyForQuery: the transaction status.
pub fn ready_status(body: &[u8]) -> Option<TxStatus> {
    match body {
        [b] => Some(TxStatus::from_byte(*b)),
        _ => None,
    }
}

/// ParameterStatus: name and value.
pub fn parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let (name, rest) = cstr(body)?;
    let (value, rest) = cstr(rest)?;
    rest.is_empty().then_some((name, value))
}

/// Whether a CommandComplete body is the tag of a COMMIT (compared as bytes: no text
/// conversion for every statement's completion).
pub fn is_commit(body: &[u8]) -> bool {
    body == b"COMMIT\0"
}

/// BackendKeyData: process id and secret key.
pub fn backend_key(body: &[u8]) -> Option<(i32, i32)> {
    let (pid, rest) = i32_at(body)?;
    let (key, rest) = i32_at(rest)?;
    rest.is_empty().then_some((pid, key))
}

/// The first column of a DataRow as text, or None for NULL or a malformed row.
pub fn first_column_text(body: &[u8]) -> Option<&str> {
    let (count, rest) = i16_at(body)?;
    if count < 1 {
        return None;
    }
    let (len, rest) = i32_at(rest)?;
    let len = usize::try_from(len).ok()?;
    std::str::from_utf8(rest.get(..len)?).ok()
}

/// The fields of an ErrorResponse or NoticeResponse pgrelay cares about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
}

pub fn error_fields(body: &[u8]) -> ErrorFields {
    let mut fields = ErrorFields::default();
    let mut rest = body;
    while let Some((&kind, after)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let Some((value, after)) = cstr(after) else {
            break;
        };
        match kind {
            b'V' => fields.severity = Some(value.to_owned()),
            b'S' if fields.severity.is_none() => fields.severity = Some(value.to_owned()),
            b'C' => fields.code = Some(value.to_owned()),
            b'M' => fields.message = Some(value.to_owned()),
            _ => {}
        }
        rest = after;
    }
    fields
}

/// The SQLSTATE of an ErrorResponse without allocating (for metrics on the hot path).
pub fn error_code(body: &[u8]) -> Option<&str> {
    let mut rest = body;
    while let Some((&kind, after)) = rest.split_first() {
        if kind == 0 {
            return None;
        }
        let (value, after) = cstr(after)?;
        if kind == b'C' {
            return Some(value);
        }
        rest = after;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_commit_tag_is_a_commit() {
        assert!(is_commit(b"COMMIT\0"));
        assert!(!is_commit(b"ROLLBACK\0"));
        assert!(!is_commit(b"COMMIT PREPARED\0"));
        assert!(!is_commit(b"COMMIT"));
        assert!(!is_commit(b"SELECT 1\0"));
    }

    #[test]
    fn parse_message_with_types() {
        let mut body = b"s1\0select $1\0".to_vec();
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&23i32.to_be_bytes());
        let p = parse_message(&body).unwrap();
        assert_eq!(p.statement, "s1");
        assert_eq!(p.query, "select $1");
        assert_eq!(p.param_types, vec![23]);
    }

    #[test]
    fn parse_message_with_lying_count_is_refused() {
        let mut body = b"s1\0select $1\0".to_vec();
        body.extend_from_slice(&30000i16.to_be_bytes());
        assert!(parse_message(&body).is_none());
        let mut neg = b"\0x\0".to_vec();
        neg.extend_from_slice(&(-1i16).to_be_bytes());
        assert!(parse_message(&neg).is_none());
    }

    #[test]
    fn bind_and_close_views() {
        let b = bind_message(b"\0stmt\0\0\0").unwrap();
        assert_eq!(b.portal, "");
        assert_eq!(b.statement, "stmt");
        assert_eq!(b.rest, b"\0\0");
        assert_eq!(
            target_message(b"Sfoo\0"),
            Some(Target {
                kind: b'S',
                name: "foo"
            })
        );
        assert!(target_message(b"Xfoo\0").is_none());
        assert!(target_message(b"S").is_none());
    }

    #[test]
    fn error_code_found_without_allocation() {
        let body = b"SERROR\0VERROR\0C42P01\0Mrelation does not exist\0\0";
        assert_eq!(error_code(body), Some("42P01"));
        let f = error_fields(body);
        assert_eq!(f.message.as_deref(), Some("relation does not exist"));
        assert_eq!(error_code(b"SERROR"), None);
    }

    #[test]
    fn first_column_of_a_data_row() {
        let mut row = 2i16.to_be_bytes().to_vec();
        row.extend_from_slice(&3i32.to_be_bytes());
        row.extend_from_slice(b"0/A");
        row.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(first_column_text(&row), Some("0/A"));
        let mut null = 1i16.to_be_bytes().to_vec();
        null.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(first_column_text(&null), None);
        let mut short = 1i16.to_be_bytes().to_vec();
        short.extend_from_slice(&10i32.to_be_bytes());
        short.extend_from_slice(b"abc");
        assert_eq!(first_column_text(&short), None);
    }

    #[test]
    fn small_views() {
        assert_eq!(ready_status(b"T"), Some(TxStatus::InTransaction));
        assert_eq!(ready_status(b""), None);
        assert_eq!(
            parameter_status(b"TimeZone\0UTC\0"),
            Some(("TimeZone", "UTC"))
        );
        assert_eq!(backend_key(&[0, 0, 0, 1, 0, 0, 0, 2]), Some((1, 2)));
        assert_eq!(query_text(b"select 1"), None);
    }
}
