//! Leadership as Patroni's DCS sees it, read from Patroni's REST API (`GET /cluster`), to be
//! cross-checked by the monitor with `pg_is_in_recovery()`.
//!
//! Patroni is consulted over plain HTTP/1.1 with a tiny hand-written client (one GET,
//! `Connection: close`, body bounded), so no HTTP or JSON crate is pulled in for one request
//! shape. It must never decide alone: a server is the leader only if Patroni names it *and*
//! it is out of recovery, and when no endpoint answers the monitor falls back to
//! `pg_is_in_recovery()`.

use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::HostAddr;

/// A response larger than this is refused (a `/cluster` answer is a few hundred bytes per
/// member).
const MAX_RESPONSE_BYTES: usize = 1 << 20;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PatroniError {
    #[error("{url}: only plain http:// Patroni URLs are supported")]
    Unsupported { url: String },
    #[error("{url}: not a URL of the form http://host:port[/prefix]")]
    BadUrl { url: String },
    #[error("{endpoint}: {reason}")]
    Io { endpoint: String, reason: String },
    #[error("{endpoint}: no answer within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("malformed HTTP response: {0}")]
    Http(String),
    #[error("{endpoint} answered {status} to GET {path}")]
    Status {
        endpoint: String,
        path: String,
        status: u16,
    },
    #[error("malformed /cluster document: {0}")]
    Document(String),
    #[error("no Patroni endpoint answered: {0}")]
    AllFailed(String),
}

/// One Patroni REST API, e.g. `http://10.0.0.1:8008` (a path prefix is kept, for a proxy in
/// front of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub prefix: String,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.prefix)
    }
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, PatroniError> {
        if url.starts_with("https://") {
            return Err(PatroniError::Unsupported { url: url.into() });
        }
        let bad = || PatroniError::BadUrl { url: url.into() };
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let addr: HostAddr = authority.parse().map_err(|_| bad())?;
        // HostAddr defaults the port to PostgreSQL's; Patroni's default is 8008.
        let port = if authority.ends_with(']') || !authority.contains(':') {
            8008
        } else {
            addr.port
        };
        if addr.host.is_empty() {
            return Err(bad());
        }
        Ok(Endpoint {
            host: addr.host,
            port,
            prefix: prefix.to_owned(),
        })
    }
}

