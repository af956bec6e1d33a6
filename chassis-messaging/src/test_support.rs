//! What the unit tests of several modules share.

use crate::amqp::topology::{ExchangeConfig, QueueConfig, RetryPolicy, TopologyConfig};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};

/// A context holding a sampled remote span (trace `4bf92f3577b34da6a3ce929d0e0e4736`, span
/// `00f067aa0ba902b7`): what an incoming `traceparent` would give.
pub(crate) fn sampled_context() -> opentelemetry::Context {
    opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

/// The topology of the in-memory broker's tests: the topic exchange `ev` and the queue `q`
/// bound to `order.*`, retrying with `retry`.
pub(crate) fn order_topology(retry: RetryPolicy) -> TopologyConfig {
    TopologyConfig::new()
        .exchange(ExchangeConfig::topic("ev"))
        .queue(QueueConfig::new("q").bind("ev", "order.*").retry(retry))
}
