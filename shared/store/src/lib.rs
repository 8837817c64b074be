//! Where the farm keeps its data, and the one owner of the database pools.
//!
//! - [`accounts`]: the account stores (embedded SQLite, MySQL/MariaDB, LDAP) behind
//!   [`AccountStore`], with legacy password hashes of existing user tables; it answers the
//!   login negotiation through `jabberfarm_net::c2s::Accounts`.
//! - [`im`]: the per-user IM data (roster, offline messages, vCards, last activity) on the
//!   account store's database (or, for LDAP, the database beside the directory).
//! - [`moving`]: a user's rows out of one slave's SQLite file and into another's, when a
//!   routing change gives the user to another slave.
//!
//! Migrations live in `migrations/` (one set per database) and run when a store opens.

pub mod accounts;
pub mod im;
pub mod moving;

pub use accounts::{AccountStore, Existence, StoreError};
