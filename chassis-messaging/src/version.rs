//! Event versions: every event says which version of its payload it carries; a consumer reads
//! the versions it knows, upcasts older ones, and dead-letters the rest with a clear reason.
//!
//! # Where the version travels
//! In the CloudEvents extension attribute `eventversion` (AMQP header
//! `cloudEvents:eventversion`, a decimal string; [`Envelope::version`], set with
//! [`Envelope::version`](crate::Envelope::version())), not in `dataschema`:
//!
//! - `dataschema` is a URI naming a schema document. Its form is each producer's choice, so a
//!   consumer would have to parse a version out of someone's URI convention, and an event that
//!   points to no document (most do not) would have nowhere to say its version.
//! - An integer is compared exactly and cheaply before the body is parsed, and reads the same
//!   in any language's CloudEvents SDK (extensions are plain attributes there).
//! - `dataschema` stays free for what it is for: a producer may still set it to the document
//!   of the version it sends.
//!
//! An event without the attribute (published before versions were introduced, or by a producer
//! that does not version) is version 1, so adding versions to a running system changes
//! nothing for what is already in the queues.
//!
//! # How a payload evolves
//! A change every reader of the old version still reads (a new optional field, a field a
//! reader may ignore) keeps the version. Anything else (a field renamed, removed, retyped or
//! given a new meaning) is a new version, rolled out readers first:
//!
//! 1. the new payload type is written with `VERSION = n + 1` and an
//!    [`upcast`](Versioned::upcast) from `n` (the old payload type, kept as a plain struct, read
//!    and converted), and every consumer is deployed with it: they now read both versions;
//! 2. then the producer sends version `n + 1`;
//! 3. once no version-`n` event can be in flight any more (queues, retry tiers and outboxes
//!    drained), the upcaster may go.
//!
//! A consumer that receives a version it does not know (a producer upgraded first, or an event
//! from the future) cannot read it correctly now or later: [`versioned`] handlers reject it,
//! and the consumer dead-letters it to `Q.dlq` with the reason in `x-chassis-failure-reason`,
//! e.g. `unsupported event version: order.placed version 3, this consumer reads versions [1,
//! 2]` ([`ErrorKind::UnsupportedVersion`]). Once the consumer is upgraded the
//! dead letters can be shovelled back.
//!
//! # Example
//! ```
//! use chassis_messaging::version::Versioned;
//! use chassis_messaging::{Envelope, IncomingMessage};
//! use serde::{Deserialize, Serialize};
//!
//! /// Version 1 carried the amount in currency units, as a JSON number.
//! #[derive(Deserialize)]
//! struct PaidV1 { order_id: String, amount: f64 }
//!
//! /// Version 2: integer cents, no rounding surprises.
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct Paid { order_id: String, amount_cents: i64 }
//!
//! impl Versioned for Paid {
//!     const VERSION: u32 = 2;
//!     const UPCASTS_FROM: &'static [u32] = &[1];
//!     fn upcast(from: u32, data: serde_json::Value) -> Result<Self, serde_json::Error> {
//!         debug_assert_eq!(from, 1);
//!         let v1: PaidV1 = serde_json::from_value(data)?;
//!         Ok(Paid { order_id: v1.order_id, amount_cents: (v1.amount * 100.0).round() as i64 })
//!     }
//! }
//!
//! // An old producer's event (version 1) ...
//! let old = Envelope::new("shop/payments", "payment.made", serde_json::json!({"order_id": "o-1", "amount": 12.5}));
//! let msg = IncomingMessage::from_outgoing(old.to_message("shop.events").unwrap());
//! let read = msg.decode_versioned::<Paid>().unwrap();
//! assert_eq!(read.data, Paid { order_id: "o-1".into(), amount_cents: 1250 });
//!
//! // ... a current one (version 2) ...
//! let new = Envelope::new("shop/payments", "payment.made", Paid { order_id: "o-2".into(), amount_cents: 700 })
//!     .version(Paid::VERSION);
//! let msg = IncomingMessage::from_outgoing(new.to_message("shop.events").unwrap());
//! assert_eq!(msg.decode_versioned::<Paid>().unwrap().data.amount_cents, 700);
//!
//! // ... and one from the future, which this reader refuses, saying why.
//! let msg = IncomingMessage::from_outgoing(new.version(3).to_message("shop.events").unwrap());
//! let err = msg.decode_versioned::<Paid>().unwrap_err();
//! assert!(err.to_string().contains("payment.made version 3, this consumer reads versions [1, 2]"));
//! ```

