//! Client-facing authentication decisions: what we know about a user's password
//! ([`Secret`]), and the SCRAM-SHA-256 ([`scram`]) and md5 ([`md5`]) exchanges that check a
//! client against it. Everything here is pure: the session code reads and writes the
//! authentication messages and hands us their bodies. This module must never touch a
//! socket, never log or `Debug`-print a password or key, and never panic on bytes that came
//! from a client or a server.

pub mod md5;
pub mod scram;
pub mod users;

pub use scram::{ScramClientWithKey, ScramServer, ScramVerifier};

use std::fmt;

/// What pgrelay knows about a user's password, parsed once from config so that a login
/// only does the cheap per-exchange work.
#[derive(Clone)]
pub enum Secret {
    /// Plain text password (from config). Keeps a precomputed SCRAM verifier so a login
    /// does not redo 4096 PBKDF2 rounds.
    Plain {
        password: String,
        scram: ScramVerifier,
    },
    /// A `pg_authid`-style SCRAM verifier
    /// (`SCRAM-SHA-256$<iter>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>`): enough to check a
    /// SCRAM login, not enough for md5.
    Scram(ScramVerifier),
    /// The 32 lowercase hex digits after `md5` in a `pg_authid`-style md5 hash, i.e.
    /// hex(md5(password || username)) as ASCII bytes. That is exactly what the md5 exchange
    /// hashes with the salt, and it can never serve SCRAM.
    Md5([u8; 32]),
}

impl Secret {
    /// Reads a password entry the way PostgreSQL reads `pg_authid.rolpassword`: a SCRAM
    /// verifier, an md5 hash, or else plain text.
    ///
    /// Unlike PostgreSQL, which silently treats a malformed `SCRAM-SHA-256$...` string as a
    /// plain-text password, this refuses it: in a proxy config that is almost certainly a
    /// copy-paste error, and the user would otherwise only learn about it from failed logins.
    pub fn parse(text: &str) -> Result<Secret, AuthError> {
        if text.starts_with(scram::VERIFIER_PREFIX) {
            return ScramVerifier::parse(text).map(Secret::Scram);
        }
        if let Some(hash) = parse_md5_hash(text) {
            return Ok(Secret::Md5(hash));
        }
        Ok(Secret::Plain {
            password: text.to_owned(),
            scram: ScramVerifier::from_password(text),
        })
    }
}

/// The md5 form PostgreSQL recognises: "md5" followed by exactly 32 *lowercase* hex digits
/// (anything else, e.g. "md5secret", is a plain-text password to PostgreSQL, and to us).
fn parse_md5_hash(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix("md5")?.as_bytes();
    let hash: [u8; 32] = hex.try_into().ok()?;
    hash.iter()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        .then_some(hash)
}

impl fmt::Debug for Secret {
    // Config structs derive Debug and end up in logs; the password and hash must not.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain { .. } => f.write_str("Secret::Plain(<redacted>)"),
            Secret::Scram(verifier) => f.debug_tuple("Secret::Scram").field(verifier).finish(),
            Secret::Md5(_) => f.write_str("Secret::Md5(<redacted>)"),
        }
    }
}

