//! The negotiation over in-memory streams (`tokio::io::duplex`): a scripted client on one end,
//! [`negotiate`] with a policy on the other. What a client sees for each route — redirect,
//! relay, here (SCRAM and PLAIN), unavailable — and STARTTLS with `tls.required`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::relay::RelayReason;
use jabberfarm_config::FarmConfig;
use jabberfarm_proto::scram::{ScramCredentials, ScramHash};
use jabberfarm_testkit::scram::{ClientKeys, ScramClient};

const HEADER: &str = "<?xml version='1.0'?><stream:stream to='localhost' version='1.0' \
                      xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const FARM: &str = r#"
domain = "localhost"
secret = "s3cret"
[tls]
generate = true
required = false
[routing]
mode = "hash"
hash_key = "000102030405060708090a0b0c0d0e0f"
[[node]]
name = "master"
role = "master"
c2s = "127.0.0.1:5222"
farm = "127.0.0.1:7100"
[[node]]
name = "slave1"
role = "slave"
c2s = "127.0.0.1:5322"
farm = "127.0.0.1:7101"
"#;

fn settings(tls: Option<Arc<rustls::ServerConfig>>, tls_required: bool) -> C2sSettings {
    let cfg = FarmConfig::from_str(
        FARM,
        Path::new("c2s-test.toml"),
        Some(Path::new("/nonexistent")),
    )
    .unwrap_or_else(|e| panic!("the test config: {e}"));
    let mut s = C2sSettings::from_config(&cfg, tls, CancellationToken::new());
    s.tls_required = tls_required;
    s.login_timeout = Duration::from_secs(10);
    s
}

/// One account, `juliet` / `romeo`, with SCRAM keys as a store keeps them.
struct Juliet;

impl Accounts for Juliet {
    fn plain_only(&self) -> bool {
        false
    }

    fn credentials<'a>(
        &'a self,
        user: &'a str,
        hash: ScramHash,
    ) -> AccountsFuture<'a, Option<ScramCredentials>> {
        Box::pin(async move {
            Ok((user == "juliet").then(|| ScramCredentials::derive(hash, "romeo", b"salt", 4096)))
        })
    }

    fn verify_password<'a>(&'a self, _: &'a str, _: &'a str) -> AccountsFuture<'a, bool> {
        Box::pin(async { Ok(false) })
    }
}

/// A node whose routing answers `route` for every user.
struct Policy(fn(&str) -> LoginRoute);

impl LoginPolicy for Policy {
    fn route(&self, localpart: &str, _direct_tls: bool) -> LoginRoute {
        (self.0)(localpart)
    }

    fn accounts(&self) -> Option<&dyn Accounts> {
        Some(&Juliet)
    }
}

/// The client end: raw text out, everything received kept to search.
struct Client<S> {
    io: S,
    got: String,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn send(&mut self, text: &str) {
        self.io
            .write_all(text.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("send: {e}"));
    }

    /// Everything received until `needle` (consumed up to it), or a panic after 5 s.
    async fn wait_for(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(i) = self.got.find(needle) {
                let upto = i + needle.len();
                return self.got.drain(..upto).collect();
            }
            let mut buf = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.io.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => panic!("closed before {needle:?}; got {:?}", self.got),
                Ok(Ok(n)) => self.got.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => panic!("timed out waiting for {needle:?}; got {:?}", self.got),
            }
        }
    }
}

fn pair() -> (Client<DuplexStream>, XmlStream, C2sSettings) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let s = settings(None, false);
    let stream = XmlStream::new(Box::new(server), ns::CLIENT, s.pre_auth);
    (
        Client {
            io: client,
            got: String::new(),
        },
        stream,
        s,
    )
}

fn plain(user: &str, password: &str) -> String {
    let p = B64.encode(format!("\0{user}\0{password}"));
    format!("<auth xmlns='{SASL}' mechanism='PLAIN'>{p}</auth>")
}