use std::future::Future;
use std::marker::PhantomData;

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;

use crate::amqp::consumer::{Handler, Outcome};
use crate::amqp::incoming::IncomingMessage;
use crate::envelope::{Envelope, Received};
use crate::error::{Error, ErrorKind};

/// A payload type with a schema version, which may also read older versions.
pub trait Versioned: DeserializeOwned {
    /// The version this type is (at least 1). Producers send it with
    /// [`Envelope::version`](crate::Envelope::version()).
    const VERSION: u32;

    /// Older versions [`upcast`](Self::upcast) reads. Defaults to none.
    const UPCASTS_FROM: &'static [u32] = &[];

    /// Reads the JSON payload of version `from` (one of [`UPCASTS_FROM`](Self::UPCASTS_FROM))
    /// as this version. The default knows no older version.
    ///
    /// # Errors
    /// When `data` is not a valid payload of version `from`.
    fn upcast(from: u32, data: serde_json::Value) -> Result<Self, serde_json::Error> {
        let _ = data;
        Err(serde::de::Error::custom(format_args!(
            "no upcaster from version {from}"
        )))
    }

    /// Every version this type reads, ascending.
    fn readable() -> Vec<u32> {
        let mut versions: Vec<u32> = Self::UPCASTS_FROM.to_vec();
        versions.push(Self::VERSION);
        versions.sort_unstable();
        versions.dedup();
        versions
    }
}

fn body_error(what: String, e: serde_json::Error) -> Error {
    Error::with_source(
        ErrorKind::Decode {
            reason: format!("body is not a valid {what}: {e}"),
        },
        e,
    )
}

impl IncomingMessage {
    /// Decodes a chassis event whose payload is `T`, by its version: `T::VERSION` is read as
    /// `T`, a version of [`T::UPCASTS_FROM`](Versioned::UPCASTS_FROM) through
    /// [`T::upcast`](Versioned::upcast). The envelope keeps the version the event carried.
    ///
    /// # Errors
    /// Those of [`decode`](Self::decode), and
    /// [`ErrorKind::UnsupportedVersion`] for any other version (checked before the body is
    /// parsed).
    pub fn decode_versioned<T: Versioned>(&self) -> Result<Envelope<T>, Error> {
        let received = Received {
            headers: self.headers(),
            content_type: self.content_type(),
            correlation_id: self.correlation_id(),
            timestamp: self.timestamp(),
            body: self.body(),
        };
        let name = std::any::type_name::<T>;
        Envelope::decode_with(received, |kind, version, body| {
            if version == T::VERSION {
                serde_json::from_slice(body)
                    .map_err(|e| body_error(format!("{} (version {version})", name()), e))
            } else if T::UPCASTS_FROM.contains(&version) {
                serde_json::from_slice(body)
                    .and_then(|value| T::upcast(version, value))
                    .map_err(|e| body_error(format!("version {version} of {}", name()), e))
            } else {
                Err(Error::new(ErrorKind::UnsupportedVersion {
                    event_type: kind.to_owned(),
                    version,
                    readable: T::readable(),
                }))
            }
        })
    }
}

/// A handler of versioned events; see [`versioned`].
pub struct VersionedHandler<T, F> {
    f: F,
    _payload: PhantomData<fn() -> T>,
}

impl<T, F> std::fmt::Debug for VersionedHandler<T, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionedHandler")
            .field("payload", &std::any::type_name::<T>())
            .finish()
    }
}

/// Wraps `f` into a consumer [`Handler`] that decodes each message with
/// [`IncomingMessage::decode_versioned`]: `f` sees every version it reads as the current
/// payload type. A message of an unknown version, or one that fails decoding or validation,
/// is rejected (the consumer dead-letters it with the error as `x-chassis-failure-reason`)
/// and `f` is not called.
///
/// ```no_run
/// use chassis_messaging::version::{Versioned, versioned};
/// use chassis_messaging::{Consumer, ConsumerConfig, Envelope, Outcome};
///
/// #[derive(serde::Deserialize)]
/// struct OrderPlaced { order_id: String }
/// impl Versioned for OrderPlaced { const VERSION: u32 = 1; }
///
/// # async fn run(conn: chassis_messaging::Connection, queue: chassis_messaging::QueueConfig) -> Result<(), chassis_messaging::Error> {
/// let consumer = Consumer::start(&conn, queue, ConsumerConfig::default(),
///     versioned(|e: Envelope<OrderPlaced>| async move {
///         println!("order {} (sent as version {})", e.data.order_id, e.version);
///         Outcome::Ack
///     })).await?;
/// # Ok(()) }
/// ```
pub fn versioned<T, F, Fut>(f: F) -> VersionedHandler<T, F>
where
    T: Versioned + Send + 'static,
    F: Fn(Envelope<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    VersionedHandler {
        f,
        _payload: PhantomData,
    }
}

