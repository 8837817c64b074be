//! What jabberfarm's tests and its benchmark share, so each exists once:
//!
//! - [`raw`]: a raw XMPP client (blocking; plain or STARTTLS) for exact wire assertions,
//!   with waits that fail instead of hanging and a ping barrier instead of sleeps.
//! - [`scram`]: the client side of SCRAM, sans-IO, checked against RFC 7677's example.
//! - [`servers`]: throwaway MariaDB and OpenLDAP servers on loopback, never the system's.
//!
//! Test code: it panics with what it saw where a library would return an error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod raw;
pub mod scram;
pub mod servers;

pub use raw::{HEADER, Raw, plain_auth};