#[tokio::test]
async fn a_redirect_names_the_owner_for_plain_and_for_scram() {
    let policy = Policy(|_| LoginRoute::Redirect("10.0.0.2:5222".into()));
    for first in [
        plain("juliet", "whatever"),
        format!(
            "<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>{}</auth>",
            B64.encode(ScramClient::new(ScramHash::Sha256, "Juliet").first_message())
        ),
    ] {
        let (mut c, stream, s) = pair();
        let client = async {
            c.send(HEADER).await;
            let features = c.wait_for("</stream:features>").await;
            assert!(
                features.contains("<mechanism>SCRAM-SHA-256</mechanism>"),
                "{features}"
            );
            c.send(&first).await;
            let end = c.wait_for("</stream:stream>").await;
            assert!(
                end.contains(
                    "<see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>\
                     10.0.0.2:5222</see-other-host>"
                ),
                "{end}"
            );
        };
        let (outcome, ()) = tokio::join!(negotiate(stream, &s, &policy), client);
        assert!(outcome.is_none(), "a redirected stream is over");
    }
}

#[tokio::test]
async fn here_scram_and_plain_authenticate_and_a_wrong_password_fails() {
    let policy = Policy(|_| LoginRoute::Here);
    // SCRAM-SHA-256: the client checks the server's signature too.
    let (mut c, stream, s) = pair();
    let client = async {
        c.send(HEADER).await;
        c.wait_for("</stream:features>").await;
        let scram = ScramClient::new(ScramHash::Sha256, "juliet");
        c.send(&format!(
            "<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>{}</auth>",
            B64.encode(scram.first_message())
        ))
        .await;
        let r = c.wait_for("</challenge>").await;
        let payload = r
            .rsplit('>')
            .nth(1)
            .map_or("", |p| p.split('<').next().unwrap_or(""));
        let sf = scram
            .parse_server_first(&B64.decode(payload).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}: {r}"));
        let keys = ClientKeys::derive(ScramHash::Sha256, "romeo", &sf.salt, sf.iterations);
        let (fin, server_sig) = scram.final_message(&sf, &keys);
        c.send(&format!(
            "<response xmlns='{SASL}'>{}</response>",
            B64.encode(fin)
        ))
        .await;
        let r = c.wait_for("</success>").await;
        let v = r
            .rsplit('>')
            .nth(1)
            .map_or("", |p| p.split('<').next().unwrap_or(""));
        ScramClient::verify_server_final(&B64.decode(v).unwrap_or_default(), &server_sig)
            .unwrap_or_else(|e| panic!("{e}"));
        // The restarted stream gets the node's post-login features.
        c.send(HEADER).await;
        c.wait_for("<stream:features").await;
    };
    let (outcome, ()) = tokio::join!(negotiate(stream, &s, &policy), client);
    match outcome {
        Some(Negotiated::Authenticated(a)) => assert_eq!(a.username, "juliet"),
        _ => panic!("SCRAM did not authenticate"),
    }

    // PLAIN: a wrong password is <not-authorized/>, and the stream goes on.
    let (mut c, stream, s) = pair();
    let client = async {
        c.send(HEADER).await;
        c.wait_for("</stream:features>").await;
        c.send(&plain("juliet", "tybalt")).await;
        let r = c.wait_for("</failure>").await;
        assert!(r.contains("<not-authorized/>"), "{r}");
        c.send(&plain("juliet", "romeo")).await;
        c.wait_for("<success").await;
        c.send(HEADER).await;
        c.wait_for("<stream:features").await;
    };
    let (outcome, ()) = tokio::join!(negotiate(stream, &s, &policy), client);
    assert!(matches!(outcome, Some(Negotiated::Authenticated(a)) if a.username == "juliet"));
}

