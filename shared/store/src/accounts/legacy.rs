//! Password hashes of existing user tables (`storage.mysql.password_format`): argon2, bcrypt and
//! `{SSHA}`. Sans-IO and CPU-heavy by design: call from `spawn_blocking`.
//!
//! Such a hash can only check a password given in clear, so a farm on one offers SASL PLAIN
//! (over TLS) and no SCRAM: SCRAM needs the salted SCRAM keys (RFC 5802 §3), which cannot be
//! computed from an argon2 or bcrypt hash. `docs/backends.md` says how to move to SCRAM keys.

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use jabberfarm_config::PasswordFormat;

/// bcrypt cost of the decoy hash (see [`decoy`]); 10 is the common default of PHP and others.
const DECOY_BCRYPT_COST: u32 = 10;

/// Whether `password` matches `stored` (a hash in `format`). `Err` names what is wrong with a
/// stored value that is not a hash in that format (a corrupt row, or the wrong format
/// configured): the caller reports the backend as broken, not the password as wrong.
pub fn verify(format: PasswordFormat, stored: &str, password: &str) -> Result<bool, String> {
    let stored = stored.trim();
    match format {
        PasswordFormat::Scram => Err("SCRAM keys are not a legacy hash".to_owned()),
        PasswordFormat::Argon2 => {
            let hash = argon2::PasswordHash::new(stored)
                .map_err(|e| format!("not an argon2 PHC string: {e}"))?;
            if !hash.algorithm.as_str().starts_with("argon2") {
                return Err(format!("{} is not an argon2 variant", hash.algorithm));
            }
            match Argon2::default().verify_password(password.as_bytes(), &hash) {
                Ok(()) => Ok(true),
                Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
                Err(e) => Err(format!("argon2: {e}")),
            }
        }
        PasswordFormat::Bcrypt => {
            bcrypt::verify(password, stored).map_err(|e| format!("not a bcrypt hash: {e}"))
        }
        PasswordFormat::Ssha => verify_ssha(stored, password),
    }
}

/// `{SSHA}`, `{SSHA256}`, `{SSHA512}` (RFC 2307 style, as OpenLDAP's `slappasswd` writes them):
/// base64 of `H(password ‖ salt) ‖ salt`.
fn verify_ssha(stored: &str, password: &str) -> Result<bool, String> {
    let (scheme, rest) = stored
        .strip_prefix('{')
        .and_then(|s| s.split_once('}'))
        .ok_or("not an {SSHA} value (no {SCHEME} prefix)")?;
    let len = match scheme.to_ascii_uppercase().as_str() {
        "SSHA" => 20,
        "SSHA256" => 32,
        "SSHA512" => 64,
        other => return Err(format!("unsupported scheme {{{other}}}")),
    };
    let raw = B64
        .decode(rest)
        .map_err(|e| format!("{{{scheme}}} value is not base64: {e}"))?;
    if raw.len() <= len {
        return Err(format!("{{{scheme}}} value has no salt"));
    }
    let (digest, salt) = raw.split_at(len);
    let mut input = password.as_bytes().to_vec();
    input.extend_from_slice(salt);
    let computed = match len {
        20 => Sha1::digest(&input).to_vec(),
        32 => Sha256::digest(&input).to_vec(),
        _ => Sha512::digest(&input).to_vec(),
    };
    Ok(computed.ct_eq(digest).into())
}