impl<T, F, Fut> Handler for VersionedHandler<T, F>
where
    T: Versioned + Send + 'static,
    F: Fn(Envelope<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn handle(&self, msg: IncomingMessage) -> BoxFuture<'static, Outcome> {
        match msg.decode_versioned::<T>() {
            Ok(event) => Box::pin((self.f)(event)),
            Err(e) => {
                if matches!(e.kind(), ErrorKind::UnsupportedVersion { .. }) {
                    tracing::warn!(error = %e, "event of an unknown version rejected");
                }
                let reason = e.to_string();
                Box::pin(async move { Outcome::Reject { reason } })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::EVENTVERSION;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V2 {
        name: String,
    }

    impl Versioned for V2 {
        const VERSION: u32 = 2;
        const UPCASTS_FROM: &'static [u32] = &[1];
        fn upcast(from: u32, data: serde_json::Value) -> Result<Self, serde_json::Error> {
            assert_eq!(from, 1);
            #[derive(Deserialize)]
            struct V1 {
                first: String,
                last: String,
            }
            let v1: V1 = serde_json::from_value(data)?;
            Ok(V2 {
                name: format!("{} {}", v1.first, v1.last),
            })
        }
    }

    #[derive(Debug, Deserialize)]
    struct Plain {
        #[allow(dead_code)]
        n: u32,
    }
    impl Versioned for Plain {
        const VERSION: u32 = 1;
    }

    fn incoming(body: serde_json::Value, version: Option<u32>) -> IncomingMessage {
        let mut msg = Envelope::new("s", "thing.named", body)
            .to_message("x")
            .unwrap();
        match version {
            Some(v) => msg
                .headers
                .insert(EVENTVERSION.into(), v.to_string().into()),
            None => msg.headers.remove(EVENTVERSION),
        };
        IncomingMessage::from_outgoing(msg)
    }

    #[test]
    fn current_and_upcast_versions_are_read_others_refused() {
        let v2 = incoming(serde_json::json!({"name": "Ada L"}), Some(2));
        let e = v2.decode_versioned::<V2>().unwrap();
        assert_eq!((e.version, e.data.name.as_str()), (2, "Ada L"));

        let v1 = incoming(serde_json::json!({"first": "Ada", "last": "L"}), Some(1));
        let e = v1.decode_versioned::<V2>().unwrap();
        assert_eq!((e.version, e.data.name.as_str()), (1, "Ada L"));

        // No attribute: version 1, upcast.
        let legacy = incoming(serde_json::json!({"first": "Ada", "last": "L"}), None);
        assert_eq!(legacy.decode_versioned::<V2>().unwrap().data.name, "Ada L");

        let v3 = incoming(serde_json::json!({"name": "x"}), Some(3));
        let err = v3.decode_versioned::<V2>().unwrap_err();
        assert_eq!(
            err.kind(),
            &ErrorKind::UnsupportedVersion {
                event_type: "thing.named".into(),
                version: 3,
                readable: vec![1, 2],
            }
        );

        // A type without upcasters refuses version 2 rather than guess.
        let err = incoming(serde_json::json!({"n": 1}), Some(2))
            .decode_versioned::<Plain>()
            .unwrap_err();
        assert!(err.to_string().contains("reads versions [1]"), "{err}");

        // A bad v1 body is a decode error naming the version.
        let err = incoming(serde_json::json!({"first": 1}), Some(1))
            .decode_versioned::<V2>()
            .unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::Decode { reason } if reason.contains("version 1")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_handler_rejects_unknown_versions_with_the_reason() {
        let h = versioned(|e: Envelope<V2>| async move {
            assert_eq!(e.data.name, "a b");
            Outcome::Ack
        });
        let ok = h
            .handle(incoming(
                serde_json::json!({"first": "a", "last": "b"}),
                Some(1),
            ))
            .await;
        assert_eq!(ok, Outcome::Ack);
        match h
            .handle(incoming(serde_json::json!({"name": "a b"}), Some(7)))
            .await
        {
            Outcome::Reject { reason } => {
                assert!(reason.contains("thing.named version 7"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
}
