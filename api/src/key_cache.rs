//! API keys that authenticated lately, so a request does not look its key up in the
//! database each time. An entry lives `ttl` (`DHANMAN_API_KEY_CACHE_MS`): a key revoked or
//! rotated through this process is forgotten at once; one revoked through another process
//! keeps working here for at most `ttl`. Only keys that authenticated are kept, by the
//! SHA-256 of their secret (an unknown key is looked up each time and takes no room), and
//! at most [`CAPACITY`] of them.

use std::time::Duration;

use dhanman_producers::orgs::{self, KeyOwner};
use sqlx::PgPool;

/// Keys held at most; past it the least used are dropped.
pub const CAPACITY: u64 = 10_000;

/// How long an authenticated key is believed without asking the database.
pub const DEFAULT_TTL: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct KeyCache(Option<moka::sync::Cache<Vec<u8>, KeyOwner>>);

impl KeyCache {
    /// A cache whose entries live `ttl`; zero: every request asks the database.
    pub fn new(ttl: Duration) -> Self {
        KeyCache((!ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(ttl)
                .build()
        }))
    }

    /// Whom `key` speaks for, if it is a key that is not revoked.
    pub async fn authenticate(
        &self,
        pool: &PgPool,
        key: &str,
    ) -> dhanman_producers::Result<Option<KeyOwner>> {
        let Some(cache) = &self.0 else {
            return orgs::authenticate(pool, key).await;
        };
        let hash = orgs::key_hash(key);
        if let Some(owner) = cache.get(&hash) {
            return Ok(Some(owner));
        }
        let owner = orgs::authenticate_hash(pool, &hash).await?;
        if let Some(owner) = &owner {
            cache.insert(hash, owner.clone());
        }
        Ok(owner)
    }

    /// Forgets every key: called after a key is revoked or rotated.
    pub fn forget(&self) {
        if let Some(cache) = &self.0 {
            cache.invalidate_all();
        }
    }
}
