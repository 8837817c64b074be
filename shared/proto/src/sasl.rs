//! Server side of SASL (RFC 6120 §6): PLAIN (RFC 4616) and SCRAM-SHA-1 / SCRAM-SHA-256
//! (RFC 5802, RFC 7677) against stored SCRAM keys. Sans-IO: bytes in, bytes out.
//!
//! The username is readable from the first message of every mechanism, which is what the
//! master needs to pick the slave without ever seeing a password (DESIGN.md D1).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use subtle::ConstantTimeEq;

use crate::scram::{ScramCredentials, ScramHash, h, hmac};

/// The mechanisms we offer, strongest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    ScramSha256,
    ScramSha1,
    Plain,
}

impl Mechanism {
    pub const ALL: [Mechanism; 3] = [
        Mechanism::ScramSha256,
        Mechanism::ScramSha1,
        Mechanism::Plain,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::Plain => "PLAIN",
        }
    }

    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    pub fn scram_hash(self) -> Option<ScramHash> {
        match self {
            Mechanism::ScramSha256 => Some(ScramHash::Sha256),
            Mechanism::ScramSha1 => Some(ScramHash::Sha1),
            Mechanism::Plain => None,
        }
    }
}

/// SASL failure conditions (RFC 6120 §6.5).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("malformed request: {0}")]
    MalformedRequest(&'static str),
    #[error("incorrect encoding")]
    IncorrectEncoding,
    #[error("invalid authorization identity")]
    InvalidAuthzid,
    #[error("not authorized")]
    NotAuthorized,
}

impl SaslError {
    /// The element name of the `<failure/>` condition.
    pub fn condition(&self) -> &'static str {
        match self {
            SaslError::MalformedRequest(_) => "malformed-request",
            SaslError::IncorrectEncoding => "incorrect-encoding",
            SaslError::InvalidAuthzid => "invalid-authzid",
            SaslError::NotAuthorized => "not-authorized",
        }
    }
}

/// Decode the base64 payload of `<auth/>`/`<response/>` (`=` is the empty response).
pub fn decode_payload(text: &str) -> Result<Vec<u8>, SaslError> {
    let t = text.trim();
    if t.is_empty() || t == "=" {
        return Ok(Vec::new());
    }
    B64.decode(t).map_err(|_| SaslError::IncorrectEncoding)
}

pub fn encode_payload(data: &[u8]) -> String {
    if data.is_empty() {
        "=".to_owned()
    } else {
        B64.encode(data)
    }
}

/// A parsed PLAIN message (RFC 4616 §2): `[authzid] NUL authcid NUL passwd`.
pub struct PlainMessage {
    pub authzid: String,
    pub authcid: String,
    pub password: String,
}

pub fn parse_plain(data: &[u8]) -> Result<PlainMessage, SaslError> {
    let mut parts = data.split(|b| *b == 0);
    let (Some(z), Some(c), Some(p), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::MalformedRequest(
            "PLAIN needs authzid NUL authcid NUL password",
        ));
    };
    let s = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| SaslError::IncorrectEncoding);
    let m = PlainMessage {
        authzid: s(z)?,
        authcid: s(c)?,
        password: s(p)?,
    };
    if m.authcid.is_empty() {
        return Err(SaslError::MalformedRequest("empty username"));
    }
    Ok(m)
}

/// The parts of a SCRAM client-first-message (RFC 5802 §7).
#[derive(Debug)]
pub struct ScramClientFirst {
    pub gs2_header: String,
    pub username: String,
    pub nonce: String,
    /// client-first-message-bare, needed for the AuthMessage.
    pub bare: String,
}

pub fn parse_scram_first(data: &[u8]) -> Result<ScramClientFirst, SaslError> {
    let text = std::str::from_utf8(data).map_err(|_| SaslError::IncorrectEncoding)?;
    // gs2-header = gs2-cbind-flag "," [ authzid ] ","
    let mut it = text.splitn(3, ',');
    let (Some(cbind), Some(authz), Some(bare)) = (it.next(), it.next(), it.next()) else {
        return Err(SaslError::MalformedRequest("SCRAM client-first-message"));
    };
    match cbind {
        "n" | "y" => {}
        _ if cbind.starts_with("p=") => {
            // We never offer -PLUS mechanisms.
            return Err(SaslError::MalformedRequest(
                "channel binding is not supported",
            ));
        }
        _ => {
            return Err(SaslError::MalformedRequest(
                "SCRAM gs2 channel binding flag",
            ));
        }
    }
    if !authz.is_empty() && !authz.starts_with("a=") {
        return Err(SaslError::MalformedRequest("SCRAM authzid"));
    }
    if bare.starts_with("m=") {
        return Err(SaslError::MalformedRequest("SCRAM mandatory extension"));
    }
    let mut username = None;
    let mut nonce = None;
    for attr in bare.split(',') {
        if let Some(u) = attr.strip_prefix("n=") {
            username = Some(decode_saslname(u)?);
        } else if let Some(r) = attr.strip_prefix("r=") {
            nonce = Some(r.to_owned());
        }
    }
    let (Some(username), Some(nonce)) = (username, nonce) else {
        return Err(SaslError::MalformedRequest("SCRAM needs n= and r="));
    };
    if username.is_empty()
        || nonce.is_empty()
        || !nonce.bytes().all(|b| b.is_ascii_graphic() && b != b',')
    {
        return Err(SaslError::MalformedRequest("SCRAM username or nonce"));
    }
    Ok(ScramClientFirst {
        gs2_header: format!("{cbind},{authz},"),
        username,
        nonce,
        bare: bare.to_owned(),
    })
}

