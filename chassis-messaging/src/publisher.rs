//! Publishing with publisher confirms.
//!
//! [`Publish`] is the object-safe publishing trait the rest of the chassis codes against (the
//! outbox relay, services): `publish(msg).await` returns `Ok(())` only once the broker
//! confirmed the message.

use futures_util::future::BoxFuture;

use crate::error::Error;
use crate::message::OutgoingMessage;

/// Something that publishes messages and reports success only once they are safe.
///
/// For the RabbitMQ publisher, `Ok(())` means the broker confirmed the message (publisher
/// confirms) and routed it to at least one queue; for the in-memory transport it means the
/// message was enqueued. The trait is object-safe: hold it as `Arc<dyn Publish>`.
pub trait Publish: Send + Sync {
    /// Publishes `msg`; resolves once the broker confirmed it.
    ///
    /// # Errors
    /// [`ErrorKind::Unroutable`](crate::error::ErrorKind::Unroutable) when no queue is bound for
    /// the routing key, [`ErrorKind::Nacked`](crate::error::ErrorKind::Nacked),
    /// [`ErrorKind::Timeout`](crate::error::ErrorKind::Timeout),
    /// [`ErrorKind::Connection`](crate::error::ErrorKind::Connection) or
    /// [`ErrorKind::Shutdown`](crate::error::ErrorKind::Shutdown).
    fn publish(&self, msg: OutgoingMessage) -> BoxFuture<'_, Result<(), Error>>;
}

impl<P: Publish + ?Sized> Publish for std::sync::Arc<P> {
    fn publish(&self, msg: OutgoingMessage) -> BoxFuture<'_, Result<(), Error>> {
        (**self).publish(msg)
    }
}
