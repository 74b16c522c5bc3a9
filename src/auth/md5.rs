//! The md5 password exchange (AuthenticationMD5Password / PasswordMessage) as PostgreSQL
//! does it: the client sends "md5" + hex(md5(hex(md5(password || user)) || salt)). This file
//! owns the salt and the check; it must never accept a response without comparing it in
//! constant time, and never pretend a SCRAM verifier can answer md5 (it cannot: md5 needs
//! the password or its md5 hash).

use super::{constant_time_eq, AuthError, Secret};
use ::md5::{Digest, Md5};

/// The 4-byte salt for AuthenticationMD5Password. Fresh per login, so a captured response
/// cannot be replayed.
pub fn new_salt() -> [u8; 4] {
    let mut salt = [0u8; 4];
    rand::fill(&mut salt);
    salt
}

/// Checks a PasswordMessage body (without the trailing NUL)
/// "md5" + hex(md5(hex(md5(password+user)) + salt)) against the secret.
///
/// Anything that is not the expected string, including garbage, is a wrong password, as in
/// PostgreSQL (which just compares the strings), so the client sees 28P01.
pub fn verify(
    user: &str,
    secret: &Secret,
    salt: [u8; 4],
    response: &[u8],
) -> Result<(), AuthError> {
    let user_hash = match secret {
        Secret::Plain { password, .. } => hex_md5(&[password.as_bytes(), user.as_bytes()]),
        Secret::Md5(hash) => *hash,
        Secret::Scram(_) => return Err(AuthError::Md5WithScramSecret),
    };
    let mut expected = [0u8; 35];
    expected[..3].copy_from_slice(b"md5");
    expected[3..].copy_from_slice(&hex_md5(&[&user_hash, &salt]));
    if constant_time_eq(response, &expected) {
        Ok(())
    } else {
        Err(AuthError::WrongPassword)
    }
}

/// Lowercase hex of md5 over the concatenated parts, the only form PostgreSQL's md5
/// exchange ever uses.
fn hex_md5(parts: &[&[u8]]) -> [u8; 32] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digest = parts
        .iter()
        .fold(Md5::new(), |md5, part| md5.chain_update(part))
        .finalize();
    let mut hex = [0u8; 32];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(digest.iter()) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::md5_hash;

    const SALT: [u8; 4] = [0x2a, 0x3d, 0x8f, 0xe0];

    #[test]
    fn known_vector_is_accepted_with_plain_secret() {
        // The vector postgres-protocol's own tests pin down.
        let response = md5_hash(b"md5_user", b"password", SALT);
        assert_eq!(response, "md562af4dd09bbb41884907a838a3233294");
        let secret = Secret::parse("password").unwrap();
        verify("md5_user", &secret, SALT, response.as_bytes()).unwrap();
    }

    #[test]
    fn stored_md5_hash_accepts_the_right_password() {
        let secret = Secret::parse(&postgres_protocol::password::md5(b"hunter2", "alice")).unwrap();
        let response = md5_hash(b"alice", b"hunter2", SALT);
        verify("alice", &secret, SALT, response.as_bytes()).unwrap();
    }

    #[test]
    fn wrong_password_is_a_password_failure() {
        for secret in [
            Secret::parse("hunter2").unwrap(),
            Secret::parse(&postgres_protocol::password::md5(b"hunter2", "alice")).unwrap(),
        ] {
            let response = md5_hash(b"alice", b"hunter3", SALT);
            let err = verify("alice", &secret, SALT, response.as_bytes()).unwrap_err();
            assert!(err.is_password_failure(), "{err:?}");
        }
    }

    #[test]
    fn response_for_another_user_or_salt_fails() {
        let secret = Secret::parse("hunter2").unwrap();
        let for_bob = md5_hash(b"bob", b"hunter2", SALT);
        assert!(verify("alice", &secret, SALT, for_bob.as_bytes()).is_err());
        let old_salt = md5_hash(b"alice", b"hunter2", [1, 2, 3, 4]);
        assert!(verify("alice", &secret, SALT, old_salt.as_bytes()).is_err());
    }

    #[test]
    fn scram_only_secret_cannot_do_md5() {
        let secret =
            Secret::parse(&postgres_protocol::password::scram_sha_256(b"hunter2")).unwrap();
        let response = md5_hash(b"alice", b"hunter2", SALT);
        let err = verify("alice", &secret, SALT, response.as_bytes()).unwrap_err();
        assert!(matches!(err, AuthError::Md5WithScramSecret));
        assert!(err.is_password_failure());
    }

    #[test]
    fn garbage_responses_are_wrong_passwords() {
        let secret = Secret::parse("hunter2").unwrap();
        let right = md5_hash(b"alice", b"hunter2", SALT);
        let upper = right.to_uppercase();
        let huge = vec![b'a'; 1 << 20];
        let garbage: [&[u8]; 7] = [
            b"",
            b"md5",
            &right.as_bytes()[..34],
            &[right.as_bytes(), b"0"].concat(),
            upper.as_bytes(),
            &[0xff; 35],
            &huge,
        ];
        for response in garbage {
            let err = verify("alice", &secret, SALT, response).unwrap_err();
            assert!(err.is_password_failure(), "{err:?}");
        }
    }

    #[test]
    fn salts_differ_between_logins() {
        let salts: Vec<[u8; 4]> = (0..4).map(|_| new_salt()).collect();
        assert!(salts.windows(2).any(|pair| pair[0] != pair[1]));
    }
}
