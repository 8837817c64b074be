//! What every jabberfarm node speaks, without sockets where it can be.
//!
//! - [`xml`]: restricted-XML stream parser (rxml) and the element type, serialization.
//! - [`stream`]: an XML stream over any async byte stream, with STARTTLS upgrade.
//! - [`routing`]: the routing rule `owner(localpart) -> node` (DESIGN.md D2) and its fingerprint.
//! - [`config`]: the farm's TOML config, its validation (`jabberfarm check`).
//! - [`tls`]: rustls server setup and the demo CA / certificate generator.
//! - [`auth`]: SCRAM credentials and the account stores (embedded SQLite).
//! - [`s2s`]: server-to-server: dialback keys, from-rewrite, resolution, outbound streams.
//! - [`sasl`]: server side of SASL PLAIN and SCRAM-SHA-1/-256, sans-IO.
//! - [`c2s`]: client stream negotiation up to authentication (STARTTLS, SASL, iq:auth, redirect).
//! - [`login_guard`]: the brute-force limiter (failed logins per address and per account).
//! - [`shaper`]: token buckets for what one client session may send.
//! - [`stanza`]: stanza kinds, error replies.
//! - [`farm`]: farm links between nodes: framing, mutual authentication, liveness.
//! - [`listen`]: bounded accept loops and graceful shutdown.
//! - [`relay`]: the master relaying a client stream to its slave: the handoff, the byte pump.
//! - [`ns`]: the XML namespaces we use.
//!
//! Data flow of a connection: socket → [`stream::XmlStream`] (bytes ↔ [`xml::Element`]) →
//! the role crate's session state machine → router → feature handler.

pub mod auth;
pub mod c2s;
pub mod config;
pub mod farm;
pub mod listen;
pub mod login_guard;
pub mod ns;
pub mod relay;
pub mod routing;
pub mod s2s;
pub mod sasl;
pub mod shaper;
pub mod stanza;
pub mod stream;
pub mod tls;
pub mod xml;
