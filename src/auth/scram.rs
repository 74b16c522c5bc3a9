//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) the way PostgreSQL speaks it: the server side of a
//! client's login ([`ScramServer`]), the stored verifier it checks against
//! ([`ScramVerifier`]), and a client side driven by a recovered ClientKey
//! ([`ScramClientWithKey`]) so pgrelay can log in to a backend with no plain password.
//! Only the "SCRAM-SHA-256" mechanism: no channel binding (-PLUS) yet, so a client that asks
//! for it is refused. This file must never accept a proof without checking it in constant
//! time, never index or unwrap bytes that came off the wire, and never keep going after a
//! failed step (each exchange fails closed).

use super::{constant_time_eq, AuthError};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::{fmt, mem, str};

/// How a SCRAM verifier string starts, in `pg_authid` and in our config.
pub(crate) const VERIFIER_PREFIX: &str = "SCRAM-SHA-256$";

/// Random bytes in our half of the nonce, as PostgreSQL (SCRAM_RAW_NONCE_LEN) and libpq do.
const NONCE_RAW_LEN: usize = 18;

/// A SCRAM-SHA-256 verifier: what a server needs to check a client's proof and sign its
/// reply, without the password. Same content as `pg_authid.rolpassword`, so verifiers can be
/// copied between PostgreSQL and pgrelay config.
#[derive(Clone)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl ScramVerifier {
    /// Parses `SCRAM-SHA-256$<iter>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>`, the format
    /// PostgreSQL stores and `postgres_protocol::password::scram_sha_256` produces.
    pub fn parse(s: &str) -> Result<Self, AuthError> {
        let malformed = AuthError::MalformedVerifier;
        let body = s
            .strip_prefix(VERIFIER_PREFIX)
            .ok_or(malformed("does not start with SCRAM-SHA-256$"))?;
        let (iteration_salt, keys) = body.split_once('$').ok_or(malformed("missing keys"))?;
        let (iterations, salt) = iteration_salt
            .split_once(':')
            .ok_or(malformed("missing salt"))?;
        let (stored_key, server_key) =
            keys.split_once(':').ok_or(malformed("missing ServerKey"))?;
        let iterations = parse_iterations(iterations).ok_or(malformed("bad iteration count"))?;
        let salt = BASE64
            .decode(salt)
            .ok()
            .filter(|salt| !salt.is_empty())
            .ok_or(malformed("bad salt"))?;
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key: decode_key(stored_key).ok_or(malformed("bad StoredKey"))?,
            server_key: decode_key(server_key).ok_or(malformed("bad ServerKey"))?,
        })
    }

    /// Derives a verifier from a plain-text password: random 16-byte salt, 4096 iterations,
    /// like `CREATE ROLE ... PASSWORD`. Done once per config load because it costs 4096
    /// PBKDF2 rounds. Delegates to postgres-protocol, which SASLpreps the password as libpq
    /// and PostgreSQL do (falling back to raw bytes when prep fails), so clients that prep
    /// non-ASCII passwords still match.
    pub fn from_password(password: &str) -> Self {
        let text = postgres_protocol::password::scram_sha_256(password.as_bytes());
        // Not client input: postgres-protocol formats exactly the shape `parse` reads, and
        // the tests pin that down.
        Self::parse(&text).expect("postgres-protocol produces pg_authid-style verifiers")
    }
}

impl fmt::Debug for ScramVerifier {
    // StoredKey lets an eavesdropper of one exchange recover the ClientKey, and ServerKey
    // lets anyone impersonate a server: neither belongs in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt", &BASE64.encode(&self.salt))
            .finish_non_exhaustive()
    }
}

/// A decimal iteration count, at least 1 (`str::parse` alone would also take "+4096").
fn parse_iterations(digits: &str) -> Option<u32> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n| n > 0)
}

/// A base64 SHA-256-sized value (key, proof or signature).
fn decode_key(b64: &str) -> Option<[u8; 32]> {
    BASE64.decode(b64).ok()?.try_into().ok()
}

fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    // RFC 2104 zero-pads a key shorter than the 64-byte SHA-256 block; padding it here
    // lets us use the infallible block-sized constructor instead of unwrapping
    // `new_from_slice`. Every SCRAM key is 32 bytes.
    let mut block_key = [0u8; 64];
    block_key[..32].copy_from_slice(key);
    parts
        .iter()
        .fold(Hmac::<Sha256>::new(&block_key.into()), |mac, part| {
            mac.chain_update(part)
        })
        .finalize()
        .into_bytes()
        .into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = *a;
    out.iter_mut().zip(b).for_each(|(o, b)| *o ^= b);
    out
}

