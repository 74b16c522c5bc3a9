//! The untagged messages a connection may start with: StartupMessage, SSLRequest,
//! GSSENCRequest and CancelRequest.
//!
//! They are parsed from a length-checked buffer only; a startup packet is small (PostgreSQL
//! itself refuses more than 10,000 bytes), so a peer that claims more is refused before
//! anything is allocated.

use thiserror::Error;

/// PostgreSQL's own limit for a startup packet.
pub const MAX_STARTUP_PACKET: usize = 10_000;

const SSL_REQUEST_CODE: i32 = 80_877_103;
const GSSENC_REQUEST_CODE: i32 = 80_877_104;
const CANCEL_REQUEST_CODE: i32 = 80_877_102;
const PROTOCOL_MAJOR_3: i32 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        process_id: i32,
        secret_key: i32,
    },
    Startup {
        /// Minor protocol version the client asked for (3.x).
        minor_version: u16,
        /// Parameters in the order given (user, database, application_name, options, ...).
        params: Vec<(String, String)>,
    },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid length of startup packet: {0}")]
    BadLength(i64),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
    #[error("invalid byte sequence in startup packet")]
    NotUtf8,
}

impl StartupPacket {
    /// The value of a startup parameter, e.g. "user".
    pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Checks the 4-byte length prefix of a startup packet and returns the whole packet length.
pub fn packet_len(prefix: [u8; 4]) -> Result<usize, StartupError> {
    let len = i32::from_be_bytes(prefix);
    if len < 8 || len as usize > MAX_STARTUP_PACKET {
        return Err(StartupError::BadLength(i64::from(len)));
    }
    Ok(len as usize)
}

/// Parses a whole startup packet (length prefix included).
pub fn parse(packet: &[u8]) -> Result<StartupPacket, StartupError> {
    let code_bytes = packet
        .get(4..8)
        .ok_or(StartupError::Malformed("shorter than 8 bytes"))?;
    let code = i32::from_be_bytes([code_bytes[0], code_bytes[1], code_bytes[2], code_bytes[3]]);
    let rest = &packet[8..];
    match code {
        SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            let ids = rest
                .get(0..8)
                .ok_or(StartupError::Malformed("cancel request without a key"))?;
            Ok(StartupPacket::Cancel {
                process_id: i32::from_be_bytes([ids[0], ids[1], ids[2], ids[3]]),
                secret_key: i32::from_be_bytes([ids[4], ids[5], ids[6], ids[7]]),
            })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if i32::from(major) != PROTOCOL_MAJOR_3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            Ok(StartupPacket::Startup {
                minor_version: minor,
                params: parse_params(rest)?,
            })
        }
    }
}

/// Parses `name\0value\0 ... \0`.
fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        let (name, after) = take_cstr(rest)?;
        if name.is_empty() {
            if !after.is_empty() {
                return Err(StartupError::Malformed("bytes after the terminator"));
            }
            return Ok(params);
        }
        let (value, after) = take_cstr(after)?;
        params.push((name, value));
        rest = after;
    }
}

fn take_cstr(buf: &[u8]) -> Result<(String, &[u8]), StartupError> {
    let nul = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(StartupError::Malformed("missing terminator"))?;
    let s = std::str::from_utf8(&buf[..nul]).map_err(|_| StartupError::NotUtf8)?;
    Ok((s.to_owned(), &buf[nul + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, rest: &[u8]) -> Vec<u8> {
        let mut v = ((rest.len() + 8) as i32).to_be_bytes().to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(rest);
        v
    }

    #[test]
    fn startup_message_parameters_in_order() {
        let p = packet(196608, b"user\0app\0database\0db\0\0");
        let StartupPacket::Startup {
            minor_version,
            params,
        } = parse(&p).unwrap()
        else {
            panic!("not a startup")
        };
        assert_eq!(minor_version, 0);
        assert_eq!(StartupPacket::param(&params, "user"), Some("app"));
        assert_eq!(StartupPacket::param(&params, "database"), Some("db"));
    }

    #[test]
    fn ssl_gss_and_cancel_requests() {
        assert_eq!(
            parse(&packet(80877103, b"")).unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            parse(&packet(80877104, b"")).unwrap(),
            StartupPacket::GssEncRequest
        );
        let mut ids = 7i32.to_be_bytes().to_vec();
        ids.extend_from_slice(&(-9i32).to_be_bytes());
        assert_eq!(
            parse(&packet(80877102, &ids)).unwrap(),
            StartupPacket::Cancel {
                process_id: 7,
                secret_key: -9
            }
        );
    }

    #[test]
    fn protocol_two_is_refused() {
        assert_eq!(
            parse(&packet(2 << 16, b"\0")),
            Err(StartupError::UnsupportedProtocol { major: 2, minor: 0 })
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse(&packet(196608, b"user\0app")).is_err());
        assert!(parse(&packet(196608, b"user\0\xff\xfe\0\0")).is_err());
        assert!(parse(&packet(196608, b"user\0app\0\0junk")).is_err());
        assert!(parse(&packet(80877102, b"\0\0")).is_err());
        assert!(parse(b"\0\0").is_err());
        assert!(packet_len([0, 0, 0, 3]).is_err());
        assert!(packet_len([0x7f, 0, 0, 0]).is_err());
        assert!(packet_len([0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