#[tokio::test]
async fn a_relayed_login_hands_over_the_first_sasl_element() {
    let policy = Policy(|_| LoginRoute::Relay {
        node: "slave1".into(),
        reason: RelayReason::Never,
    });
    let (mut c, stream, s) = pair();
    let client = async {
        c.send(HEADER).await;
        c.wait_for("</stream:features>").await;
        c.send(&plain("Juliet", "romeo")).await;
    };
    let (outcome, ()) = tokio::join!(negotiate(stream, &s, &policy), client);
    let Some(Negotiated::Relay(r)) = outcome else {
        panic!("not relayed");
    };
    assert_eq!((r.node.as_str(), r.user.as_str()), ("slave1", "juliet"));
    assert!(
        r.first.is("auth", SASL),
        "the slave starts from the <auth/>"
    );
    assert_eq!(r.first.attr("mechanism"), Some("PLAIN"));
}

#[tokio::test]
async fn a_login_for_a_node_that_is_down_says_so() {
    let policy = Policy(|_| LoginRoute::Unavailable("slave1 is not reachable".into()));
    let (mut c, stream, s) = pair();
    let client = async {
        c.send(HEADER).await;
        c.wait_for("</stream:features>").await;
        c.send(&plain("juliet", "romeo")).await;
        let end = c.wait_for("</stream:stream>").await;
        assert!(end.contains("<remote-connection-failed"), "{end}");
        assert!(end.contains("slave1 is not reachable"), "{end}");
    };
    let (outcome, ()) = tokio::join!(negotiate(stream, &s, &policy), client);
    assert!(outcome.is_none());
}

#[tokio::test]
async fn with_tls_required_nothing_is_offered_before_starttls() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let certs = crate::tls::ensure_dev_certs(dir.path(), "localhost", &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let server_tls =
        crate::tls::server_config(&certs.cert, &certs.key).unwrap_or_else(|e| panic!("{e}"));
    let client_tls = crate::tls::client_config(&certs.ca).unwrap_or_else(|e| panic!("{e}"));
    let policy = Policy(|_| LoginRoute::Redirect("10.0.0.2:5222".into()));
    let (client, server) = tokio::io::duplex(64 * 1024);
    let s = settings(Some(server_tls), true);
    let stream = XmlStream::new(Box::new(server), ns::CLIENT, s.pre_auth);
    let mut c = Client {
        io: client,
        got: String::new(),
    };
    let script = async {
        c.send(HEADER).await;
        let features = c.wait_for("</stream:features>").await;
        assert!(features.contains("<required/>"), "{features}");
        assert!(
            !features.contains("<mechanism>"),
            "mechanisms before TLS: {features}"
        );
        // A login before TLS is refused, and the username not looked at: no redirect.
        c.send(&plain("juliet", "romeo")).await;
        let r = c.wait_for("</failure>").await;
        assert!(r.contains("<encryption-required/>"), "{r}");
        c.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        c.wait_for("<proceed").await;
        c.wait_for(">").await;
        let name =
            rustls_pki_types::ServerName::try_from("localhost").unwrap_or_else(|e| panic!("{e}"));
        let tls = tokio_rustls::TlsConnector::from(client_tls)
            .connect(name, c.io)
            .await
            .unwrap_or_else(|e| panic!("TLS handshake: {e}"));
        let mut c = Client {
            io: tls,
            got: String::new(),
        };
        c.send(HEADER).await;
        let features = c.wait_for("</stream:features>").await;
        assert!(
            features.contains("<mechanism>PLAIN</mechanism>"),
            "{features}"
        );
        assert!(!features.contains("starttls"), "{features}");
        c.send(&plain("juliet", "romeo")).await;
        let end = c.wait_for("</stream:stream>").await;
        assert!(end.contains("10.0.0.2:5222</see-other-host>"), "{end}");
    };
    let (outcome, ()) = tokio::join!(negotiate(stream, &s, &policy), script);
    assert!(outcome.is_none());
}