/// Our half of a nonce: random bytes in base64, which never contains ','.
fn new_nonce() -> String {
    let mut raw = [0u8; NONCE_RAW_LEN];
    rand::fill(&mut raw);
    BASE64.encode(raw)
}

/// SCRAM text must be UTF-8 and NUL-free (PostgreSQL reads it as a C string).
fn message_text(bytes: &[u8]) -> Result<&str, AuthError> {
    let text = str::from_utf8(bytes).map_err(|_| AuthError::MalformedMessage("not UTF-8"))?;
    if text.contains('\0') {
        return Err(AuthError::MalformedMessage("contains NUL"));
    }
    Ok(text)
}

/// The value of a `<key>=<value>` attribute, or an error naming what was expected.
fn attribute<'a>(
    part: Option<&'a str>,
    key: char,
    expected: &'static str,
) -> Result<&'a str, AuthError> {
    part.and_then(|part| part.strip_prefix(key))
        .and_then(|rest| rest.strip_prefix('='))
        .ok_or(AuthError::MalformedMessage(expected))
}

/// Optional trailing extensions (`x=...`): allowed by RFC 5802 and ignored, like PostgreSQL
/// does, but they must at least look like attributes.
fn check_extensions<'a>(parts: impl Iterator<Item = &'a str>) -> Result<(), AuthError> {
    for part in parts {
        let mut chars = part.chars();
        let well_formed =
            chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.next() == Some('=');
        if !well_formed {
            return Err(AuthError::MalformedMessage("bad attribute"));
        }
    }
    Ok(())
}

/// RFC 5802 `printable`: the characters a nonce may use (0x21..=0x7E except ',').
fn is_printable_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| matches!(b, 0x21..=0x2b | 0x2d..=0x7e))
}

/// The server side of one SCRAM-SHA-256 login. The session code feeds it the
/// SASLInitialResponse and SASLResponse bodies and sends back what it returns; the type
/// only enforces the order and the checks.
pub struct ScramServer {
    verifier: ScramVerifier,
    state: ServerState,
}

enum ServerState {
    AwaitingClientFirst,
    AwaitingClientFinal {
        /// base64 of the client's GS2 header, which `c=` must repeat.
        channel_binding: String,
        combined_nonce: String,
        client_first_bare: String,
        server_first: String,
    },
    Authenticated {
        client_key: [u8; 32],
    },
    Failed,
}

impl ScramServer {
    /// Starts an exchange against `verifier`. Per-login state is small; the verifier's
    /// expensive PBKDF2 was done when the secret was parsed.
    pub fn new(verifier: ScramVerifier) -> Self {
        ScramServer {
            verifier,
            state: ServerState::AwaitingClientFirst,
        }
    }

