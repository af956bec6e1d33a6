//! [`IncomingMessage`]: a received message, as consumer handlers see it.
//!
//! Both the RabbitMQ consumer and the in-memory transport hand handlers an `IncomingMessage`
//! (cheap to clone: the content is shared). Decode a chassis event with
//! [`IncomingMessage::decode`]; get at anything else through the accessors.
//!
//! ```
//! use chassis_messaging::{IncomingMessage, OutgoingMessage};
//!
//! let msg = IncomingMessage::from_outgoing(OutgoingMessage::new("x", "k", b"{}".to_vec()).header("h", 1_i64));
//! assert_eq!(msg.routing_key(), "k");
//! assert_eq!(msg.attempt(), 1);
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use lapin::BasicProperties;
use serde::de::DeserializeOwned;

use crate::amqp::headers::{HeaderMapExtractor, from_field_table};
use crate::envelope::{Envelope, Received};
use crate::error::Error;
use crate::message::{HeaderValue, OutgoingMessage};

/// Header carrying how many times the chassis has tried to handle a message (1 on first
/// delivery; incremented each time it goes through a retry tier).
pub const ATTEMPT_HEADER: &str = "x-chassis-attempt";
/// Header carrying why a message was retried or dead-lettered.
pub const FAILURE_REASON_HEADER: &str = "x-chassis-failure-reason";
/// Header carrying the exchange a dead-lettered message was originally published to.
pub const ORIGINAL_EXCHANGE_HEADER: &str = "x-chassis-original-exchange";
/// Header carrying the routing key a dead-lettered message was originally published with.
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-chassis-original-routing-key";

/// A received message.
#[derive(Debug, Clone)]
pub struct IncomingMessage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    exchange: String,
    routing_key: String,
    redelivered: bool,
    message_id: Option<String>,
    kind: Option<String>,
    content_type: Option<String>,
    correlation_id: Option<String>,
    timestamp: Option<u64>,
    headers: BTreeMap<String, HeaderValue>,
    body: Vec<u8>,
    attempt: u32,
    raw: Option<BasicProperties>,
}

/// Whether `name` is a header of the broker's dead-lettering bookkeeping (`x-death` and the
/// like), which a copy published again leaves out.
pub(crate) fn is_dead_letter_header(name: &str) -> bool {
    name == "x-death"
        || name.starts_with("x-first-death")
        || name.starts_with("x-last-death")
        || name == "x-delivery-count"
}

fn attempt_of(headers: &BTreeMap<String, HeaderValue>) -> u32 {
    match headers.get(ATTEMPT_HEADER) {
        Some(HeaderValue::Int(n)) if *n >= 1 => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(HeaderValue::String(s)) => s.parse().ok().filter(|n| *n >= 1).unwrap_or(1),
        _ => 1,
    }
}

/// A message coming back from a retry tier arrives through the default exchange with the
/// queue name as routing key; handlers should see where it was first published.
fn original_route(
    headers: &BTreeMap<String, HeaderValue>,
    exchange: &str,
    routing_key: &str,
) -> (String, String) {
    let get = |name: &str, fallback: &str| match headers.get(name) {
        Some(HeaderValue::String(s)) => s.clone(),
        _ => fallback.to_owned(),
    };
    (
        get(ORIGINAL_EXCHANGE_HEADER, exchange),
        get(ORIGINAL_ROUTING_KEY_HEADER, routing_key),
    )
}

impl IncomingMessage {
    /// What a consumer would receive for `msg` (used by the in-memory transport and in tests).
    /// The attempt number is read from the `x-chassis-attempt` header (1 when absent).
    pub fn from_outgoing(msg: OutgoingMessage) -> Self {
        let attempt = attempt_of(&msg.headers);
        let (exchange, routing_key) = original_route(&msg.headers, &msg.exchange, &msg.routing_key);
        Self {
            inner: Arc::new(Inner {
                exchange,
                routing_key,
                redelivered: false,
                message_id: msg.message_id,
                kind: msg.kind,
                content_type: msg.content_type,
                correlation_id: msg.correlation_id,
                timestamp: msg.timestamp,
                headers: msg.headers,
                body: msg.body,
                attempt,
                raw: None,
            }),
        }
    }

    pub(crate) fn from_lapin(
        exchange: &str,
        routing_key: &str,
        redelivered: bool,
        props: BasicProperties,
        body: Vec<u8>,
    ) -> Self {
        let headers = props
            .headers()
            .as_ref()
            .map(from_field_table)
            .unwrap_or_default();
        let attempt = attempt_of(&headers);
        let (exchange, routing_key) = original_route(&headers, exchange, routing_key);
        let s = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
        Self {
            inner: Arc::new(Inner {
                exchange,
                routing_key,
                redelivered,
                message_id: s(props.message_id()),
                kind: s(props.kind()),
                content_type: s(props.content_type()),
                correlation_id: s(props.correlation_id()),
                timestamp: *props.timestamp(),
                headers,
                body,
                attempt,
                raw: Some(props),
            }),
        }
    }

