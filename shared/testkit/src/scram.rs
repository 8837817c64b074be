//! The client side of SCRAM (RFC 5802 §3, §7; RFC 7677), sans-IO: the messages a client
//! sends, the checks it makes on the server's (the nonce extends ours; the server signature
//! proves the server knows the keys). The benchmark logs in with it; the tests check the
//! farm's SCRAM with it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use jabberfarm_proto::scram::{ScramHash, h, hmac};

/// A server message that does not follow RFC 5802.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramError(pub String);

impl std::fmt::Display for ScramError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScramError {}

type Result<T> = std::result::Result<T, ScramError>;

/// The keys a client derives from the password (RFC 5802 §3).
pub struct ClientKeys {
    pub client_key: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl ClientKeys {
    /// `SaltedPassword = Hi(password, salt, i)`, then ClientKey, StoredKey, ServerKey.
    /// CPU-heavy by design: call from a blocking thread.
    pub fn derive(hash: ScramHash, password: &str, salt: &[u8], iterations: u32) -> ClientKeys {
        let mut salted = vec![0u8; hash.output_len()];
        match hash {
            ScramHash::Sha1 => pbkdf2::pbkdf2_hmac::<sha1::Sha1>(
                password.as_bytes(),
                salt,
                iterations,
                &mut salted,
            ),
            ScramHash::Sha256 => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(
                password.as_bytes(),
                salt,
                iterations,
                &mut salted,
            ),
        }
        let client_key = hmac(hash, &salted, b"Client Key");
        ClientKeys {
            stored_key: h(hash, &client_key),
            client_key,
            server_key: hmac(hash, &salted, b"Server Key"),
        }
    }
}

/// `saslname` of RFC 5802 §5.1: `=` and `,` escaped.
fn saslname(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

/// One SCRAM exchange in progress.
pub struct ScramClient {
    pub hash: ScramHash,
    client_first_bare: String,
    nonce: String,
}

/// What the server-first-message says.
pub struct ServerFirst {
    pub salt: Vec<u8>,
    pub iterations: u32,
    nonce: String,
    raw: String,
}

impl ScramClient {
    pub fn new(hash: ScramHash, user: &str) -> ScramClient {
        let bytes: [u8; 18] = rand::random();
        let nonce = B64.encode(bytes);
        ScramClient {
            hash,
            client_first_bare: format!("n={},r={nonce}", saslname(user)),
            nonce,
        }
    }

    /// client-first-message: no channel binding, no authzid (`n,,`).
    pub fn first_message(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Parse server-first-message (`r=...,s=...,i=...`); the nonce must extend ours.
    pub fn parse_server_first(&self, data: &[u8]) -> Result<ServerFirst> {
        let bad = |what: &str| ScramError(format!("SCRAM server-first-message: {what}"));
        let raw = std::str::from_utf8(data).map_err(|_| bad("not UTF-8"))?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for part in raw.split(',') {
            match part.split_once('=') {
                Some(("r", v)) => nonce = Some(v.to_owned()),
                Some(("s", v)) => salt = Some(B64.decode(v).map_err(|_| bad("salt"))?),
                Some(("i", v)) => iterations = Some(v.parse::<u32>().map_err(|_| bad("i"))?),
                Some(("m", _)) => return Err(bad("mandatory extension")),
                _ => {}
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err(bad("r, s or i missing"));
        };
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(bad("the server nonce does not extend ours"));
        }
        Ok(ServerFirst {
            salt,
            iterations,
            nonce,
            raw: raw.to_owned(),
        })
    }

    /// client-final-message and the server signature we expect in `v=`.
    pub fn final_message(&self, sf: &ServerFirst, keys: &ClientKeys) -> (String, Vec<u8>) {
        // c=biws is base64("n,,").
        let without_proof = format!("c=biws,r={}", sf.nonce);
        let auth_message = format!("{},{},{without_proof}", self.client_first_bare, sf.raw);
        let signature = hmac(self.hash, &keys.stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = keys
            .client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_sig = hmac(self.hash, &keys.server_key, auth_message.as_bytes());
        (
            format!("{without_proof},p={}", B64.encode(proof)),
            server_sig,
        )
    }

    /// Check `v=ServerSignature` of server-final-message (RFC 5802 §3: the client
    /// authenticates the server).
    pub fn verify_server_final(data: &[u8], expected: &[u8]) -> Result<()> {
        let text = std::str::from_utf8(data).unwrap_or("");
        match text.strip_prefix("v=").map(|v| B64.decode(v)) {
            Some(Ok(sig)) if sig == expected => Ok(()),
            _ => Err(ScramError(format!(
                "SCRAM server-final-message does not prove the server knows the keys: {text:?}"
            ))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// RFC 7677 §3 example (SCRAM-SHA-256, user "user", password "pencil").
    #[test]
    fn rfc7677_example() {
        let c = ScramClient {
            hash: ScramHash::Sha256,
            client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO".into(),
            nonce: "rOprNGfwEbeRWgbNEkqO".into(),
        };
        assert_eq!(c.first_message(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let sf = c
            .parse_server_first(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .unwrap();
        let keys = ClientKeys::derive(ScramHash::Sha256, "pencil", &sf.salt, sf.iterations);
        let (fin, server_sig) = c.final_message(&sf, &keys);
        assert_eq!(
            fin,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        ScramClient::verify_server_final(
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
            &server_sig,
        )
        .unwrap();
        assert!(ScramClient::verify_server_final(b"v=AAAA", &server_sig).is_err());
    }

    #[test]
    fn server_nonce_must_extend_ours() {
        let c = ScramClient::new(ScramHash::Sha1, "a,b=c");
        assert!(c.first_message().starts_with("n,,n=a=2Cb=3Dc,r="));
        assert!(
            c.parse_server_first(b"r=other,s=QSXCR+Q6sek8bf92,i=4096")
                .is_err()
        );
    }
}
