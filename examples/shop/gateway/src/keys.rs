//! End-user API keys: `GATEWAY_API_KEYS="key:client,key2:client2"`.
//!
//! # Example
//! ```
//! use shop_gateway::keys::ApiKeys;
//!
//! let keys = ApiKeys::parse("demo-key:demo, acme-key-2:acme").unwrap();
//! assert_eq!(keys.client_for("Bearer demo-key"), Some("demo"));
//! assert_eq!(keys.client_for("Bearer nope"), None);
//! assert_eq!(keys.client_for("demo-key"), None, "the Bearer scheme is required");
//! ```

use std::collections::HashMap;

/// Configured API keys, each naming a client.
#[derive(Clone)]
pub struct ApiKeys {
    by_key: HashMap<String, String>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the keys themselves.
        f.debug_struct("ApiKeys")
            .field("clients", &self.by_key.values().collect::<Vec<_>>())
            .finish()
    }
}

impl ApiKeys {
    /// Parses `key:client` pairs separated by `,`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut by_key = HashMap::new();
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, client) = pair
                .split_once(':')
                .ok_or_else(|| "API keys must be `key:client` pairs".to_owned())?;
            if key.len() < 8 || client.is_empty() {
                return Err("each API key needs at least 8 characters and a client name".into());
            }
            by_key.insert(key.to_owned(), client.to_owned());
        }
        if by_key.is_empty() {
            return Err("no API keys configured".into());
        }
        Ok(Self { by_key })
    }

    /// The client of an `Authorization` header value (`Bearer <key>`), if the key is known.
    pub fn client_for(&self, authorization: &str) -> Option<&str> {
        let key = authorization.strip_prefix("Bearer ")?.trim();
        self.by_key.get(key).map(String::as_str)
    }
}
