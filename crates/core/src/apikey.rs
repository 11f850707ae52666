//! API keys: `kurir_<key id>_<secret>`. The key id is public (it names the key
//! in `kurir keys list` and logs); the secret is 32 random base-62 characters
//! (190 bits). Only the SHA-256 of the whole key is stored: the key is random
//! and long, so a fast hash is the right one (no password stretching needed).

use rand::{Rng, distr::Alphanumeric};
use sha2::{Digest, Sha256};

use crate::FieldError;

const PREFIX: &str = "kurir_";
const SECRET_LEN: usize = 32;

/// A whole API key, as shown once at creation.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    key: String,
    key_id_len: usize,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({}…)", self.key_id())
    }
}

impl ApiKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let id: String = (0..10)
            .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
            .collect();
        let secret: String = (&mut rng)
            .sample_iter(&Alphanumeric)
            .take(SECRET_LEN)
            .map(char::from)
            .collect();
        Self {
            key: format!("{PREFIX}{id}_{secret}"),
            key_id_len: id.len(),
        }
    }

    /// Reads a key given by an operator (`kurir keys create --key`) or a client.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let invalid = || {
            FieldError::new(
                "key",
                "must look like kurir_<id>_<secret>: id 3-32 of [a-z0-9], secret 32-128 of [A-Za-z0-9]",
            )
        };
        let rest = raw.strip_prefix(PREFIX).ok_or_else(invalid)?;
        let (id, secret) = rest.split_once('_').ok_or_else(invalid)?;
        let id_ok = (3..=32).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let secret_ok = (SECRET_LEN..=128).contains(&secret.len())
            && secret.bytes().all(|b| b.is_ascii_alphanumeric());
        if !id_ok || !secret_ok {
            return Err(invalid());
        }
        Ok(Self {
            key: raw.to_owned(),
            key_id_len: id.len(),
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key[PREFIX.len()..PREFIX.len() + self.key_id_len]
    }

    pub fn expose(&self) -> &str {
        &self.key
    }

    pub fn hash(&self) -> Vec<u8> {
        hash(&self.key)
    }
}

/// The stored form of a key presented in `Authorization: Bearer …`.
pub fn hash(presented: &str) -> Vec<u8> {
    Sha256::digest(presented.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_with_their_id() {
        let key = ApiKey::generate();
        let parsed = ApiKey::parse(key.expose()).unwrap();
        assert_eq!(parsed.key_id(), key.key_id());
        assert_eq!(parsed.hash(), key.hash());
        assert_eq!(key.key_id().len(), 10);
        assert!(!format!("{key:?}").contains(&key.expose()[17..]));
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert!(ApiKey::parse("kurir_demo_0123456789abcdefghijklmnopqrstuv").is_ok());
        for bad in [
            "",
            "kurir_",
            "kurir_demo_short",
            "kurir_DEMO_0123456789abcdefghijklmnopqrstuv",
            "other_demo_0123456789abcdefghijklmnopqrstuv",
            "kurir_demo_0123456789abcdefghijklmnopqrst-v",
        ] {
            assert!(ApiKey::parse(bad).is_err(), "{bad}");
        }
    }
}
