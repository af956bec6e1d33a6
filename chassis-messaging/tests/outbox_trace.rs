//! The outbox relay continues the trace of the transaction that enqueued each row (real
//! SQLite file, real RabbitMQ). A binary of its own: it installs a global subscriber.

mod outbox_support;

use chassis_messaging::amqp::consumer::Outcome;
use chassis_messaging::message::OutgoingMessage;
use chassis_messaging::sql::outbox::{Relay, RelayConfig, SqliteOutbox};
use outbox_support::*;

async fn enqueue_committed(outbox: &SqliteOutbox, msg: &OutgoingMessage) -> String {
    let mut tx = outbox.pool().begin().await.unwrap();
    let id = outbox.enqueue(&mut tx, msg).await.unwrap();
    outbox.commit(tx).await.unwrap();
    id
}

/// The relay publishes on its own task, long after the enqueuing span ended: the row carries
/// that span's trace context, and the consumer sees the same trace.
#[tokio::test(flavor = "current_thread")]
async fn relay_continues_the_trace_of_the_span_that_enqueued() {
    use chassis_messaging::amqp::incoming::IncomingMessage;
    use opentelemetry::trace::{SpanId, TraceContextExt as _, TraceId};
    use tracing::Instrument as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    let logs = chassis_observability::logging::CaptureWriter::new();
    let _telemetry = global_telemetry("outbox-trace-test", logs);

    let dir = tempfile::tempdir().unwrap();
    let outbox = sqlite_outbox(&dir).await;
    let broker = Broker::new("sqlite-trace").await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, TraceId, SpanId)>();
    let consumer = broker
        .consume(move |m: IncomingMessage| {
            let tx = tx.clone();
            async move {
                let body: serde_json::Value = serde_json::from_slice(m.body()).unwrap();
                let sc = m.trace_context().span().span_context().clone();
                let _ = tx.send((body["seq"].as_u64().unwrap(), sc.trace_id(), sc.span_id()));
                Outcome::Ack
            }
        })
        .await;

    // 1: enqueued inside a span (an HTTP handler, say); 2: enqueued outside any span.
    let handler_span = tracing::info_span!("place order");
    let handler_cx = handler_span.context().span().span_context().clone();
    assert!(handler_cx.is_valid(), "the test subscriber records spans");
    enqueue_committed(&outbox, &broker.event("order-1", 1))
        .instrument(handler_span)
        .await;
    enqueue_committed(&outbox, &broker.event("order-2", 2)).await;

    // The relay runs later, inside an unrelated span: it must not adopt that one either.
    let relay = Relay::new(
        outbox.clone(),
        broker.publisher.clone(),
        RelayConfig::default(),
    )
    .unwrap();
    let unrelated = tracing::info_span!("relay loop");
    let unrelated_trace = unrelated.context().span().span_context().trace_id();
    let report = relay.run_once().instrument(unrelated).await.unwrap();
    assert_eq!(report.sent, 2);

    let mut got = recv_n(&mut rx, 2, "both messages").await;
    got.sort_by_key(|(seq, _, _)| *seq);
    let (_, trace_1, parent_1) = got[0];
    assert_eq!(
        trace_1,
        handler_cx.trace_id(),
        "the consumed message continues the enqueuer's trace"
    );
    assert_ne!(
        parent_1,
        handler_cx.span_id(),
        "the remote parent is the relay's producer span, a descendant of the enqueuing span"
    );
    let (_, trace_2, _) = got[1];
    assert_ne!(trace_2, TraceId::INVALID);
    assert_ne!(trace_2, handler_cx.trace_id());
    assert_ne!(
        trace_2, unrelated_trace,
        "a row without a stored context starts its own trace"
    );
    consumer.shutdown().await;
    broker.cleanup().await;
}
