//! What every jabberfarm node speaks, without sockets: no tokio, no database, no TLS here.
//!
//! - [`xml`]: the element type and its serialization, the incremental restricted-XML stream
//!   parser (rxml), stream errors.
//! - [`ns`]: the XML namespaces we use.
//! - [`stanza`]: typed stanzas — IQ type and payload as one enum ([`stanza::Iq`]), presence and
//!   message types, stanza errors ([`stanza::StanzaError`]) — and results.
//! - [`routing`]: the routing rule `owner(localpart) -> node` (DESIGN.md D2) and its
//!   fingerprint.
//! - [`scram`]: SCRAM key derivation and proof checks (RFC 5802, RFC 7677).
//! - [`sasl`]: the server side of SASL PLAIN and SCRAM-SHA-1/-256 as a state machine.
//! - [`dialback`]: server dialback keys (XEP-0185), the from-rewrite at the farm's edge.
//! - [`link`]: farm-link frames and the link handshake as two state machines; what a link
//!   keeps until its peer acknowledges it ([`link::outbox`]).
//! - [`sm`]: XEP-0198 stream management's counts and unacknowledged queue.
//!
//! Data flow: bytes → [`xml::StreamParser`] → [`xml::Element`] → the runtime
//! (`jabberfarm-net`) and the roles (`jabberfarm-master`, `jabberfarm-slave`), which decide with
//! [`routing`] and answer with [`stanza`].

pub mod dialback;
pub mod link;
pub mod ns;
pub mod routing;
pub mod sasl;
pub mod scram;
pub mod sm;
pub mod stanza;
pub mod xml;
