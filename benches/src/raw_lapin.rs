//! The raw-lapin baseline both broker benchmarks (`messaging`, `outbox`) measure the chassis
//! against: confirmed publishing straight on a lapin channel, with a pipelined window.

use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation};

/// No properties (but persistence, which [`publish`] forces).
pub fn bare(_: usize) -> BasicProperties {
    BasicProperties::default()
}

/// How the raw-lapin baseline submits its publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawMode {
    /// lapin's documented pattern: await each `basic_publish` (the frame handed to the
    /// connection), collect its `PublisherConfirm` in a window.
    Sequential,
    /// Up to `window` publishes in flight at once, each awaiting its own send and confirm:
    /// the same shape the chassis run has, and the faster of the two on this broker.
    Concurrent,
}

/// Publishes `n` persistent, mandatory messages with `body` on a fresh connection with
/// confirms, at most `window` unconfirmed; returns msg/s (connection setup not counted).
/// The `i`-th message has the properties `properties(i)` (persistent is forced):
/// [`bare`] for none, or, for a baseline that sends the same messages as the chassis run it
/// is compared with, their message id, content type and headers, built while publishing as a
/// hand-written publisher would.
#[allow(clippy::too_many_arguments)]
pub async fn publish(
    url: &str,
    exchange: &str,
    routing_key: &str,
    n: usize,
    window: usize,
    body: &[u8],
    mode: RawMode,
    properties: impl Fn(usize) -> BasicProperties,
) -> f64 {
    let conn = lapin::Connection::connect(
        url,
        lapin::ConnectionProperties::default().with_connection_name("bench-raw".into()),
    )
    .await
    .expect("raw connect");
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let publish = |i: usize| {
        ch.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            properties(i).with_delivery_mode(2),
        )
    };
    let start = Instant::now();
    match mode {
        RawMode::Sequential => {
            let mut inflight: FuturesUnordered<lapin::PublisherConfirm> = FuturesUnordered::new();
            for i in 0..n {
                if inflight.len() >= window {
                    let c: Confirmation = inflight.next().await.unwrap().expect("confirm");
                    assert!(matches!(c, Confirmation::Ack(None)));
                }
                inflight.push(publish(i).await.expect("publish"));
            }
            while let Some(c) = inflight.next().await {
                assert!(matches!(c.expect("confirm"), Confirmation::Ack(None)));
            }
        }
        RawMode::Concurrent => {
            let mut inflight = FuturesUnordered::new();
            for i in 0..n {
                if inflight.len() >= window {
                    inflight.next().await.unwrap();
                }
                let sent = publish(i);
                inflight.push(async move {
                    let confirm = sent.await.expect("publish");
                    let c = confirm.await.expect("confirm");
                    assert!(matches!(c, Confirmation::Ack(None)));
                });
            }
            while inflight.next().await.is_some() {}
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = conn.close(200, "bye".into()).await;
    rate
}
