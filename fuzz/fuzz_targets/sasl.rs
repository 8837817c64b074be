//! SASL (`shared/proto/src/sasl.rs`): the payload decoder, the PLAIN and SCRAM first-message
//! parsers, the username the master routes by, and a whole SCRAM exchange.
//!
//! Input: one flags byte, then `client-first-message`, a newline, `client-final-message`. In
//! the final message `%N` stands for the nonce the server chose (random per run, so a fuzzer
//! could never echo it otherwise) — everything else, the proof included, is the fuzzer's.
//! Flags: bit 0 SCRAM-SHA-256 (else SHA-1), bit 1 the user does not exist (fake keys).
//!
//! Properties:
//! - no panic;
//! - `decode_payload` ∘ `encode_payload` is the identity on what `decode_payload` accepts;
//! - `parse_plain` / `parse_scram_first` give back exactly the fields of their input, and
//!   `username_of` agrees with them;
//! - the fuzzer's client-final message never authenticates (it cannot know the proof);
//! - for every client-first message the server accepts, the correct proof (computed here
//!   from the password, independently of `jabberfarm_proto`) does authenticate a real user,
//!   with the server signature RFC 5802 §3 defines, and never an unknown one.

#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use jabberfarm_proto::scram::{ScramCredentials, ScramHash};
use jabberfarm_proto::sasl::{
    Mechanism, SaslError, ScramClientFirst, ScramServer, decode_payload, encode_payload,
    fake_credentials, parse_plain, parse_scram_first, username_of,
};
use libfuzzer_sys::fuzz_target;
use sha2::Digest as _;

/// RFC 5802 §5's example user and password; few iterations, the keys are derived once.
const PASSWORD: &str = "pencil";
const SALT: &[u8] = b"fuzz-salt-16byte";
const ITERATIONS: u32 = 64;

/// Keys a client derives from the password (RFC 5802 §3), and the server's stored ones.
struct Keys {
    client_key: Vec<u8>,
    server_key: Vec<u8>,
    creds: ScramCredentials,
}

fn keys(hash: ScramHash) -> &'static Keys {
    static SHA1: OnceLock<Keys> = OnceLock::new();
    static SHA256: OnceLock<Keys> = OnceLock::new();
    let cell = match hash {
        ScramHash::Sha1 => &SHA1,
        ScramHash::Sha256 => &SHA256,
    };
    cell.get_or_init(|| {
        let salted = match hash {
            ScramHash::Sha1 => {
                let mut out = [0u8; 20];
                pbkdf2::pbkdf2_hmac::<sha1::Sha1>(PASSWORD.as_bytes(), SALT, ITERATIONS, &mut out);
                out.to_vec()
            }
            ScramHash::Sha256 => {
                let mut out = [0u8; 32];
                pbkdf2::pbkdf2_hmac::<sha2::Sha256>(
                    PASSWORD.as_bytes(),
                    SALT,
                    ITERATIONS,
                    &mut out,
                );
                out.to_vec()
            }
        };
        Keys {
            client_key: mac(hash, &salted, b"Client Key"),
            server_key: mac(hash, &salted, b"Server Key"),
            creds: ScramCredentials::derive(hash, PASSWORD, SALT, ITERATIONS),
        }
    })
}

/// HMAC, from the `hmac` crate directly (not `jabberfarm_proto::scram::hmac`).
fn mac(hash: ScramHash, key: &[u8], data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha1 => {
            let mut m = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(key)
                .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        ScramHash::Sha256 => {
            let mut m = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key)
                .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
    }
}

