//! oauth2's hashed client secrets, as Kong 3.9 stores them (`hash_secret = true`): PBKDF2 with
//! HMAC-SHA-512, 10,000 iterations, a 16-byte salt and a 32-byte hash, written as a PHC string
//! `$pbkdf2-sha512$i=10000,l=32$<salt>$<hash>` (base64 without padding). A hash Kong wrote
//! verifies here, and one written here verifies in Kong.

use std::num::NonZeroU32;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use rand::RngCore;
use ring::pbkdf2;

const ITERATIONS: u32 = 10_000;
const HASH_LEN: usize = 32;
const SALT_LEN: usize = 16;

/// Whether `s` is a PHC string (a secret hashed already).
pub fn is_phc(s: &str) -> bool {
    s.starts_with("$pbkdf2-") || s.starts_with("$argon2") || s.starts_with("$2b$")
}

/// The PHC string of `secret`, with a fresh salt.
pub fn hash(secret: &str) -> String {
    let mut salt = [0u8; SALT_LEN];
    rand::thread_rng().fill_bytes(&mut salt);
    let mut out = [0u8; HASH_LEN];
    let iterations = NonZeroU32::new(ITERATIONS).unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA512,
        iterations,
        &salt,
        secret.as_bytes(),
        &mut out,
    );
    format!(
        "$pbkdf2-sha512$i={ITERATIONS},l={HASH_LEN}${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(out)
    )
}

/// Whether `secret` is the one `phc` was made from (PBKDF2 with SHA-1, -256, -384 or -512).
pub fn verify(secret: &str, phc: &str) -> bool {
    let parts: Vec<&str> = phc.split('$').collect();
    let [_, id, params, salt, hash] = parts[..] else {
        return false;
    };
    let alg = match id {
        "pbkdf2-sha512" => pbkdf2::PBKDF2_HMAC_SHA512,
        "pbkdf2-sha384" => pbkdf2::PBKDF2_HMAC_SHA384,
        "pbkdf2-sha256" => pbkdf2::PBKDF2_HMAC_SHA256,
        "pbkdf2-sha1" | "pbkdf2" => pbkdf2::PBKDF2_HMAC_SHA1,
        _ => return false,
    };
    let mut iterations = None;
    for p in params.split(',') {
        if let Some(("i", v)) = p.split_once('=') {
            iterations = v.trim().parse::<u32>().ok().and_then(NonZeroU32::new);
        }
    }
    let decode = |s: &str| STANDARD_NO_PAD.decode(s).or_else(|_| STANDARD.decode(s));
    let (Some(iterations), Ok(salt), Ok(hash)) = (iterations, decode(salt), decode(hash)) else {
        return false;
    };
    pbkdf2::verify(alg, iterations, &salt, secret.as_bytes(), &hash).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_others_do_not() {
        let h = hash("s3cret");
        assert!(h.starts_with("$pbkdf2-sha512$i=10000,l=32$"), "{h}");
        assert!(is_phc(&h));
        assert!(verify("s3cret", &h));
        assert!(!verify("other", &h));
        assert!(!verify("s3cret", "s3cret"));
        // Made elsewhere: Python's hashlib.pbkdf2_hmac('sha512', b'kong', bytes(16), 10000, 32),
        // in Kong's format.
        let phc = "$pbkdf2-sha512$i=10000,l=32$AAAAAAAAAAAAAAAAAAAAAA$doO52N1hAMkO2d22f4Ut2P/WW7C+Te9A7NfeZdwUZjY";
        assert!(verify("kong", phc));
    }
}