/// RFC 5802 §5.1: `=2C` is `,` and `=3D` is `=`; any other `=` is an error.
fn decode_saslname(s: &str) -> Result<String, SaslError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i + 1..i + 3) {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => return Err(SaslError::MalformedRequest("bad escape in SCRAM username")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The username any mechanism's first message names (the master's whole need).
pub fn username_of(mech: Mechanism, initial: &[u8]) -> Result<String, SaslError> {
    match mech {
        Mechanism::Plain => parse_plain(initial).map(|m| m.authcid),
        _ => parse_scram_first(initial).map(|f| f.username),
    }
}

/// A SCRAM exchange after the client-first-message, holding what the final step needs.
pub struct ScramServer {
    creds: ScramCredentials,
    gs2_header: String,
    nonce: String,
    auth_message_prefix: String,
    /// The user does not exist: run the exchange on fake keys and fail at the end, so an
    /// unknown user looks exactly like a wrong password (no enumeration).
    doomed: bool,
}

impl ScramServer {
    /// Start from the parsed client-first-message and the user's keys (or, when `creds` is
    /// `None`, fake keys from [`fake_credentials`]). Returns the server-first-message.
    pub fn start(
        first: &ScramClientFirst,
        creds: Option<ScramCredentials>,
        fake: impl FnOnce() -> ScramCredentials,
    ) -> (ScramServer, Vec<u8>) {
        let doomed = creds.is_none();
        let creds = creds.unwrap_or_else(fake);
        let server_nonce: [u8; 18] = rand::random();
        let nonce = format!("{}{}", first.nonce, B64.encode(server_nonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&creds.salt),
            creds.iterations
        );
        let auth_message_prefix = format!("{},{server_first},", first.bare);
        (
            ScramServer {
                creds,
                gs2_header: first.gs2_header.clone(),
                nonce,
                auth_message_prefix,
                doomed,
            },
            server_first.into_bytes(),
        )
    }

    /// Check the client-final-message; on success returns the server-final-message.
    pub fn finish(self, data: &[u8]) -> Result<Vec<u8>, SaslError> {
        let text = std::str::from_utf8(data).map_err(|_| SaslError::IncorrectEncoding)?;
        let Some((without_proof, proof_b64)) = text.rsplit_once(",p=") else {
            return Err(SaslError::MalformedRequest("SCRAM client-final needs p="));
        };
        let mut channel = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                channel = Some(c);
            } else if let Some(r) = attr.strip_prefix("r=") {
                nonce = Some(r);
            }
        }
        let expected_channel = B64.encode(self.gs2_header.as_bytes());
        if channel != Some(expected_channel.as_str()) {
            return Err(SaslError::MalformedRequest(
                "SCRAM channel binding mismatch",
            ));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(SaslError::MalformedRequest("SCRAM nonce mismatch"));
        }
        let proof = B64
            .decode(proof_b64)
            .map_err(|_| SaslError::IncorrectEncoding)?;
        let hash = self.creds.hash;
        let auth_message = format!("{}{without_proof}", self.auth_message_prefix);
        let client_signature = hmac(hash, &self.creds.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(SaslError::NotAuthorized);
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let ok: bool = h(hash, &client_key).ct_eq(&self.creds.stored_key).into();
        if !ok || self.doomed {
            return Err(SaslError::NotAuthorized);
        }
        let server_signature = hmac(hash, &self.creds.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

/// Stable fake keys for a user that does not exist, from a keyed hash of the name: the same
/// salt every time for that name (the per-process key makes it unpredictable), the iteration
/// count real accounts get, and keys no password yields. No PBKDF2: a real user's SCRAM
/// exchange runs none either (the stored keys are read), so an unknown user's server-first
/// message comes as fast as a real one's and the name cannot be told by timing.
pub fn fake_credentials(
    hash: ScramHash,
    username: &str,
    iterations: u32,
    process_key: &[u8],
) -> ScramCredentials {
    let keyed = |label: &[u8]| {
        let mut msg = label.to_vec();
        msg.push(0);
        msg.extend_from_slice(username.as_bytes());
        let mut out = hmac(ScramHash::Sha256, process_key, &msg);
        out.truncate(hash.output_len());
        out
    };
    let salt = keyed(b"salt")[..16].to_vec();
    ScramCredentials {
        hash,
        salt,
        iterations,
        stored_key: keyed(b"stored"),
        server_key: keyed(b"server"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn plain_message() {
        let m = parse_plain(b"\0juliet\0r0m30").unwrap();
        assert_eq!(m.authcid, "juliet");
        assert_eq!(m.password, "r0m30");
        assert!(matches!(
            parse_plain(b"juliet\0pw"),
            Err(SaslError::MalformedRequest(_))
        ));
        assert!(matches!(
            parse_plain(b"\0\0pw"),
            Err(SaslError::MalformedRequest(_))
        ));
    }

    #[test]
    fn scram_first_message_rfc5802() {
        let f = parse_scram_first(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL").unwrap();
        assert_eq!(f.username, "user");
        assert_eq!(f.nonce, "fyko+d2lbbFgONRv9qkxdawL");
        assert_eq!(f.bare, "n=user,r=fyko+d2lbbFgONRv9qkxdawL");
        assert_eq!(
            parse_scram_first(b"n,,n=a=2Cb=3Dc,r=x").unwrap().username,
            "a,b=c"
        );
        assert!(parse_scram_first(b"p=tls-unique,,n=user,r=x").is_err());
        assert!(parse_scram_first(b"n,,n=a=ZZ,r=x").is_err());
        assert!(parse_scram_first(b"garbage").is_err());
    }

    /// The whole RFC 7677 §3 exchange, with the server nonce forced to the RFC's.
    #[test]
    fn scram_sha256_rfc7677_exchange() {
        let first = parse_scram_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let creds = ScramCredentials::derive(ScramHash::Sha256, "pencil", &salt, 4096);
        let (mut server, _) = ScramServer::start(&first, Some(creds), || unreachable!());
        server.nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into();
        server.auth_message_prefix = format!(
            "{},r={},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,",
            first.bare, server.nonce
        );
        let fin = server
            .finish(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        assert_eq!(
            fin,
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()
        );
    }

    #[test]
    fn scram_sha1_rfc5802_exchange_and_wrong_proof() {
        let first = parse_scram_first(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL").unwrap();
        let salt = B64.decode("QSXCR+Q6sek8bf92").unwrap();
        let creds = ScramCredentials::derive(ScramHash::Sha1, "pencil", &salt, 4096);
        let fix = |server: &mut ScramServer| {
            server.nonce = "fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j".into();
            server.auth_message_prefix = format!(
                "{},r={},s=QSXCR+Q6sek8bf92,i=4096,",
                first.bare, server.nonce
            );
        };
        let (mut server, _) = ScramServer::start(&first, Some(creds.clone()), || unreachable!());
        fix(&mut server);
        let fin = server
            .finish(b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=")
            .unwrap();
        assert_eq!(fin, b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=".to_vec());

        let (mut server, _) = ScramServer::start(&first, Some(creds.clone()), || unreachable!());
        fix(&mut server);
        assert_eq!(
            server.finish(b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=AAX8v3Bz2T0CJGbJQyF0X+HI4Ts="),
            Err(SaslError::NotAuthorized)
        );
        // An unknown user fails even with a proof that matches the fake keys' shape.
        let (mut server, _) = ScramServer::start(&first, None, || creds);
        fix(&mut server);
        assert_eq!(
            server.finish(b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn fake_keys_are_stable_per_name_and_look_like_real_ones() {
        let key = [7u8; 32];
        for hash in [ScramHash::Sha1, ScramHash::Sha256] {
            let a = fake_credentials(hash, "nobody", 4096, &key);
            let again = fake_credentials(hash, "nobody", 4096, &key);
            let other = fake_credentials(hash, "someone", 4096, &key);
            let real = ScramCredentials::derive(hash, "pw", &a.salt, 4096);
            assert_eq!(a.salt, again.salt, "same salt for the same name");
            assert_eq!(a.stored_key, again.stored_key);
            assert_ne!(a.salt, other.salt);
            assert_eq!(a.salt.len(), 16);
            assert_eq!(a.iterations, 4096);
            assert_eq!(a.stored_key.len(), real.stored_key.len());
            assert_eq!(a.server_key.len(), real.server_key.len());
            // Another process (another key) gives other salts.
            assert_ne!(
                fake_credentials(hash, "nobody", 4096, &[8u8; 32]).salt,
                a.salt
            );
        }
    }

    #[test]
    fn payload_coding() {
        assert_eq!(decode_payload("=").unwrap(), Vec::<u8>::new());
        assert_eq!(
            decode_payload("AGp1bGlldAByMG0zMA==").unwrap(),
            b"\0juliet\0r0m30"
        );
        assert_eq!(decode_payload("!!!"), Err(SaslError::IncorrectEncoding));
        assert_eq!(encode_payload(b""), "=");
    }
}
