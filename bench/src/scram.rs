//! A cache of the PBKDF2 result for the client side of SCRAM (`jabberfarm_testkit::scram`).
//!
//! A real client stores `SaltedPassword` after its first login (RFC 5802 §5.1 allows it), so a
//! benchmark that re-derived it on every login would measure the load client, not the server.
//! The cache is filled in the unmeasured discovery pass (see `client::discover`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jabberfarm_proto::scram::ScramHash;
pub use jabberfarm_testkit::scram::{ClientKeys, ScramClient};

use crate::error::{BenchError, Result};

type CacheKey = (bool, String, Vec<u8>, u32);

/// Derived keys by (hash, password, salt, iterations).
#[derive(Default)]
pub struct KeyCache {
    map: Mutex<HashMap<CacheKey, Arc<ClientKeys>>>,
}

impl KeyCache {
    pub async fn get(
        &self,
        hash: ScramHash,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Result<Arc<ClientKeys>> {
        let key = (
            hash == ScramHash::Sha256,
            password.to_owned(),
            salt.to_vec(),
            iterations,
        );
        if let Some(k) = self.map.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(k);
        }
        let (p, s) = (password.to_owned(), salt.to_vec());
        let keys =
            tokio::task::spawn_blocking(move || ClientKeys::derive(hash, &p, &s, iterations))
                .await
                .map_err(|e| BenchError::Setup(format!("PBKDF2 task failed: {e}")))?;
        let keys = Arc::new(keys);
        if let Ok(mut m) = self.map.lock() {
            m.insert(key, keys.clone());
        }
        Ok(keys)
    }
}