    /// What the consumer builds from a delivery, for the fuzz targets in the repository's
    /// `fuzz/` crate (they decode AMQP properties from arbitrary bytes); not part of the API.
    #[doc(hidden)]
    pub fn from_delivery_for_fuzzing(
        exchange: &str,
        routing_key: &str,
        redelivered: bool,
        props: BasicProperties,
        body: Vec<u8>,
    ) -> Self {
        Self::from_lapin(exchange, routing_key, redelivered, props, body)
    }

    /// The wire form of this message again, with its headers (for the in-memory transport's
    /// retries and dead letters).
    pub fn to_outgoing(&self) -> OutgoingMessage {
        let i = &self.inner;
        OutgoingMessage {
            exchange: i.exchange.clone(),
            routing_key: i.routing_key.clone(),
            message_id: i.message_id.clone(),
            kind: i.kind.clone(),
            content_type: i.content_type.clone(),
            correlation_id: i.correlation_id.clone(),
            timestamp: i.timestamp,
            headers: i.headers.clone(),
            body: i.body.clone(),
        }
    }

    pub(crate) fn raw_properties(&self) -> Option<&BasicProperties> {
        self.inner.raw.as_ref()
    }

    /// The exchange it was first published to (for a message coming back from a retry tier:
    /// taken from [`ORIGINAL_EXCHANGE_HEADER`]).
    pub fn exchange(&self) -> &str {
        &self.inner.exchange
    }
    /// The routing key it was first published with (for a retried message: taken from
    /// [`ORIGINAL_ROUTING_KEY_HEADER`]).
    pub fn routing_key(&self) -> &str {
        &self.inner.routing_key
    }
    /// Whether the broker flagged it as redelivered (an earlier delivery was not acked).
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }
    /// The AMQP `message_id` property.
    pub fn message_id(&self) -> Option<&str> {
        self.inner.message_id.as_deref()
    }
    /// The AMQP `type` property.
    pub fn kind(&self) -> Option<&str> {
        self.inner.kind.as_deref()
    }
    /// The AMQP `content_type` property.
    pub fn content_type(&self) -> Option<&str> {
        self.inner.content_type.as_deref()
    }
    /// The AMQP `correlation_id` property.
    pub fn correlation_id(&self) -> Option<&str> {
        self.inner.correlation_id.as_deref()
    }
    /// The AMQP `timestamp` property (seconds since the epoch).
    pub fn timestamp(&self) -> Option<u64> {
        self.inner.timestamp
    }
    /// Application headers (values of types the chassis does not model, such as `x-death`
    /// tables, are left out here but kept on the wire when the message is retried).
    pub fn headers(&self) -> &BTreeMap<String, HeaderValue> {
        &self.inner.headers
    }
    /// One application header.
    pub fn header(&self, name: &str) -> Option<&HeaderValue> {
        self.inner.headers.get(name)
    }
    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.inner.body
    }
    /// Which attempt this is: 1 on the first delivery, incremented by each retry tier.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }
    /// Decodes and validates a chassis event (CloudEvents binary mode; the
    /// [`envelope`](crate::envelope) module has the mapping).
    ///
    /// # Errors
    /// [`ErrorKind::Validation`](crate::error::ErrorKind::Validation) when a CloudEvents
    /// attribute is missing or malformed (wrong `specversion`, no `id`/`type`/`source`, bad
    /// `time`, non-JSON content type), [`ErrorKind::Decode`](crate::error::ErrorKind::Decode)
    /// when the body is not the expected JSON payload.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<Envelope<T>, Error> {
        let i = &self.inner;
        Envelope::decode(Received {
            headers: &i.headers,
            content_type: i.content_type.as_deref(),
            correlation_id: i.correlation_id.as_deref(),
            timestamp: i.timestamp,
            body: &i.body,
        })
    }
    /// The remote trace context (`traceparent`/`tracestate`/`baggage` headers); an empty
    /// context when there is none.
    pub fn trace_context(&self) -> opentelemetry::Context {
        // Over an empty context: `extract_context` would layer the headers over the caller's
        // current context, so a message without headers would look like a child of whatever
        // span the handler is in.
        chassis_observability::propagation::extract_with_context(
            &opentelemetry::Context::new(),
            &HeaderMapExtractor(&self.inner.headers),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{TraceContextExt, TraceId};

    #[test]
    fn trace_context_comes_from_the_headers_only() {
        // The handler runs inside some context: a message without headers must not inherit it.
        let _guard = crate::test_support::sampled_context().attach();
        let bare = IncomingMessage::from_outgoing(OutgoingMessage::new("x", "y", vec![]));
        assert!(!bare.trace_context().span().span_context().is_valid());

        let traced = IncomingMessage::from_outgoing(OutgoingMessage::new("x", "y", vec![]).header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ));
        let sc = traced.trace_context().span().span_context().clone();
        assert_eq!(
            sc.trace_id(),
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap()
        );
        assert!(sc.is_remote());
    }
}
