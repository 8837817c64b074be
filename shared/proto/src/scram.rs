//! SCRAM credentials (RFC 5802 §3, RFC 7677): what a server stores instead of a password.
//!
//! The store keeps `StoredKey` and `ServerKey` per hash; a SASL exchange checks a client proof
//! against `StoredKey` and signs with `ServerKey`. Nothing here touches sockets or the store.

use std::fmt;

use hmac::{EagerHash, Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The hash a SCRAM mechanism is built on (`SCRAM-SHA-1`, `SCRAM-SHA-256`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScramHash {
    Sha1,
    Sha256,
}

impl ScramHash {
    /// Output length of the hash in bytes (20 or 32): the length of every key and proof.
    pub fn output_len(self) -> usize {
        match self {
            Self::Sha1 => <Sha1 as Digest>::output_size(),
            Self::Sha256 => <Sha256 as Digest>::output_size(),
        }
    }
}

/// SCRAM keys for one user and one hash. Knowing them does not reveal the password, but they
/// are still secrets (`ServerKey` lets one impersonate the server), so `Debug` hides them.
#[derive(Clone)]
pub struct ScramCredentials {
    pub hash: ScramHash,
    pub salt: Vec<u8>,
    pub iterations: u32,
    /// `H(ClientKey)`: checks a client proof.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`: signs the server-final message.
    pub server_key: Vec<u8>,
}

impl fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredentials")
            .field("hash", &self.hash)
            .field("salt_len", &self.salt.len())
            .field("iterations", &self.iterations)
            .field("stored_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

impl ScramCredentials {
    /// RFC 5802 §3:
    /// `SaltedPassword = Hi(password, salt, i)` (PBKDF2 with HMAC),
    /// `ClientKey = HMAC(SaltedPassword, "Client Key")`, `StoredKey = H(ClientKey)`,
    /// `ServerKey = HMAC(SaltedPassword, "Server Key")`.
    ///
    /// CPU-heavy by design (`iterations` rounds): call it from `spawn_blocking`.
    pub fn derive(hash: ScramHash, password: &str, salt: &[u8], iterations: u32) -> Self {
        // TODO: SASLprep (RFC 4013, via RFC 5802 §2.2 "Normalize") is not applied yet; the
        // password's UTF-8 bytes are used as given, which matches SASLprep for ASCII passwords.
        let salted = salted_password(hash, password.as_bytes(), salt, iterations);
        let client_key = hmac(hash, &salted, b"Client Key");
        Self {
            hash,
            salt: salt.to_vec(),
            iterations,
            stored_key: h(hash, &client_key),
            server_key: hmac(hash, &salted, b"Server Key"),
        }
    }

    /// Keys as a store keeps them, checked: an iteration count in `1..=u32::MAX` and keys of
    /// the hash's length. `Err` says what is wrong (a corrupt row).
    pub fn from_stored(
        hash: ScramHash,
        salt: Vec<u8>,
        iterations: i64,
        stored_key: Vec<u8>,
        server_key: Vec<u8>,
    ) -> Result<Self, String> {
        let iterations = u32::try_from(iterations)
            .ok()
            .filter(|&i| i > 0)
            .ok_or_else(|| format!("iteration count {iterations} out of range"))?;
        let len = hash.output_len();
        if stored_key.len() != len || server_key.len() != len {
            return Err(format!("{hash:?} keys are not {len} bytes long"));
        }
        Ok(Self {
            hash,
            salt,
            iterations,
            stored_key,
            server_key,
        })
    }

    /// Whether `password` yields these keys (for SASL PLAIN and `jabber:iq:auth`).
    /// Constant-time comparison. CPU-heavy: call it from `spawn_blocking`.
    pub fn verify_plain(&self, password: &str) -> bool {
        let other = Self::derive(self.hash, password, &self.salt, self.iterations);
        let stored = other.stored_key.ct_eq(&self.stored_key);
        let server = other.server_key.ct_eq(&self.server_key);
        (stored & server).into()
    }

    /// RFC 5802 §3 server side: `ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage)`,
    /// then `H(ClientKey)` must equal `StoredKey`. Cheap (no PBKDF2); constant-time compare.
    pub fn verify_proof(&self, auth_message: &[u8], client_proof: &[u8]) -> bool {
        let signature = hmac(self.hash, &self.stored_key, auth_message);
        if client_proof.len() != signature.len() {
            return false;
        }
        let client_key: Vec<u8> = client_proof
            .iter()
            .zip(&signature)
            .map(|(p, s)| p ^ s)
            .collect();
        h(self.hash, &client_key).ct_eq(&self.stored_key).into()
    }

    /// RFC 5802 §3: `ServerSignature = HMAC(ServerKey, AuthMessage)` (the `v=` of server-final).
    pub fn server_signature(&self, auth_message: &[u8]) -> Vec<u8> {
        hmac(self.hash, &self.server_key, auth_message)
    }
}

/// `HMAC(key, data)` with the given hash (RFC 2104).
pub fn hmac(hash: ScramHash, key: &[u8], data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha1 => hmac_with::<Sha1>(key, data),
        ScramHash::Sha256 => hmac_with::<Sha256>(key, data),
    }
}

/// `H(data)`: the plain hash.
pub fn h(hash: ScramHash, data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha1 => Sha1::digest(data).to_vec(),
        ScramHash::Sha256 => Sha256::digest(data).to_vec(),
    }
}

/// `Hi(password, salt, i)` of RFC 5802 §2.2, which is PBKDF2 (RFC 8018) with HMAC as PRF and
/// one output block.
fn salted_password(hash: ScramHash, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0u8; hash.output_len()];
    match hash {
        ScramHash::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out),
        ScramHash::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out),
    }
    out
}