/// A valid hash of a random password in `format`: checked instead of a missing user's, so an
/// unknown user costs what a wrong password costs and cannot be told apart by timing.
pub fn decoy(format: PasswordFormat) -> String {
    let password: [u8; 16] = rand::random();
    let password = B64.encode(password);
    let salt: [u8; 16] = rand::random();
    match format {
        PasswordFormat::Argon2 => Argon2::default()
            .hash_password_with_salt(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default(),
        PasswordFormat::Bcrypt => bcrypt::hash_with_salt(&password, DECOY_BCRYPT_COST, salt)
            .map(|h| h.to_string())
            .unwrap_or_default(),
        PasswordFormat::Ssha | PasswordFormat::Scram => {
            let mut raw = Sha1::new()
                .chain_update(password.as_bytes())
                .chain_update(salt)
                .finalize()
                .to_vec();
            raw.extend_from_slice(&salt);
            format!("{{SSHA}}{}", B64.encode(raw))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Values made by other implementations for the password "secret":
    /// `slappasswd -h {SSHA} -s secret` (OpenLDAP), Perl's `crypt` with a `$2b$`/`$2y$` salt
    /// (libxcrypt's bcrypt), and `slappasswd -o module-load=argon2 -h {ARGON2}` (libargon2).
    const SSHA: &str = "{SSHA}zpjDGbAbUAIVw0xuF8p4MXGZZ1Elv2D3";
    const BCRYPT_2B: &str = "$2b$10$abcdefghijklmnopqrstuuqflPDzB6gcMhKa1rZqKiun2YGL5sa2u";
    const BCRYPT_2Y: &str = "$2y$10$abcdefghijklmnopqrstuuqflPDzB6gcMhKa1rZqKiun2YGL5sa2u";
    const ARGON2I: &str = "$argon2i$v=19$m=4096,t=3,p=1$nxYT7gowl76D3QOmrkua/w$\
                           JajTBAUQ4uND7YExRYkO7wYCXl1EPjF4aAhuv4rAI3A";

    #[test]
    fn ssha_family() {
        // Built here from the definition, then checked by the parser.
        let salt = b"saltsalt";
        let mut raw = Sha1::digest(b"secretsaltsalt").to_vec();
        raw.extend_from_slice(salt);
        let ssha = format!("{{SSHA}}{}", B64.encode(&raw));
        assert_eq!(verify(PasswordFormat::Ssha, &ssha, "secret"), Ok(true));
        assert_eq!(verify(PasswordFormat::Ssha, &ssha, "Secret"), Ok(false));
        let mut raw = Sha512::digest(b"pwNaCl").to_vec();
        raw.extend_from_slice(b"NaCl");
        let ssha512 = format!("{{ssha512}}{}", B64.encode(&raw));
        assert_eq!(verify(PasswordFormat::Ssha, &ssha512, "pw"), Ok(true));
        assert_eq!(verify(PasswordFormat::Ssha, &ssha512, "pW"), Ok(false));
        for bad in ["secret", "{MD5}abc", "{SSHA}!!!", "{SSHA}AAAA", "{SSHA"] {
            assert!(
                verify(PasswordFormat::Ssha, bad, "secret").is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn known_values_from_other_tools() {
        for (format, stored) in [
            (PasswordFormat::Ssha, SSHA),
            (PasswordFormat::Bcrypt, BCRYPT_2B),
            (PasswordFormat::Bcrypt, BCRYPT_2Y),
            (PasswordFormat::Argon2, ARGON2I),
        ] {
            assert_eq!(verify(format, stored, "secret"), Ok(true), "{stored}");
            assert_eq!(verify(format, stored, "secreT"), Ok(false), "{stored}");
            assert_eq!(verify(format, stored, ""), Ok(false), "{stored}");
        }
    }

    #[test]
    fn round_trips_and_wrong_formats() {
        for format in [
            PasswordFormat::Argon2,
            PasswordFormat::Bcrypt,
            PasswordFormat::Ssha,
        ] {
            // A decoy is a valid hash of some other password.
            let d = decoy(format);
            assert_eq!(verify(format, &d, "secret"), Ok(false), "{format:?} {d}");
        }
        let argon = Argon2::default()
            .hash_password_with_salt(b"hunter2", b"0123456789abcdef")
            .unwrap()
            .to_string();
        assert_eq!(verify(PasswordFormat::Argon2, &argon, "hunter2"), Ok(true));
        assert_eq!(verify(PasswordFormat::Argon2, &argon, "hunter3"), Ok(false));
        let bc = bcrypt::hash_with_salt("hunter2", 4, *b"0123456789abcdef")
            .unwrap()
            .to_string();
        assert_eq!(verify(PasswordFormat::Bcrypt, &bc, "hunter2"), Ok(true));
        assert_eq!(verify(PasswordFormat::Bcrypt, &bc, "hunter3"), Ok(false));
        // A value of another format is an error (misconfiguration), never "wrong password".
        assert!(verify(PasswordFormat::Argon2, &bc, "hunter2").is_err());
        assert!(verify(PasswordFormat::Bcrypt, &argon, "hunter2").is_err());
        assert!(verify(PasswordFormat::Ssha, &argon, "hunter2").is_err());
        assert!(verify(PasswordFormat::Argon2, "", "x").is_err());
        assert!(verify(PasswordFormat::Scram, "x", "x").is_err());
    }
}