    /// Handles the SASLInitialResponse data (client-first-message). Returns the
    /// server-first-message to send in AuthenticationSASLContinue.
    ///
    /// The username inside the message is ignored, as in PostgreSQL, because the startup
    /// packet already named the user (libpq sends `n=`).
    pub fn client_first(&mut self, client_first: &[u8]) -> Result<Vec<u8>, AuthError> {
        if !matches!(
            mem::replace(&mut self.state, ServerState::Failed),
            ServerState::AwaitingClientFirst
        ) {
            return Err(AuthError::OutOfOrder);
        }
        let text = message_text(client_first)?;
        let (cbind_flag, rest) = text
            .split_once(',')
            .ok_or(AuthError::MalformedMessage("missing GS2 header"))?;
        match cbind_flag {
            // "n": client does not support channel binding. "y": client does but thinks we
            // do not; true, since we never offer -PLUS. Once -PLUS is offered over TLS, "y"
            // must be refused as a downgrade attack (RFC 5802 section 6).
            "n" | "y" => {}
            flag if flag.starts_with("p=") => return Err(AuthError::ChannelBindingUnsupported),
            _ => return Err(AuthError::MalformedMessage("bad channel binding flag")),
        }
        let (authzid, client_first_bare) = rest
            .split_once(',')
            .ok_or(AuthError::MalformedMessage("missing GS2 header"))?;
        // An authorization identity would let one user act as another; only an empty one
        // (which means "the authenticated user") is harmless.
        if !authzid.is_empty() && authzid != "a=" {
            return Err(AuthError::MalformedMessage(
                "authorization identity is not supported",
            ));
        }

        let mut parts = client_first_bare.split(',');
        let first = parts.next();
        if first.is_some_and(|part| part.starts_with("m=")) {
            return Err(AuthError::MalformedMessage(
                "mandatory SCRAM extensions are not supported",
            ));
        }
        attribute(first, 'n', "missing username")?;
        let client_nonce = attribute(parts.next(), 'r', "missing nonce")?;
        if !is_printable_nonce(client_nonce) {
            return Err(AuthError::MalformedMessage("bad nonce"));
        }
        check_extensions(parts)?;

        let combined_nonce = format!("{client_nonce}{}", new_nonce());
        let server_first = format!(
            "r={combined_nonce},s={},i={}",
            BASE64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        self.state = ServerState::AwaitingClientFinal {
            channel_binding: BASE64.encode(format!("{cbind_flag},{authzid},")),
            combined_nonce,
            client_first_bare: client_first_bare.to_owned(),
            server_first: server_first.clone(),
        };
        Ok(server_first.into_bytes())
    }

    /// Handles the SASLResponse data (client-final-message). On a correct proof returns the
    /// server-final-message ("v=...") to send in AuthenticationSASLFinal.
    pub fn client_final(&mut self, client_final: &[u8]) -> Result<Vec<u8>, AuthError> {
        let ServerState::AwaitingClientFinal {
            channel_binding,
            combined_nonce,
            client_first_bare,
            server_first,
        } = mem::replace(&mut self.state, ServerState::Failed)
        else {
            return Err(AuthError::OutOfOrder);
        };
        let text = message_text(client_final)?;
        // The proof is the last attribute and is not itself signed.
        let (without_proof, proof) = text
            .rsplit_once(',')
            .ok_or(AuthError::MalformedMessage("missing proof"))?;
        let proof = attribute(Some(proof), 'p', "missing proof")?;
        let mut parts = without_proof.split(',');
        if attribute(parts.next(), 'c', "missing channel binding")? != channel_binding {
            return Err(AuthError::ChannelBindingMismatch);
        }
        if attribute(parts.next(), 'r', "missing nonce")? != combined_nonce {
            return Err(AuthError::NonceMismatch);
        }
        check_extensions(parts)?;
        let proof = decode_key(proof).ok_or(AuthError::MalformedMessage("bad proof"))?;

        let auth_message = [
            client_first_bare.as_bytes(),
            b",",
            server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let client_signature = hmac_sha256(&self.verifier.stored_key, &auth_message);
        // The proof is ClientKey XOR ClientSignature; only the holder of the password (or of
        // ClientKey) can produce a ClientKey whose hash is StoredKey.
        let client_key = xor(&proof, &client_signature);
        if !constant_time_eq(&sha256(&client_key), &self.verifier.stored_key) {
            return Err(AuthError::WrongPassword);
        }
        let server_signature = hmac_sha256(&self.verifier.server_key, &auth_message);
        self.state = ServerState::Authenticated { client_key };
        Ok(format!("v={}", BASE64.encode(server_signature)).into_bytes())
    }

    /// After a successful client_final: the ClientKey recovered from the proof (ClientProof
    /// XOR ClientSignature), so the backend side can authenticate to a server holding the
    /// same verifier without the plain password.
    pub fn client_key(&self) -> Option<[u8; 32]> {
        match self.state {
            ServerState::Authenticated { client_key } => Some(client_key),
            _ => None,
        }
    }
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ServerState::AwaitingClientFirst => "awaiting client-first",
            ServerState::AwaitingClientFinal { .. } => "awaiting client-final",
            ServerState::Authenticated { .. } => "authenticated",
            ServerState::Failed => "failed",
        };
        f.debug_struct("ScramServer")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// The client side of SCRAM-SHA-256 toward a backend, driven by a ClientKey instead of a
/// password: pgrelay learns the ClientKey from the client's own login ([`ScramServer::client_key`])
/// and can then log in to a backend that stores the same verifier, without ever holding the
/// plain password. Works only when the backend's salt and iteration count equal the
/// verifier's (a different salt means a different ClientKey), which is checked.
pub struct ScramClientWithKey {
    client_key: [u8; 32],
    salt: Vec<u8>,
    iterations: u32,
    server_key: [u8; 32],
    client_nonce: String,
    state: ClientState,
}

enum ClientState {
    AwaitingServerFirst,
    AwaitingServerFinal { server_signature: [u8; 32] },
    Authenticated,
    Failed,
}

impl ScramClientWithKey {
    /// Prepares a login with `client_key` for a backend expected to hold `verifier`.
    pub fn new(client_key: [u8; 32], verifier: &ScramVerifier) -> Self {
        ScramClientWithKey {
            client_key,
            salt: verifier.salt.clone(),
            iterations: verifier.iterations,
            server_key: verifier.server_key,
            client_nonce: new_nonce(),
            state: ClientState::AwaitingServerFirst,
        }
    }

    /// The client-first-message for SASLInitialResponse (mechanism "SCRAM-SHA-256"). "n,,":
    /// we do not do channel binding; the username is empty because the startup packet
    /// carries it, as with libpq.
    pub fn client_first(&mut self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare()).into_bytes()
    }

    fn client_first_bare(&self) -> String {
        format!("n=,r={}", self.client_nonce)
    }

    /// Handles the AuthenticationSASLContinue data (server-first-message) and returns the
    /// client-final-message for SASLResponse.
    pub fn server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, AuthError> {
        if !matches!(
            mem::replace(&mut self.state, ClientState::Failed),
            ClientState::AwaitingServerFirst
        ) {
            return Err(AuthError::OutOfOrder);
        }
        let server_first = message_text(msg)?;
        let mut parts = server_first.split(',');
        let first = parts.next();
        if first.is_some_and(|part| part.starts_with("m=")) {
            return Err(AuthError::MalformedMessage(
                "mandatory SCRAM extensions are not supported",
            ));
        }
        let nonce = attribute(first, 'r', "missing nonce")?;
        let salt = attribute(parts.next(), 's', "missing salt")?;
        let iterations = attribute(parts.next(), 'i', "missing iteration count")?;
        check_extensions(parts)?;
        // The server must extend our nonce, or this is a replay of someone else's exchange.
        let extends_ours = nonce
            .strip_prefix(self.client_nonce.as_str())
            .is_some_and(|server_part| !server_part.is_empty());
        if !extends_ours || !is_printable_nonce(nonce) {
            return Err(AuthError::NonceMismatch);
        }
        let salt = BASE64
            .decode(salt)
            .map_err(|_| AuthError::MalformedMessage("bad salt"))?;
        let iterations = parse_iterations(iterations)
            .ok_or(AuthError::MalformedMessage("bad iteration count"))?;
        if salt != self.salt || iterations != self.iterations {
            return Err(AuthError::BackendVerifierMismatch);
        }

        let without_proof = format!("c={},r={nonce}", BASE64.encode("n,,"));
        let client_first_bare = self.client_first_bare();
        let auth_message = [
            client_first_bare.as_bytes(),
            b",",
            server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let stored_key = sha256(&self.client_key);
        let proof = xor(&self.client_key, &hmac_sha256(&stored_key, &auth_message));
        self.state = ClientState::AwaitingServerFinal {
            server_signature: hmac_sha256(&self.server_key, &auth_message),
        };
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes())
    }

    /// Handles the AuthenticationSASLFinal data (server-final-message). Only `Ok` means the
    /// backend proved it knows the verifier; anything else must end the connection.
    pub fn server_final(&mut self, msg: &[u8]) -> Result<(), AuthError> {
        let ClientState::AwaitingServerFinal { server_signature } =
            mem::replace(&mut self.state, ClientState::Failed)
        else {
            return Err(AuthError::OutOfOrder);
        };
        let text = message_text(msg)?;
        let mut parts = text.split(',');
        let first = parts.next();
        if let Some(reason) = first.and_then(|part| part.strip_prefix("e=")) {
            return Err(AuthError::BackendRejected(reason.to_owned()));
        }
        let verifier = attribute(first, 'v', "missing server signature")?;
        check_extensions(parts)?;
        let verifier =
            decode_key(verifier).ok_or(AuthError::MalformedMessage("bad server signature"))?;
        if !constant_time_eq(&verifier, &server_signature) {
            return Err(AuthError::BackendSignatureMismatch);
        }
        self.state = ClientState::Authenticated;
        Ok(())
    }
}

impl fmt::Debug for ScramClientWithKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ClientState::AwaitingServerFirst => "awaiting server-first",
            ClientState::AwaitingServerFinal { .. } => "awaiting server-final",
            ClientState::Authenticated => "authenticated",
            ClientState::Failed => "failed",
        };
        f.debug_struct("ScramClientWithKey")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use rand::RngExt;
    use std::sync::OnceLock;

    /// One verifier for "hunter2", computed once: PBKDF2 is slow in debug builds.
    fn verifier() -> ScramVerifier {
        static VERIFIER: OnceLock<ScramVerifier> = OnceLock::new();
        VERIFIER
            .get_or_init(|| {
                ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(b"hunter2"))
                    .unwrap()
            })
            .clone()
    }

    /// Runs a whole login of postgres-protocol's client against our server.
    fn login(
        server: &mut ScramServer,
        password: &[u8],
        channel_binding: ChannelBinding,
    ) -> Result<(), AuthError> {
        let mut client = ScramSha256::new(password, channel_binding);
        let server_first = server.client_first(client.message())?;
        client.update(&server_first).unwrap();
        let server_final = server.client_final(client.message())?;
        client
            .finish(&server_final)
            .expect("client must accept our server signature");
        Ok(())
    }

    /// A server that has answered a fixed client-first, and the combined nonce it chose.
    fn server_after_client_first() -> (ScramServer, String) {
        let mut server = ScramServer::new(verifier());
        let server_first = server.client_first(b"n,,n=,r=clientnonce").unwrap();
        let server_first = String::from_utf8(server_first).unwrap();
        let nonce = server_first
            .strip_prefix("r=")
            .and_then(|rest| rest.split(',').next())
            .unwrap()
            .to_owned();
        (server, nonce)
    }

    #[test]
    fn plain_secret_login_succeeds_with_postgres_protocol_client() {
        let Secret::Plain { scram, .. } = Secret::parse("hunter2").unwrap() else {
            panic!("expected a plain secret");
        };
        // libpq-style clients send "n,," or "y,," depending on what they support.
        for binding in [ChannelBinding::unsupported(), ChannelBinding::unrequested()] {
            let mut server = ScramServer::new(scram.clone());
            login(&mut server, b"hunter2", binding).unwrap();
            assert!(server.client_key().is_some());
        }
    }

    #[test]
    fn stored_verifier_login_succeeds_with_postgres_protocol_client() {
        let Secret::Scram(verifier) =
            Secret::parse(&postgres_protocol::password::scram_sha_256(b"s3cret pass")).unwrap()
        else {
            panic!("expected a SCRAM secret");
        };
        let mut server = ScramServer::new(verifier);
        login(&mut server, b"s3cret pass", ChannelBinding::unsupported()).unwrap();
    }

    #[test]
    fn non_ascii_plain_password_matches_a_saslprepping_client() {
        // U+2168 ROMAN NUMERAL NINE becomes "IX" under SASLprep (NFKC); clients prep, so
        // the verifier we derive from config must too.
        let Secret::Plain { scram, .. } = Secret::parse("pass\u{2168}").unwrap() else {
            panic!("expected a plain secret");
        };
        let mut server = ScramServer::new(scram);
        login(
            &mut server,
            "pass\u{2168}".as_bytes(),
            ChannelBinding::unsupported(),
        )
        .unwrap();
    }

    #[test]
    fn wrong_password_is_a_password_failure() {
        let mut server = ScramServer::new(verifier());
        let err = login(&mut server, b"hunter3", ChannelBinding::unsupported()).unwrap_err();
        assert!(matches!(err, AuthError::WrongPassword), "{err:?}");
        assert!(err.is_password_failure());
        assert_eq!(server.client_key(), None);
    }

    #[test]
    fn tampered_nonce_is_rejected() {
        let mut client = ScramSha256::new(b"hunter2", ChannelBinding::unsupported());
        let mut server = ScramServer::new(verifier());
        let server_first = server.client_first(client.message()).unwrap();
        client.update(&server_first).unwrap();
        let client_final = String::from_utf8(client.message().to_vec()).unwrap();
        let tampered = client_final.replacen(",r=", ",r=X", 1);
        let err = server.client_final(tampered.as_bytes()).unwrap_err();
        assert!(matches!(err, AuthError::NonceMismatch), "{err:?}");
        assert!(!err.is_password_failure());
    }

    #[test]
    fn tampered_channel_binding_is_rejected() {
        let (mut server, nonce) = server_after_client_first();
        // base64("y,,") while the client-first said "n,,".
        let msg = format!("c=eSws,r={nonce},p={}", BASE64.encode([0u8; 32]));
        let err = server.client_final(msg.as_bytes()).unwrap_err();
        assert!(matches!(err, AuthError::ChannelBindingMismatch), "{err:?}");
    }

    #[test]
    fn channel_binding_request_is_refused() {
        let client = ScramSha256::new(
            b"hunter2",
            ChannelBinding::tls_server_end_point(vec![1, 2, 3]),
        );
        assert!(client.message().starts_with(b"p=tls-server-end-point,"));
        let mut server = ScramServer::new(verifier());
        let err = server.client_first(client.message()).unwrap_err();
        assert!(
            matches!(err, AuthError::ChannelBindingUnsupported),
            "{err:?}"
        );
    }

    #[test]
    fn username_and_empty_authzid_are_ignored() {
        for client_first in [
            &b"n,,n=alice,r=abc"[..],
            b"n,a=,n=,r=abc",
            b"y,,n=bob,r=abc,x=ext",
        ] {
            let mut server = ScramServer::new(verifier());
            let server_first = server.client_first(client_first).unwrap();
            assert!(server_first.starts_with(b"r=abc"));
        }
    }

    #[test]
    fn named_authzid_is_refused() {
        let mut server = ScramServer::new(verifier());
        let err = server.client_first(b"n,a=postgres,n=,r=abc").unwrap_err();
        assert!(matches!(err, AuthError::MalformedMessage(_)), "{err:?}");
    }

    #[test]
    fn empty_authzid_is_part_of_the_channel_binding_check() {
        let mut client = ScramClientWithKey::new([0; 32], &verifier());
        let mut server = ScramServer::new(verifier());
        let client_first = client.client_first();
        let with_authzid = [&b"n,a=,"[..], &client_first[3..]].concat();
        let server_first = server.client_first(&with_authzid).unwrap();
        // Our client signs "c=biws" (base64 "n,,"), not base64 "n,a=,".
        let client_final = client.server_first(&server_first).unwrap();
        let err = server.client_final(&client_final).unwrap_err();
        assert!(matches!(err, AuthError::ChannelBindingMismatch), "{err:?}");
    }

    #[test]
    fn server_first_extends_client_nonce_with_18_random_bytes() {
        let (_, nonce) = server_after_client_first();
        let ours = nonce.strip_prefix("clientnonce").unwrap();
        assert_eq!(BASE64.decode(ours).unwrap().len(), NONCE_RAW_LEN);
        let (_, other) = server_after_client_first();
        assert_ne!(nonce, other);
    }

    #[test]
    fn server_first_carries_verifier_salt_and_iterations() {
        let mut server = ScramServer::new(verifier());
        let server_first = server.client_first(b"n,,n=,r=abc").unwrap();
        let expected_tail = format!(",s={},i=4096", BASE64.encode(&verifier().salt));
        assert!(server_first.ends_with(expected_tail.as_bytes()));
    }

    #[test]
    fn malformed_client_first_messages_are_rejected() {
        let huge = [&b"n,,n=,r="[..], &vec![b'a'; 1 << 20], b",\xff"].concat();
        let cases: &[&[u8]] = &[
            b"",
            b"n",
            b"nonsense without commas",
            b"n,,",
            b"n,,n=",
            b"n,,r=abc",
            b"n,,n=,r=",
            b"n,,n=,r=a\x01b",
            b"n,,n=,r=abc,bogus",
            b"n,,n=,r=abc,=x",
            b"n,,m=ext,n=,r=abc",
            b"x,,n=,r=abc",
            b"n,b=x,n=,r=abc",
            b"n,,n=,r=ab\0c",
            b"\xff\xfe,,n=,r=abc",
            b"n,,n=\xc3,r=abc",
            &huge,
        ];
        for &msg in cases {
            let mut server = ScramServer::new(verifier());
            let err = server.client_first(msg).unwrap_err();
            assert!(
                matches!(err, AuthError::MalformedMessage(_)),
                "{:?}: {err:?}",
                String::from_utf8_lossy(&msg[..msg.len().min(40)])
            );
        }
    }

    #[test]
    fn malformed_client_final_messages_are_rejected() {
        let (_, nonce) = server_after_client_first();
        let proof = BASE64.encode([0u8; 32]);
        let cases = [
            String::new(),
            "garbage".to_owned(),
            format!("c=biws,r={nonce}"),
            format!("c=biws,r={nonce},p="),
            format!("c=biws,r={nonce},p=!!!!"),
            format!("c=biws,r={nonce},p={}", BASE64.encode([0u8; 31])),
            format!("c=biws,r={nonce},p={proof},x=trailing"),
            format!("r={nonce},p={proof}"),
            format!("c=biws,r={nonce},bogus,p={proof}"),
            format!("c=biws,r={nonce},p={proof}\0"),
            format!("c=biws,r={nonce},p={}", "A".repeat(1 << 20)),
        ];
        for msg in cases {
            let (mut server, _) = server_after_client_first();
            let err = server.client_final(msg.as_bytes()).unwrap_err();
            assert!(!err.is_password_failure(), "{msg:.60?}: {err:?}");
        }
        let (mut server, _) = server_after_client_first();
        assert!(server.client_final(b"c=biws,\xff").is_err());
    }

    #[test]
    fn steps_out_of_order_fail_and_exchange_cannot_be_replayed() {
        let mut server = ScramServer::new(verifier());
        assert!(matches!(
            server.client_final(b"c=biws,r=x,p=x"),
            Err(AuthError::OutOfOrder)
        ));

        let mut server = ScramServer::new(verifier());
        let mut client = ScramSha256::new(b"hunter2", ChannelBinding::unsupported());
        let server_first = server.client_first(client.message()).unwrap();
        assert!(matches!(
            server.client_first(client.message()),
            Err(AuthError::OutOfOrder)
        ));
        // A failed step ends the exchange: the right answer afterwards is refused too.
        client.update(&server_first).unwrap();
        assert!(server.client_final(client.message()).is_err());
    }

    #[test]
    fn successful_exchange_cannot_be_repeated() {
        let mut server = ScramServer::new(verifier());
        let mut client = ScramSha256::new(b"hunter2", ChannelBinding::unsupported());
        let server_first = server.client_first(client.message()).unwrap();
        client.update(&server_first).unwrap();
        let client_final = client.message().to_vec();
        server.client_final(&client_final).unwrap();
        assert!(matches!(
            server.client_final(&client_final),
            Err(AuthError::OutOfOrder)
        ));
    }

    #[test]
    fn verifier_parses_pg_authid_format() {
        let text = postgres_protocol::password::scram_sha_256(b"hunter2");
        let parsed = ScramVerifier::parse(&text).unwrap();
        let rebuilt = format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            parsed.iterations,
            BASE64.encode(&parsed.salt),
            BASE64.encode(parsed.stored_key),
            BASE64.encode(parsed.server_key)
        );
        assert_eq!(rebuilt, text);
    }

    #[test]
    fn verifier_rejects_malformed_strings() {
        let key = BASE64.encode([7u8; 32]);
        let short_key = BASE64.encode([7u8; 31]);
        let cases = [
            String::new(),
            "SCRAM-SHA-256$".to_owned(),
            format!("SCRAM-SHA-1$4096:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}"),
            format!("SCRAM-SHA-256$4096${key}:{key}"),
            format!("SCRAM-SHA-256$0:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$+4096:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$99999999999:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$4096:${key}:{key}"),
            format!("SCRAM-SHA-256$4096:not base64!${key}:{key}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${short_key}:{key}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}:{key}:{key}"),
        ];
        for text in cases {
            assert!(ScramVerifier::parse(&text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn verifier_debug_output_hides_keys() {
        let v = verifier();
        let shown = format!("{v:?}");
        assert!(!shown.contains(&BASE64.encode(v.stored_key)));
        assert!(!shown.contains(&BASE64.encode(v.server_key)));
    }

    /// Logs in with postgres-protocol's client and returns the ClientKey our server recovered.
    fn client_key_from_real_login(verifier: &ScramVerifier) -> [u8; 32] {
        let mut server = ScramServer::new(verifier.clone());
        login(&mut server, b"hunter2", ChannelBinding::unsupported()).unwrap();
        server.client_key().unwrap()
    }

    /// Runs ScramClientWithKey against our server.
    fn login_with_key(
        client: &mut ScramClientWithKey,
        server: &mut ScramServer,
    ) -> Result<(), AuthError> {
        let server_first = server.client_first(&client.client_first())?;
        let client_final = client.server_first(&server_first)?;
        let server_final = server.client_final(&client_final)?;
        client.server_final(&server_final)
    }

    #[test]
    fn client_key_recovered_from_login_authenticates_to_backend() {
        let verifier = verifier();
        let client_key = client_key_from_real_login(&verifier);
        let mut backend = ScramServer::new(verifier.clone());
        let mut client = ScramClientWithKey::new(client_key, &verifier);
        login_with_key(&mut client, &mut backend).unwrap();
        assert_eq!(backend.client_key(), Some(client_key));
    }

    #[test]
    fn client_key_login_fails_against_backend_with_different_salt() {
        let verifier = verifier();
        let client_key = client_key_from_real_login(&verifier);
        // Same password, fresh salt: what a backend gets from its own CREATE ROLE.
        let other = ScramVerifier::from_password("hunter2");
        assert_ne!(other.salt, verifier.salt);
        let mut backend = ScramServer::new(other);
        let mut client = ScramClientWithKey::new(client_key, &verifier);
        let err = login_with_key(&mut client, &mut backend).unwrap_err();
        assert!(matches!(err, AuthError::BackendVerifierMismatch), "{err:?}");
    }

    #[test]
    fn wrong_client_key_is_refused_by_server() {
        let verifier = verifier();
        let mut backend = ScramServer::new(verifier.clone());
        let mut client = ScramClientWithKey::new([42; 32], &verifier);
        let err = login_with_key(&mut client, &mut backend).unwrap_err();
        assert!(err.is_password_failure(), "{err:?}");
    }

    #[test]
    fn client_with_key_rejects_forged_or_failed_server_final() {
        let verifier = verifier();
        let client_key = client_key_from_real_login(&verifier);
        let server_final_error = |server_final: &[u8]| {
            let mut backend = ScramServer::new(verifier.clone());
            let mut client = ScramClientWithKey::new(client_key, &verifier);
            let server_first = backend.client_first(&client.client_first()).unwrap();
            client.server_first(&server_first).unwrap();
            client.server_final(server_final).unwrap_err()
        };
        let forged = format!("v={}", BASE64.encode([0u8; 32]));
        assert!(matches!(
            server_final_error(forged.as_bytes()),
            AuthError::BackendSignatureMismatch
        ));
        assert!(matches!(
            server_final_error(b"e=invalid-proof"),
            AuthError::BackendRejected(reason) if reason == "invalid-proof"
        ));
        for garbage in [&b"v="[..], b"", b"v=!!,", b"\xff"] {
            assert!(matches!(
                server_final_error(garbage),
                AuthError::MalformedMessage(_)
            ));
        }
    }

    #[test]
    fn client_with_key_rejects_server_that_ignores_its_nonce() {
        let verifier = verifier();
        let salt = BASE64.encode(&verifier.salt);

        let mut client = ScramClientWithKey::new([1; 32], &verifier);
        let msg = format!("r=someoneelse,s={salt},i=4096");
        let err = client.server_first(msg.as_bytes()).unwrap_err();
        assert!(matches!(err, AuthError::NonceMismatch), "{err:?}");

        // Echoing our nonce without adding the server's half is not a valid reply either.
        let mut client = ScramClientWithKey::new([1; 32], &verifier);
        let client_first = String::from_utf8(client.client_first()).unwrap();
        let client_nonce = client_first.strip_prefix("n,,n=,r=").unwrap();
        let msg = format!("r={client_nonce},s={salt},i=4096");
        let err = client.server_first(msg.as_bytes()).unwrap_err();
        assert!(matches!(err, AuthError::NonceMismatch), "{err:?}");
    }

    #[test]
    fn random_messages_never_panic() {
        let verifier = verifier();
        let mut rng = rand::rng();
        // Bytes that steer the parsers into their branches, plus anything at all.
        const ALPHABET: &[u8] = b"nypamcrsive=,,,biws0A+/\0\xff\xc3";
        for round in 0..600 {
            let len = rng.random_range(0..64);
            let msg: Vec<u8> = if round % 2 == 0 {
                (0..len).map(|_| rng.random()).collect()
            } else {
                (0..len)
                    .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
                    .collect()
            };

            let _ = ScramServer::new(verifier.clone()).client_first(&msg);
            let (mut server, nonce) = server_after_client_first();
            let _ = server.client_final(&msg);
            let (mut server, _) = server_after_client_first();
            let prefixed = [format!("c=biws,r={nonce},").as_bytes(), &msg].concat();
            let _ = server.client_final(&prefixed);

            let mut client = ScramClientWithKey::new([3; 32], &verifier);
            let _ = client.server_first(&msg);
            let mut client = ScramClientWithKey::new([3; 32], &verifier);
            let mut backend = ScramServer::new(verifier.clone());
            let server_first = backend.client_first(&client.client_first()).unwrap();
            client.server_first(&server_first).unwrap();
            let _ = client.server_final(&msg);

            let text = String::from_utf8_lossy(&msg);
            let _ = ScramVerifier::parse(&format!("SCRAM-SHA-256${text}"));
            let _ = crate::auth::md5::verify("u", &Secret::Md5([b'0'; 32]), [0; 4], &msg);
        }
    }
}