fn hmac_with<D: EagerHash>(key: &[u8], data: &[u8]) -> Vec<u8> {
    #[allow(
        clippy::expect_used,
        reason = "HMAC accepts keys of any length (RFC 2104 §2: long keys are hashed first)"
    )]
    let mut mac = <Hmac<D> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;

    /// One RFC example exchange: the messages that make up `AuthMessage` and the values the
    /// RFC shows on the wire.
    struct Example {
        hash: ScramHash,
        password: &'static str,
        salt_b64: &'static str,
        iterations: u32,
        client_first_bare: &'static str,
        server_first: &'static str,
        client_final_without_proof: &'static str,
        proof_b64: &'static str,
        server_signature_b64: &'static str,
    }

    impl Example {
        fn auth_message(&self) -> String {
            format!(
                "{},{},{}",
                self.client_first_bare, self.server_first, self.client_final_without_proof
            )
        }

        fn check(&self) {
            let salt = B64.decode(self.salt_b64).unwrap();
            let creds = ScramCredentials::derive(self.hash, self.password, &salt, self.iterations);
            assert_eq!(creds.stored_key.len(), self.hash.output_len());
            assert_eq!(creds.server_key.len(), self.hash.output_len());
            let auth = self.auth_message();
            let proof = B64.decode(self.proof_b64).unwrap();

            // StoredKey: the RFC's proof XOR ClientSignature is ClientKey; H(ClientKey) = StoredKey.
            assert!(creds.verify_proof(auth.as_bytes(), &proof));
            let client_signature = hmac(self.hash, &creds.stored_key, auth.as_bytes());
            let client_key: Vec<u8> = proof
                .iter()
                .zip(&client_signature)
                .map(|(a, b)| a ^ b)
                .collect();
            assert_eq!(h(self.hash, &client_key), creds.stored_key);

            // ServerKey: HMAC(ServerKey, AuthMessage) is the RFC's server signature.
            assert_eq!(
                B64.encode(creds.server_signature(auth.as_bytes())),
                self.server_signature_b64
            );

            // Negative cases: one flipped bit, a truncated proof, another password.
            let mut bad = proof.clone();
            bad[0] ^= 1;
            assert!(!creds.verify_proof(auth.as_bytes(), &bad));
            assert!(!creds.verify_proof(auth.as_bytes(), &proof[1..]));
            assert!(!creds.verify_proof(b"another auth message", &proof));
            let other = ScramCredentials::derive(self.hash, "pencil2", &salt, self.iterations);
            assert!(!other.verify_proof(auth.as_bytes(), &proof));

            assert!(creds.verify_plain(self.password));
            assert!(!creds.verify_plain("Pencil"));
            assert!(!creds.verify_plain(""));
        }
    }

    /// RFC 5802 §5.
    #[test]
    fn rfc5802_sha1_example() {
        Example {
            hash: ScramHash::Sha1,
            password: "pencil",
            salt_b64: "QSXCR+Q6sek8bf92",
            iterations: 4096,
            client_first_bare: "n=user,r=fyko+d2lbbFgONRv9qkxdawL",
            server_first: "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
            client_final_without_proof: "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j",
            proof_b64: "v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            server_signature_b64: "rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        }
        .check();
    }

    /// RFC 7677 §3.
    #[test]
    fn rfc7677_sha256_example() {
        Example {
            hash: ScramHash::Sha256,
            password: "pencil",
            salt_b64: "W22ZaJ0SNY7soEsUEjb6gQ==",
            iterations: 4096,
            client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO",
            server_first: "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                           s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            client_final_without_proof: "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            proof_b64: "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            server_signature_b64: "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        }
        .check();
    }

    /// RFC 2202 §3 test case 2 and RFC 4231 §4.3 test case 2 ("Jefe").
    #[test]
    fn hmac_known_answers() {
        let data = b"what do ya want for nothing?";
        assert_eq!(
            hex::encode(hmac(ScramHash::Sha1, b"Jefe", data)),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        assert_eq!(
            hex::encode(hmac(ScramHash::Sha256, b"Jefe", data)),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // A key longer than the block size is hashed first, never rejected.
        assert_eq!(hmac(ScramHash::Sha256, &[0xaa; 131], data).len(), 32);
    }

    #[test]
    fn debug_hides_keys() {
        let creds = ScramCredentials::derive(ScramHash::Sha1, "pencil", b"salt", 1);
        let text = format!("{creds:?}");
        assert!(text.contains("<redacted>"));
        assert!(!text.contains(&format!("{:?}", creds.stored_key)));
    }
}
