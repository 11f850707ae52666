//! A short cache of API keys that were found valid, so a busy client does not
//! cost a Postgres lookup per request (docs/design.md, "The hot path is batched").
//! Only hits are kept: a key created a moment ago works at once, and a
//! revoked one stops working within the cache's lifetime
//! (`KURIR_KEY_CACHE_TTL`; `0s` turns the cache off).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kurir_core::AccountId;

/// Most keys remembered; past it the cache starts again empty.
const MOST: usize = 10_000;

/// Key hash → (its account, when Postgres said so).
type Entries = HashMap<Vec<u8>, (AccountId, Instant)>;

#[derive(Clone, Default)]
pub struct KeyCache {
    ttl: Duration,
    entries: Arc<Mutex<Entries>>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").field("ttl", &self.ttl).finish()
    }
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Arc::default(),
        }
    }

    /// The account of a key hash seen valid less than the lifetime ago.
    pub fn get(&self, hash: &[u8]) -> Option<AccountId> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(account, _)| *account)
    }

    /// Remembers a key hash Postgres just found valid.
    pub fn put(&self, hash: &[u8], account: AccountId) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MOST {
            let ttl = self.ttl;
            entries.retain(|_, (_, at)| at.elapsed() < ttl);
            if entries.len() >= MOST {
                entries.clear();
            }
        }
        entries.insert(hash.to_vec(), (account, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_are_kept_for_their_lifetime_only() {
        let cache = KeyCache::new(Duration::from_millis(50));
        assert_eq!(cache.get(b"k"), None);
        cache.put(b"k", AccountId(7));
        assert_eq!(cache.get(b"k"), Some(AccountId(7)));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get(b"k"), None, "expired");
    }

    #[test]
    fn a_zero_lifetime_keeps_nothing() {
        let cache = KeyCache::new(Duration::ZERO);
        cache.put(b"k", AccountId(7));
        assert_eq!(cache.get(b"k"), None);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = KeyCache::new(Duration::from_secs(60));
        for n in 0..(MOST + 10) {
            cache.put(&n.to_le_bytes(), AccountId(1));
        }
        let entries = cache.entries.lock().unwrap();
        assert!(entries.len() <= MOST, "{}", entries.len());
    }
}
