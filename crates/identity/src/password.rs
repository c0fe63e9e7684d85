//! Device passwords and bearer-token digests.
//!
//! A device password is stored as an argon2id PHC string: the cost parameters travel inside
//! the string, so raising them later leaves old hashes verifiable. The cost is moderate on
//! purpose: the broker verifies a password on every MQTT CONNECT, and a reconnect storm of a
//! whole fleet must not turn into minutes of CPU. fleetcmd-generated passwords carry 192 bits
//! of entropy, so the hash guards user-chosen ones and leaked files, not guessing over the wire.
//!
//! Bearer tokens in policy files are stored as a plain SHA-256 digest instead: they are long
//! random strings, which no dictionary or brute force reaches, so a slow hash would only cost
//! every API call time and buy nothing.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};
use crate::util::{random_bytes, sha256_hex};

/// argon2id memory cost in KiB (4 MiB), iterations and lanes. Measured on the 2-core build
/// machines (release build, one core per verify): 3.6 ms per verify when idle, 5 ms while the
/// other core compiles; one iteration fewer halves that, one more adds half again.
pub const ARGON2_MEMORY_KIB: u32 = 4096;
pub const ARGON2_ITERATIONS: u32 = 2;
pub const ARGON2_LANES: u32 = 1;

fn argon2() -> Argon2<'static> {
    // The constants are within argon2's limits, which the unit test below pins.
    let params =
        Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_LANES, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A new random password: 24 bytes (192 bits) from the OS, URL-safe base64 without padding
/// (32 characters), safe in MQTT, shell and URLs alike.
pub fn generate() -> Result<String> {
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<24>()?))
}

/// The argon2id PHC string of `password`, with a fresh 128-bit salt. CPU-bound for a few
/// milliseconds: call it from `spawn_blocking` on an async runtime.
pub fn hash(password: &str) -> Result<String> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()?)
        .map_err(|e| Error::invalid("password salt", e))?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::invalid("password", e))
}

/// Whether `password` matches the PHC string `hash`. The comparison of the derived key is
/// constant-time (the argon2 crate compares with `subtle`); an unparsable hash matches
/// nothing. Uses the parameters stored in `hash`, not the current constants. CPU-bound like
/// [`hash`].
pub fn verify(hash: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// The digest a bearer token is stored as: lowercase hex SHA-256.
pub fn token_digest(token: &str) -> String {
    sha256_hex(token.as_bytes())
}

/// Whether the presented token's digest equals `digest` (hex, either case), compared in
/// constant time so the comparison leaks nothing about how much of the digest matched.
pub fn token_matches(digest: &str, presented: &str) -> bool {
    let expected = digest.trim().to_ascii_lowercase();
    let actual = token_digest(presented);
    // Lengths are public (64 hex digits); only the contents must not leak.
    expected.len() == actual.len() && bool::from(expected.as_bytes().ct_eq(actual.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_parameters_are_accepted_by_argon2() {
        let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_LANES, None);
        assert!(params.is_ok(), "{params:?}");
    }

    #[test]
    fn generated_passwords_are_long_url_safe_and_distinct() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }

    #[test]
    fn hash_then_verify() {
        let h = hash("s3cret-device-pass").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=4096,t=2,p=1$"), "{h}");
        assert!(verify(&h, "s3cret-device-pass"));
        assert!(!verify(&h, "s3cret-device-pasS"));
        assert!(!verify(&h, ""));
        assert!(!verify("not a phc string", "s3cret-device-pass"));
        // A fresh salt each time: equal passwords do not hash alike.
        assert_ne!(h, hash("s3cret-device-pass").unwrap());
    }

    #[test]
    fn hashes_with_other_parameters_still_verify() {
        let params = Params::new(8192, 2, 1, None).unwrap();
        let salt = SaltString::encode_b64(&[9u8; 16]).unwrap();
        let old = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"older", &salt)
            .unwrap()
            .to_string();
        assert!(verify(&old, "older"));
        assert!(!verify(&old, "newer"));
    }

    #[test]
    fn token_digests_match_only_their_token() {
        let d = token_digest("tok-123");
        assert_eq!(d.len(), 64);
        assert_eq!(
            token_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(token_matches(&d, "tok-123"));
        assert!(token_matches(&d.to_ascii_uppercase(), "tok-123"));
        assert!(!token_matches(&d, "tok-124"));
        assert!(!token_matches(&d[..63], "tok-123"));
        assert!(!token_matches("", ""));
    }
}