/// Asks each endpoint in turn for `/cluster` and returns the first answer: the member holding
/// the leader key, or None when no member does. Each endpoint gets at most `timeout`.
pub async fn fetch_leader(
    endpoints: &[Endpoint],
    timeout: Duration,
) -> Result<Option<HostAddr>, PatroniError> {
    let mut failures = Vec::new();
    for endpoint in endpoints {
        let path = format!("{}/cluster", endpoint.prefix);
        let answer = match tokio::time::timeout(timeout, get(endpoint, &path)).await {
            Ok(Ok(response)) if response.status == 200 => leader_from_cluster(&response.body),
            Ok(Ok(response)) => Err(PatroniError::Status {
                endpoint: endpoint.to_string(),
                path,
                status: response.status,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(PatroniError::Timeout {
                endpoint: endpoint.to_string(),
                timeout,
            }),
        };
        match answer {
            Ok(leader) => return Ok(leader),
            Err(e) => failures.push(e.to_string()),
        }
    }
    Err(PatroniError::AllFailed(failures.join("; ")))
}

/// A parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// One `GET path` over a fresh connection, read to the end (the server closes it).
async fn get(endpoint: &Endpoint, path: &str) -> Result<Response, PatroniError> {
    let io = |e: std::io::Error| PatroniError::Io {
        endpoint: endpoint.to_string(),
        reason: e.to_string(),
    };
    let mut stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(io)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}:{}\r\nAccept: application/json\r\n\
         User-Agent: pgrelay\r\nConnection: close\r\n\r\n",
        endpoint.host, endpoint.port
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > MAX_RESPONSE_BYTES {
            return Err(PatroniError::Http(format!(
                "response over {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        // Content-Length may let us stop before the server closes.
        if let Ok(Some(response)) = parse_complete(&raw) {
            return Ok(response);
        }
    }
    parse_response(&raw)
}

/// Parses a whole HTTP/1.x response (status line, headers, body by Content-Length, chunked
/// encoding, or up to the end).
pub fn parse_response(raw: &[u8]) -> Result<Response, PatroniError> {
    match parse_complete(raw)? {
        Some(response) => Ok(response),
        None => {
            let (head, body) = split_head(raw)?;
            if head.chunked || head.content_length.is_some() {
                return Err(PatroniError::Http("body cut short".into()));
            }
            Ok(Response {
                status: head.status,
                body: String::from_utf8_lossy(body).into_owned(),
            })
        }
    }
}

struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
}

fn split_head(raw: &[u8]) -> Result<(Head, &[u8]), PatroniError> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| PatroniError::Http("no end of headers".into()))?;
    let head = std::str::from_utf8(&raw[..end])
        .map_err(|_| PatroniError::Http("headers are not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(PatroniError::Http(format!("status line {status_line:?}")));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| PatroniError::Http(format!("status line {status_line:?}")))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(PatroniError::Http(format!("header line {line:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| PatroniError::Http(format!("Content-Length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    Ok((
        Head {
            status,
            content_length,
            chunked,
        },
        &raw[end + 4..],
    ))
}

/// The response if `raw` holds all of it by its own framing (Content-Length or chunked),
/// None if more is needed or only the end of the stream can tell.
fn parse_complete(raw: &[u8]) -> Result<Option<Response>, PatroniError> {
    if !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        return Ok(None);
    }
    let (head, body) = split_head(raw)?;
    let body = if head.chunked {
        match dechunk(body)? {
            Some(body) => body,
            None => return Ok(None),
        }
    } else if let Some(len) = head.content_length {
        match body.get(..len) {
            Some(body) => body.to_vec(),
            None => return Ok(None),
        }
    } else {
        return Ok(None);
    };
    Ok(Some(Response {
        status: head.status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }))
}

/// Decodes a chunked body; None if the last chunk has not arrived yet.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, PatroniError> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&rest[..line_end])
            .map_err(|_| PatroniError::Http("chunk size is not text".into()))?;
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| PatroniError::Http(format!("chunk size {size_text:?}")))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        let Some(chunk) = rest.get(..size) else {
            return Ok(None);
        };
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
}

/// The member of a `/cluster` document holding the leader key, if it is running.
///
/// Shape (Patroni ≥ 1.6): `{"members": [{"name": "pg1", "role": "leader", "state":
/// "running", "host": "10.0.0.1", "port": 5432, "timeline": 2}, …]}`. `standby_leader` (the
/// head of a standby cluster, itself in recovery) is not a leader for writes.
pub fn leader_from_cluster(document: &str) -> Result<Option<HostAddr>, PatroniError> {
    let root = json::parse(document).map_err(PatroniError::Document)?;
    let members = root
        .get("members")
        .and_then(json::Value::as_array)
        .ok_or_else(|| PatroniError::Document("no \"members\" array".into()))?;
    for member in members {
        let role = member.get("role").and_then(json::Value::as_str);
        if !matches!(role, Some("leader" | "master" | "primary")) {
            continue;
        }
        let state = member.get("state").and_then(json::Value::as_str);
        if state.is_some_and(|s| s != "running") {
            return Ok(None);
        }
        let host = member
            .get("host")
            .and_then(json::Value::as_str)
            .ok_or_else(|| PatroniError::Document("leader member has no \"host\"".into()))?;
        let port = member
            .get("port")
            .and_then(json::Value::as_f64)
            .filter(|p| p.fract() == 0.0 && (1.0..=65535.0).contains(p))
            .ok_or_else(|| PatroniError::Document("leader member has no valid \"port\"".into()))?;
        return Ok(Some(HostAddr {
            host: host.to_owned(),
            port: port as u16,
        }));
    }
    Ok(None)
}

/// Just enough JSON for Patroni's documents: values, objects, arrays, strings with escapes.
mod json {
    /// Nesting deeper than this is refused (no stack exhaustion on a hostile answer).
    const MAX_DEPTH: usize = 64;

    #[derive(Debug, Clone, PartialEq)]
    pub enum Value {
        Null,
        Bool(bool),
        Number(f64),
        String(String),
        Array(Vec<Value>),
        Object(Vec<(String, Value)>),
    }

    impl Value {
        pub fn get(&self, key: &str) -> Option<&Value> {
            match self {
                Value::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                _ => None,
            }
        }

        pub fn as_array(&self) -> Option<&[Value]> {
            match self {
                Value::Array(items) => Some(items),
                _ => None,
            }
        }

        pub fn as_str(&self) -> Option<&str> {
            match self {
                Value::String(s) => Some(s),
                _ => None,
            }
        }

        pub fn as_f64(&self) -> Option<f64> {
            match self {
                Value::Number(n) => Some(*n),
                _ => None,
            }
        }
    }

    pub fn parse(text: &str) -> Result<Value, String> {
        let mut p = Parser {
            bytes: text.as_bytes(),
            at: 0,
        };
        let value = p.value(0)?;
        p.skip_ws();
        if p.at != p.bytes.len() {
            return Err(format!("trailing data at byte {}", p.at));
        }
        Ok(value)
    }

    struct Parser<'a> {
        bytes: &'a [u8],
        at: usize,
    }

    impl Parser<'_> {
        fn skip_ws(&mut self) {
            while self
                .bytes
                .get(self.at)
                .is_some_and(|b| b.is_ascii_whitespace())
            {
                self.at += 1;
            }
        }

        fn peek(&self) -> Option<u8> {
            self.bytes.get(self.at).copied()
        }

        fn expect(&mut self, byte: u8) -> Result<(), String> {
            if self.peek() == Some(byte) {
                self.at += 1;
                Ok(())
            } else {
                Err(format!("expected '{}' at byte {}", byte as char, self.at))
            }
        }

        fn literal(&mut self, word: &str, value: Value) -> Result<Value, String> {
            if self.bytes[self.at..].starts_with(word.as_bytes()) {
                self.at += word.len();
                Ok(value)
            } else {
                Err(format!("unexpected token at byte {}", self.at))
            }
        }

        fn value(&mut self, depth: usize) -> Result<Value, String> {
            if depth > MAX_DEPTH {
                return Err("nested too deeply".into());
            }
            self.skip_ws();
            match self.peek() {
                Some(b'{') => self.object(depth),
                Some(b'[') => self.array(depth),
                Some(b'"') => self.string().map(Value::String),
                Some(b't') => self.literal("true", Value::Bool(true)),
                Some(b'f') => self.literal("false", Value::Bool(false)),
                Some(b'n') => self.literal("null", Value::Null),
                Some(b'-' | b'0'..=b'9') => self.number(),
                Some(_) => Err(format!("unexpected character at byte {}", self.at)),
                None => Err("unexpected end".into()),
            }
        }

        fn object(&mut self, depth: usize) -> Result<Value, String> {
            self.expect(b'{')?;
            let mut fields = Vec::new();
            self.skip_ws();
            if self.peek() == Some(b'}') {
                self.at += 1;
                return Ok(Value::Object(fields));
            }
            loop {
                self.skip_ws();
                let key = self.string()?;
                self.skip_ws();
                self.expect(b':')?;
                let value = self.value(depth + 1)?;
                fields.push((key, value));
                self.skip_ws();
                match self.peek() {
                    Some(b',') => self.at += 1,
                    Some(b'}') => {
                        self.at += 1;
                        return Ok(Value::Object(fields));
                    }
                    _ => return Err(format!("expected ',' or '}}' at byte {}", self.at)),
                }
            }
        }

        fn array(&mut self, depth: usize) -> Result<Value, String> {
            self.expect(b'[')?;
            let mut items = Vec::new();
            self.skip_ws();
            if self.peek() == Some(b']') {
                self.at += 1;
                return Ok(Value::Array(items));
            }
            loop {
                items.push(self.value(depth + 1)?);
                self.skip_ws();
                match self.peek() {
                    Some(b',') => self.at += 1,
                    Some(b']') => {
                        self.at += 1;
                        return Ok(Value::Array(items));
                    }
                    _ => return Err(format!("expected ',' or ']' at byte {}", self.at)),
                }
            }
        }

        fn number(&mut self) -> Result<Value, String> {
            let start = self.at;
            while self
                .peek()
                .is_some_and(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
            {
                self.at += 1;
            }
            std::str::from_utf8(&self.bytes[start..self.at])
                .ok()
                .and_then(|t| t.parse::<f64>().ok())
                .map(Value::Number)
                .ok_or_else(|| format!("bad number at byte {start}"))
        }

        fn hex4(&mut self) -> Result<u32, String> {
            let digits = self
                .bytes
                .get(self.at..self.at + 4)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| u32::from_str_radix(d, 16).ok())
                .ok_or_else(|| format!("bad \\u escape at byte {}", self.at))?;
            self.at += 4;
            Ok(digits)
        }

        fn string(&mut self) -> Result<String, String> {
            self.expect(b'"')?;
            let mut out = String::new();
            loop {
                let start = self.at;
                while self.peek().is_some_and(|b| b != b'"' && b != b'\\') {
                    self.at += 1;
                }
                out.push_str(
                    std::str::from_utf8(&self.bytes[start..self.at])
                        .map_err(|_| "string is not UTF-8".to_string())?,
                );
                match self.peek() {
                    Some(b'"') => {
                        self.at += 1;
                        return Ok(out);
                    }
                    Some(b'\\') => {
                        self.at += 1;
                        let escape = self.peek().ok_or("unexpected end in string")?;
                        self.at += 1;
                        match escape {
                            b'"' => out.push('"'),
                            b'\\' => out.push('\\'),
                            b'/' => out.push('/'),
                            b'b' => out.push('\u{8}'),
                            b'f' => out.push('\u{c}'),
                            b'n' => out.push('\n'),
                            b'r' => out.push('\r'),
                            b't' => out.push('\t'),
                            b'u' => {
                                let first = self.hex4()?;
                                let code = if (0xD800..0xDC00).contains(&first) {
                                    self.expect(b'\\')?;
                                    self.expect(b'u')?;
                                    let second = self.hex4()?;
                                    if !(0xDC00..0xE000).contains(&second) {
                                        return Err("unpaired surrogate".into());
                                    }
                                    0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                                } else {
                                    first
                                };
                                out.push(char::from_u32(code).ok_or("bad \\u escape")?);
                            }
                            _ => return Err(format!("bad escape at byte {}", self.at - 1)),
                        }
                    }
                    _ => return Err("unterminated string".into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const CLUSTER: &str = r#"{"members": [
        {"name": "pg1", "role": "replica", "state": "streaming", "api_url": "http://10.0.0.1:8008/patroni", "host": "10.0.0.1", "port": 5432, "timeline": 2, "lag": 0},
        {"name": "pg2", "role": "leader", "state": "running", "api_url": "http://10.0.0.2:8008/patroni", "host": "10.0.0.2", "port": 5433, "timeline": 2},
        {"name": "pg3", "role": "sync_standby", "state": "streaming", "host": "10.0.0.3", "port": 5432, "tags": {"nofailover": true}, "lag": null}
    ], "scope": "demo", "note": "caf\u00e9 \ud83d\ude00 \"q\""}"#;

    #[test]
    fn leader_is_the_running_member_with_the_leader_role() {
        assert_eq!(
            leader_from_cluster(CLUSTER),
            Ok(Some(HostAddr {
                host: "10.0.0.2".into(),
                port: 5433
            }))
        );
    }

    #[test]
    fn no_leader_member_or_a_stopped_one_means_none() {
        let none = r#"{"members": [{"name": "a", "role": "replica", "state": "running", "host": "h", "port": 1}]}"#;
        assert_eq!(leader_from_cluster(none), Ok(None));
        let stopped = r#"{"members": [{"name": "a", "role": "leader", "state": "stopped", "host": "h", "port": 1}]}"#;
        assert_eq!(leader_from_cluster(stopped), Ok(None));
        let standby = r#"{"members": [{"role": "standby_leader", "state": "running", "host": "h", "port": 1}]}"#;
        assert_eq!(leader_from_cluster(standby), Ok(None));
    }

    #[test]
    fn malformed_documents_are_errors() {
        for bad in [
            "",
            "{",
            "[]",
            r#"{"members": 3}"#,
            r#"{"members": [{"role": "leader", "host": "h"}]}"#,
            r#"{"members": [{"role": "leader", "host": "h", "port": 70000}]}"#,
            r#"{"members": []} trailing"#,
            &"[".repeat(100),
        ] {
            assert!(leader_from_cluster(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn json_strings_unescape() {
        let v = json::parse(r#"{"s": "a\"b\\c\/d\n\u00e9\ud83d\ude00"}"#).unwrap();
        assert_eq!(
            v.get("s").and_then(json::Value::as_str),
            Some("a\"b\\c/d\né😀")
        );
    }

    #[test]
    fn responses_parse_by_length_chunks_or_close() {
        let by_length =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(
            parse_response(by_length),
            Ok(Response {
                status: 200,
                body: "{}".into()
            })
        );
        let chunked = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked),
            Ok(Response {
                status: 503,
                body: "abcde".into()
            })
        );
        let until_close = b"HTTP/1.0 200 OK\r\nServer: BaseHTTP/0.6\r\n\r\n{\"members\": []}";
        assert_eq!(
            parse_response(until_close).map(|r| r.body),
            Ok("{\"members\": []}".into())
        );
    }

    #[test]
    fn broken_responses_are_errors() {
        for bad in [
            &b"garbage"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn endpoint_urls() {
        assert_eq!(
            Endpoint::parse("http://10.0.0.1:8008"),
            Ok(Endpoint {
                host: "10.0.0.1".into(),
                port: 8008,
                prefix: String::new()
            })
        );
        assert_eq!(Endpoint::parse("http://patroni/").map(|e| e.port), Ok(8008));
        assert_eq!(
            Endpoint::parse("http://[::1]:9000/api/").map(|e| (e.host, e.port, e.prefix)),
            Ok(("::1".into(), 9000, "/api".into()))
        );
        assert!(matches!(
            Endpoint::parse("https://x:8008"),
            Err(PatroniError::Unsupported { .. })
        ));
        assert!(Endpoint::parse("http://:8008").is_err());
        assert!(Endpoint::parse("ftp://x").is_err());
    }

    /// A fake Patroni that answers every connection with `response` and closes.
    async fn fake_patroni(
        response: impl Into<String>,
    ) -> (Endpoint, tokio::task::JoinHandle<Vec<String>>) {
        let response: String = response.into();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut requests = Vec::new();
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            requests.push(String::from_utf8_lossy(&got).into_owned());
            stream.write_all(response.as_bytes()).await.unwrap();
            requests
        });
        let endpoint = Endpoint {
            host: "127.0.0.1".into(),
            port,
            prefix: String::new(),
        };
        (endpoint, server)
    }

    #[tokio::test]
    async fn fetches_the_leader_from_a_patroni_endpoint() {
        let body = r#"{"members": [{"name": "n1", "role": "leader", "state": "running", "host": "127.0.0.1", "port": 6543}]}"#;
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (endpoint, server) = fake_patroni(response).await;
        let leader = fetch_leader(std::slice::from_ref(&endpoint), Duration::from_secs(2)).await;
        assert_eq!(
            leader,
            Ok(Some(HostAddr {
                host: "127.0.0.1".into(),
                port: 6543
            }))
        );
        let requests = server.await.unwrap();
        assert!(
            requests[0].starts_with("GET /cluster HTTP/1.1\r\n"),
            "{requests:?}"
        );
    }

    #[tokio::test]
    async fn unreachable_endpoint_then_a_working_one() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = Endpoint {
            host: "127.0.0.1".into(),
            port: closed.local_addr().unwrap().port(),
            prefix: String::new(),
        };
        drop(closed);
        let (alive, _server) = fake_patroni(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nf\r\n{\"members\": []}\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(
            fetch_leader(&[dead.clone(), alive], Duration::from_secs(2)).await,
            Ok(None)
        );
        let only_dead = fetch_leader(&[dead], Duration::from_secs(2)).await;
        assert!(
            matches!(only_dead, Err(PatroniError::AllFailed(_))),
            "{only_dead:?}"
        );
    }

    #[tokio::test]
    async fn error_status_is_not_an_answer() {
        let (endpoint, _server) =
            fake_patroni("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await;
        let result = fetch_leader(&[endpoint], Duration::from_secs(2)).await;
        assert!(
            matches!(&result, Err(PatroniError::AllFailed(m)) if m.contains("503")),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn silent_endpoint_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Endpoint {
            host: "127.0.0.1".into(),
            port: listener.local_addr().unwrap().port(),
            prefix: String::new(),
        };
        // Accepts (the kernel does) but never answers.
        let started = std::time::Instant::now();
        let result = fetch_leader(&[endpoint], Duration::from_millis(200)).await;
        assert!(
            matches!(&result, Err(PatroniError::AllFailed(m)) if m.contains("no answer")),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(listener);
    }
}