fn digest(hash: ScramHash, data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha1 => sha1::Sha1::digest(data).to_vec(),
        ScramHash::Sha256 => sha2::Sha256::digest(data).to_vec(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (mech, hash) = if flags & 1 == 1 {
        (Mechanism::ScramSha256, ScramHash::Sha256)
    } else {
        (Mechanism::ScramSha1, ScramHash::Sha1)
    };
    let unknown_user = flags & 2 == 2;

    // The whole input as an <auth/> payload and as each mechanism's first message.
    if let Ok(text) = std::str::from_utf8(rest) {
        check_payload(text);
    }
    check_plain(rest);
    let _ = username_of(mech, rest);

    let (first, fin) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let Some(first) = check_scram_first(first, mech) else {
        return;
    };
    let k = keys(hash);
    let fake = || fake_credentials(hash, &first.username, ITERATIONS, b"fuzz process key");
    let creds = (!unknown_user).then(|| k.creds.clone());

    // The fuzzer's final message.
    let (server, server_first) = ScramServer::start(&first, creds.clone(), fake);
    let nonce = server_nonce(&server_first, &first.nonce);
    let fin = replace(fin, b"%N", nonce.as_bytes());
    if let Ok(ok) = server.finish(&fin) {
        panic!(
            "a forged client-final-message authenticated: {:?} -> {:?}",
            String::from_utf8_lossy(&fin),
            String::from_utf8_lossy(&ok)
        );
    }

    // The right one.
    let (server, server_first) = ScramServer::start(&first, creds, fake);
    let nonce = server_nonce(&server_first, &first.nonce);
    let without_proof = format!("c={},r={nonce}", B64.encode(first.gs2_header.as_bytes()));
    let auth_message = format!(
        "{},{},{without_proof}",
        first.bare,
        String::from_utf8_lossy(&server_first)
    );
    let stored_key = digest(hash, &k.client_key);
    let signature = mac(hash, &stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = k
        .client_key
        .iter()
        .zip(&signature)
        .map(|(a, b)| a ^ b)
        .collect();
    let fin = format!("{without_proof},p={}", B64.encode(proof));
    let r = server.finish(fin.as_bytes());
    if unknown_user {
        assert_eq!(
            r,
            Err(SaslError::NotAuthorized),
            "an unknown user logged in"
        );
    } else {
        let expected = format!(
            "v={}",
            B64.encode(mac(hash, &k.server_key, auth_message.as_bytes()))
        );
        assert_eq!(
            r.as_deref().map(String::from_utf8_lossy),
            Ok(expected.as_str().into()),
            "the correct proof was refused (auth message {auth_message:?})"
        );
    }
});

/// `r=` of the server-first-message, which must extend the client's nonce (RFC 5802 §5.1).
fn server_nonce(server_first: &[u8], client_nonce: &str) -> String {
    let text =
        std::str::from_utf8(server_first).unwrap_or_else(|_| panic!("server-first not UTF-8"));
    let nonce = text
        .split(',')
        .find_map(|a| a.strip_prefix("r="))
        .unwrap_or_else(|| panic!("server-first without r=: {text:?}"));
    assert!(
        nonce.starts_with(client_nonce) && nonce.len() > client_nonce.len(),
        "server nonce {nonce:?} does not extend {client_nonce:?}"
    );
    nonce.to_owned()
}

fn check_payload(text: &str) {
    if let Ok(bytes) = decode_payload(text) {
        let again = encode_payload(&bytes);
        assert_eq!(
            decode_payload(&again).as_deref(),
            Ok(&bytes[..]),
            "payload {text:?} did not survive encode/decode"
        );
    }
}

fn check_plain(data: &[u8]) {
    let Ok(m) = parse_plain(data) else {
        return;
    };
    assert!(!m.authcid.is_empty(), "PLAIN with an empty username");
    let joined = [
        m.authzid.as_bytes(),
        m.authcid.as_bytes(),
        m.password.as_bytes(),
    ]
    .join(&0u8);
    assert_eq!(joined, data, "PLAIN fields are not the message");
    assert_eq!(
        username_of(Mechanism::Plain, data).as_deref(),
        Ok(m.authcid.as_str())
    );
}

fn check_scram_first(data: &[u8], mech: Mechanism) -> Option<ScramClientFirst> {
    let first = parse_scram_first(data).ok()?;
    assert_eq!(
        format!("{}{}", first.gs2_header, first.bare).as_bytes(),
        data,
        "gs2 header and bare message are not the message"
    );
    assert!(!first.username.is_empty(), "SCRAM with an empty username");
    assert!(
        !first.nonce.is_empty()
            && first
                .nonce
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b','),
        "bad nonce {:?} accepted",
        first.nonce
    );
    assert_eq!(
        username_of(mech, data).as_deref(),
        Ok(first.username.as_str())
    );
    Some(first)
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while !rest.is_empty() {
        if rest.starts_with(from) {
            out.extend_from_slice(to);
            rest = &rest[from.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}
