//! The runtime every jabberfarm node shares: tokio and rustls.
//!
//! - [`stream`]: an XML stream over TCP or TLS, with the STARTTLS upgrade.
//! - [`listen`]: bounded accept loops and graceful shutdown.
//! - [`tls`]: rustls server and client setup, the demo CA and certificates.
//! - [`c2s`]: client stream negotiation up to authentication (STARTTLS, SASL, iq:auth, the
//!   redirect or relay decision); it asks a [`c2s::LoginPolicy`] where a user belongs and
//!   [`c2s::Accounts`] whether a password is right, so a node without accounts needs no store.
//! - [`login_guard`]: the brute-force limiter (failed logins per address and per account).
//! - [`shaper`]: token buckets for what one client session may send.
//! - [`farm`]: farm links between nodes: framing, mutual authentication, liveness, and the
//!   relay connections a master opens.
//! - [`mux`]: the one connection from a master to a slave that carries every client it relays
//!   there.
//! - [`relay`]: the master relaying a client stream to its slave: the handoff, the byte pump.
//! - [`receipt`]: when a stanza taken from a client or a link is safe (delivered, stored, or
//!   taken the same way by the next node): what acknowledgements count.
//! - [`s2s`]: streams to remote servers: resolution, STARTTLS, dialback, per-domain queues.
//! - [`metrics`]: `/metrics` (Prometheus) and `/health` over HTTP, per node.
//! - [`node`]: what every node runs — its listeners, topology, links, outbound s2s, task
//!   tracker and drain — for the roles to put their handlers on.
//!
//! Data flow of a connection: socket → [`listen`] → [`stream::XmlStream`] (bytes ↔
//! `jabberfarm_proto::xml::Element`) → [`c2s::negotiate`] → the role's session.

pub mod c2s;
pub mod farm;
pub mod listen;
pub mod login_guard;
pub mod metrics;
pub mod mux;
pub mod node;
pub mod receipt;
pub mod relay;
pub mod s2s;
pub mod shaper;
pub mod stream;
pub mod tls;
