//! [`OutgoingMessage`]: one message ready to publish, in its wire form.
//!
//! It is what the [`Envelope`](crate::envelope) encodes to, what the publisher sends and what
//! the outbox stores in its table (it is `Serialize`/`Deserialize`, so a row round-trips it
//! exactly): everything the broker needs, nothing that depends on a live connection.
//!
//! ```
//! use chassis_messaging::message::{OutgoingMessage, HeaderValue};
//!
//! let msg = OutgoingMessage::new("shop.events", "order.placed", br#"{"order_id":"42"}"#.to_vec())
//!     .content_type("application/json")
//!     .header("cloudEvents:specversion", "1.0");
//! assert_eq!(msg.headers["cloudEvents:specversion"], HeaderValue::String("1.0".into()));
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An AMQP header value the chassis writes. A deliberately small subset of AMQP's field types:
/// enough for CloudEvents attributes, trace context and retry bookkeeping, and trivially
/// portable to every client library.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HeaderValue {
    /// A long string (AMQP `S`).
    String(String),
    /// A signed 64-bit integer (AMQP `l`).
    Int(i64),
    /// A boolean (AMQP `t`).
    Bool(bool),
}

impl From<&str> for HeaderValue {
    fn from(v: &str) -> Self {
        Self::String(v.to_owned())
    }
}
impl From<String> for HeaderValue {
    fn from(v: String) -> Self {
        Self::String(v)
    }
}
impl From<i64> for HeaderValue {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}
impl From<bool> for HeaderValue {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

/// One message ready to publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingMessage {
    /// Exchange to publish to (`""` is the default exchange).
    pub exchange: String,
    /// Routing key (for chassis events: the event type).
    pub routing_key: String,
    /// AMQP `message_id` property (for chassis events: the envelope id, a UUID v7).
    #[serde(default)]
    pub message_id: Option<String>,
    /// AMQP `type` property (for chassis events: the CloudEvents `type`).
    #[serde(default)]
    pub kind: Option<String>,
    /// AMQP `content_type` property.
    #[serde(default)]
    pub content_type: Option<String>,
    /// AMQP `correlation_id` property.
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// AMQP `timestamp` property, seconds since the Unix epoch.
    #[serde(default)]
    pub timestamp: Option<u64>,
    /// Application headers.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValue>,
    /// The body.
    pub body: Vec<u8>,
}

impl OutgoingMessage {
    /// A message with only exchange, routing key and body set.
    pub fn new(exchange: impl Into<String>, routing_key: impl Into<String>, body: Vec<u8>) -> Self {
        Self {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            message_id: None,
            kind: None,
            content_type: None,
            correlation_id: None,
            timestamp: None,
            headers: BTreeMap::new(),
            body,
        }
    }

    /// Sets one application header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<HeaderValue>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    optional_string_setters! {
        /// Sets the `content_type` property.
        content_type(content_type);
        /// Sets the `message_id` property.
        message_id(id);
    }
}