/// Why an authentication step failed. The frontend maps each to one client `ErrorResponse`:
/// see [`AuthError::is_password_failure`].
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A configured SCRAM verifier does not have the `pg_authid` shape (a config error).
    #[error("malformed SCRAM verifier: {0}")]
    MalformedVerifier(&'static str),
    /// A SCRAM message (from the client, or from a backend server) is not valid SCRAM.
    #[error("malformed SCRAM message: {0}")]
    MalformedMessage(&'static str),
    /// The client asked for channel binding (`p=...`), which we do not offer yet (no
    /// SCRAM-SHA-256-PLUS).
    #[error("client requested SCRAM channel binding, which is not supported")]
    ChannelBindingUnsupported,
    /// The client-final `c=` attribute does not repeat the client-first GS2 header.
    #[error("SCRAM channel binding check failed")]
    ChannelBindingMismatch,
    /// The client-final (or the backend's server-first) nonce is not the one this exchange
    /// agreed on.
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// A SCRAM or md5 method was called out of turn (a session-code bug, or a replay).
    #[error("authentication exchange step out of order")]
    OutOfOrder,
    /// The client's proof (SCRAM) or hash (md5) does not match the secret.
    #[error("password authentication failed")]
    WrongPassword,
    /// md5 needs the password or its md5 hash, and we only hold a SCRAM verifier.
    #[error("md5 authentication is impossible: the user has only a SCRAM secret")]
    Md5WithScramSecret,
    /// Backend side: the server's salt or iteration count differs from our verifier's, so a
    /// ClientKey recovered from our verifier cannot produce a proof it accepts.
    #[error("backend SCRAM salt or iteration count differs from the configured verifier")]
    BackendVerifierMismatch,
    /// Backend side: the server's final signature is wrong, so it does not know the
    /// password and may be an impostor.
    #[error("backend SCRAM server signature is invalid")]
    BackendSignatureMismatch,
    /// Backend side: the server ended the exchange with `e=<reason>`.
    #[error("backend rejected SCRAM authentication: {0}")]
    BackendRejected(String),
}

impl AuthError {
    /// Whether the client should see this as "password authentication failed" (SQLSTATE
    /// 28P01) rather than a protocol violation (08P01). A SCRAM-only secret meeting md5
    /// counts as a password failure because PostgreSQL reports it that way too, so a client
    /// cannot probe which kind of secret a user has. Backend-side errors are never password
    /// failures of the client.
    pub fn is_password_failure(&self) -> bool {
        matches!(
            self,
            AuthError::WrongPassword | AuthError::Md5WithScramSecret
        )
    }
}

/// Compares secrets in time that depends only on their length, so a client cannot learn
/// how many leading bytes of its proof or hash were right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_parse_recognises_scram_verifier() {
        let text = postgres_protocol::password::scram_sha_256(b"hunter2");
        let Ok(Secret::Scram(verifier)) = Secret::parse(&text) else {
            panic!("expected a SCRAM secret");
        };
        assert_eq!(verifier.iterations, 4096);
        assert_eq!(verifier.salt.len(), 16);
    }

    #[test]
    fn secret_parse_recognises_md5_hash() {
        let text = postgres_protocol::password::md5(b"hunter2", "alice");
        let Ok(Secret::Md5(hash)) = Secret::parse(&text) else {
            panic!("expected an md5 secret");
        };
        assert_eq!(&hash[..], &text.as_bytes()[3..]);
    }

    #[test]
    fn secret_parse_treats_anything_else_as_plain_text() {
        let upper_hex = format!("md5{}", "ABCDEF0123456789".repeat(2));
        for text in [
            "hunter2",
            "",
            "md5secret",
            "md5",
            &upper_hex,
            "SCRAM-SHA-256",
        ] {
            match Secret::parse(text) {
                Ok(Secret::Plain { password, scram }) => {
                    assert_eq!(password, text);
                    assert_eq!(scram.iterations, 4096);
                }
                other => panic!("{text:?} parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn secret_parse_rejects_malformed_scram_verifier() {
        let err = Secret::parse("SCRAM-SHA-256$4096:c2FsdA==$bad").unwrap_err();
        assert!(matches!(err, AuthError::MalformedVerifier(_)), "{err:?}");
    }

    #[test]
    fn secret_debug_output_hides_passwords() {
        for text in [
            "hunter2",
            &postgres_protocol::password::md5(b"hunter2", "alice"),
        ] {
            let shown = format!("{:?}", Secret::parse(text).unwrap());
            assert!(
                !shown.contains("hunter2") && !shown.contains(&text[3..]),
                "{shown}"
            );
        }
    }

    #[test]
    fn only_wrong_passwords_count_as_password_failures() {
        assert!(AuthError::WrongPassword.is_password_failure());
        assert!(AuthError::Md5WithScramSecret.is_password_failure());
        for protocol_error in [
            AuthError::MalformedMessage("x"),
            AuthError::ChannelBindingUnsupported,
            AuthError::ChannelBindingMismatch,
            AuthError::NonceMismatch,
            AuthError::OutOfOrder,
        ] {
            assert!(!protocol_error.is_password_failure(), "{protocol_error:?}");
        }
    }

    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
