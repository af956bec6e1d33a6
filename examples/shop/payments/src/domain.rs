//! Payment records and the rules around the provider call.
//!
//! The provider call cannot sit inside a database transaction (it is slow and remote), so a
//! charge is three steps: check the record ([`existing`]), call the provider with the idempotency
//! key [`idempotency_key`] (`charge-<order id>`), then record the outcome ([`record_charge`]) in
//! the consumer's inbox transaction together with the outgoing event. A crash between the call and
//! the record redelivers the command; the second call carries the same key, so the provider
//! replays the first result instead of charging again: **one charge per order**.
//!
//! A refund that arrives before (or while) its charge is processed leaves a `CANCELLED`
//! tombstone; a charge arriving afterwards is not attempted, and a charge that was already
//! in flight is refunded at once ([`Recorded::refund_now`]).
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), chassis_core::BoxError> {
//! use shop_common::db::Db;
//! use shop_common::events::{ChargePayment, PAYMENT_SUCCEEDED};
//! use shop_payments::domain::{self, ChargeOutcome};
//!
//! let db = Db::open("sqlite::memory:")?;
//! domain::migrate(&db).await?;
//! let cmd = ChargePayment { order_id: "o-1".into(), amount_cents: 450, payment_method: "card_ok".into() };
//! assert!(domain::existing(&db, "o-1").await?.is_none());
//! let mut txn = db.begin().await?;
//! let rec = domain::record_charge(&mut txn.tx(), &cmd, &ChargeOutcome::Charged { charge_id: "ch_1".into() }).await?;
//! txn.commit().await?;
//! assert_eq!(rec.emits[0].kind, PAYMENT_SUCCEEDED);
//! # Ok(()) }
//! ```

use shop_common::db::{Db, Tx, now_ms};
use shop_common::events::{
    ChargePayment, Emit, PAYMENT_FAILED, PAYMENT_REFUNDED, PAYMENT_SUCCEEDED, PaymentFailed,
    PaymentRefunded, PaymentSucceeded,
};

/// The payments schema (portable SQL).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payments (
    order_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    charge_id TEXT,
    amount_cents BIGINT NOT NULL,
    reason TEXT,
    updated_ms BIGINT NOT NULL
)";

/// Money was taken.
pub const CHARGED: &str = "CHARGED";
/// The provider declined.
pub const DECLINED: &str = "DECLINED";
/// The provider could not be reached (after retries, or the breaker was open).
pub const FAILED: &str = "FAILED";
/// The charge was refunded.
pub const REFUNDED: &str = "REFUNDED";
/// A refund came before any charge: never charge this order.
pub const CANCELLED: &str = "CANCELLED";

/// Creates the table.
pub async fn migrate(db: &Db) -> Result<(), sqlx::Error> {
    db.execute_script(SCHEMA).await
}

/// The idempotency key sent to the provider for an order's charge.
pub fn idempotency_key(order_id: &str) -> String {
    format!("charge-{order_id}")
}

/// The status of an order's payment record, if any.
pub async fn existing(db: &Db, order_id: &str) -> Result<Option<String>, sqlx::Error> {
    match db
        .fetch_optional(
            "SELECT status FROM payments WHERE order_id = $1",
            &[order_id.into()],
        )
        .await?
    {
        Some(r) => Ok(Some(r.get::<String>("status")?)),
        None => Ok(None),
    }
}

/// What the provider said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// Charged.
    Charged {
        /// The provider's charge id.
        charge_id: String,
    },
    /// Declined (a final answer).
    Declined {
        /// The provider's code, e.g. `card_declined`.
        reason: String,
    },
    /// Not reachable / failing after retries, or the circuit breaker is open.
    Unavailable {
        /// Why, e.g. `payment_provider_unavailable`.
        reason: String,
    },
}

/// The result of [`record_charge`].
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// Events to put into the outbox.
    pub emits: Vec<Emit>,
    /// A charge that must be refunded right away (it raced with a cancellation).
    pub refund_now: Option<String>,
}

/// Records the outcome of a charge (in the inbox transaction) and returns the event.
pub async fn record_charge(
    tx: &mut Tx<'_>,
    cmd: &ChargePayment,
    outcome: &ChargeOutcome,
) -> Result<Recorded, sqlx::Error> {
    let (status, charge_id, reason) = match outcome {
        ChargeOutcome::Charged { charge_id } => (CHARGED, Some(charge_id.as_str()), None),
        ChargeOutcome::Declined { reason } => (DECLINED, None, Some(reason.as_str())),
        ChargeOutcome::Unavailable { reason } => (FAILED, None, Some(reason.as_str())),
    };
    let inserted = tx
        .execute(
            "INSERT INTO payments (order_id, status, charge_id, amount_cents, reason, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (order_id) DO NOTHING",
            &[
                (&cmd.order_id).into(),
                status.into(),
                charge_id.into(),
                cmd.amount_cents.into(),
                reason.into(),
                now_ms().into(),
            ],
        )
        .await?;
    if inserted == 0 {
        // Decided before: a cancellation raced us. Undo a charge we just made.
        let refund_now = charge_id.map(str::to_owned);
        return Ok(Recorded {
            emits: Vec::new(),
            refund_now,
        });
    }
    let id = cmd.order_id.as_str();
    let emit = match outcome {
        ChargeOutcome::Charged { charge_id } => Emit::event(
            PAYMENT_SUCCEEDED,
            id,
            &PaymentSucceeded {
                order_id: id.to_owned(),
                charge_id: charge_id.clone(),
                amount_cents: cmd.amount_cents,
            },
        ),
        ChargeOutcome::Declined { reason } | ChargeOutcome::Unavailable { reason } => Emit::event(
            PAYMENT_FAILED,
            id,
            &PaymentFailed {
                order_id: id.to_owned(),
                reason: reason.clone(),
            },
        ),
    };
    Ok(Recorded {
        emits: vec![emit],
        refund_now: None,
    })
}

/// Records that a charge was refused because the order was cancelled first.
pub fn cancelled_event(order_id: &str) -> Emit {
    Emit::event(
        PAYMENT_FAILED,
        order_id,
        &PaymentFailed {
            order_id: order_id.to_owned(),
            reason: "cancelled".into(),
        },
    )
}

/// Prepares a refund (in the inbox transaction): returns the charge to refund, if the order was
/// charged. An order never charged gets a `CANCELLED` tombstone so its charge is never made.
pub async fn begin_refund(
    tx: &mut Tx<'_>,
    order_id: &str,
    reason: &str,
) -> Result<Option<String>, sqlx::Error> {
    let row = tx
        .fetch_optional(
            "SELECT status, charge_id FROM payments WHERE order_id = $1",
            &[order_id.into()],
        )
        .await?;
    match row {
        None => {
            tx.execute(
                "INSERT INTO payments (order_id, status, charge_id, amount_cents, reason, updated_ms) \
                 VALUES ($1, $2, NULL, 0, $3, $4)",
                &[order_id.into(), CANCELLED.into(), reason.into(), now_ms().into()],
            )
            .await?;
            Ok(None)
        }
        Some(r) if r.get::<String>("status")? == CHARGED => {
            Ok(r.get::<Option<String>>("charge_id")?)
        }
        Some(_) => Ok(None),
    }
}

/// Records a refund made at the provider; returns `payment.refunded` the first time.
pub async fn record_refund(
    tx: &mut Tx<'_>,
    order_id: &str,
    charge_id: &str,
) -> Result<Vec<Emit>, sqlx::Error> {
    let n = tx
        .execute(
            "UPDATE payments SET status = $1, updated_ms = $2 WHERE order_id = $3 AND status = $4",
            &[
                REFUNDED.into(),
                now_ms().into(),
                order_id.into(),
                CHARGED.into(),
            ],
        )
        .await?;
    if n == 0 {
        // The record may be a CANCELLED tombstone whose racing charge we refunded: keep the id.
        tx.execute(
            "UPDATE payments SET charge_id = COALESCE(charge_id, $1), updated_ms = $2 WHERE order_id = $3",
            &[charge_id.into(), now_ms().into(), order_id.into()],
        )
        .await?;
    }
    Ok(vec![Emit::event(
        PAYMENT_REFUNDED,
        order_id,
        &PaymentRefunded {
            order_id: order_id.to_owned(),
            charge_id: charge_id.to_owned(),
        },
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&format!("sqlite://{}", dir.path().join("p.db").display())).unwrap();
        migrate(&db).await.unwrap();
        (dir, db)
    }

    fn cmd(id: &str) -> ChargePayment {
        ChargePayment {
            order_id: id.into(),
            amount_cents: 700,
            payment_method: "card_ok".into(),
        }
    }

    #[test]
    fn key_is_stable_per_order() {
        assert_eq!(idempotency_key("o-1"), idempotency_key("o-1"));
        assert_ne!(idempotency_key("o-1"), idempotency_key("o-2"));
    }

    #[tokio::test]
    async fn outcomes_map_to_events_and_are_recorded_once() {
        let (_d, db) = db().await;
        let mut txn = db.begin().await.unwrap();
        let ok = record_charge(
            &mut txn.tx(),
            &cmd("a"),
            &ChargeOutcome::Charged {
                charge_id: "ch".into(),
            },
        )
        .await
        .unwrap();
        let declined = record_charge(
            &mut txn.tx(),
            &cmd("b"),
            &ChargeOutcome::Declined {
                reason: "card_declined".into(),
            },
        )
        .await
        .unwrap();
        let down = record_charge(
            &mut txn.tx(),
            &cmd("c"),
            &ChargeOutcome::Unavailable {
                reason: "payment_provider_unavailable".into(),
            },
        )
        .await
        .unwrap();
        txn.commit().await.unwrap();
        assert_eq!(ok.emits[0].kind, PAYMENT_SUCCEEDED);
        assert_eq!(ok.emits[0].payload["charge_id"], "ch");
        assert_eq!(
            (declined.emits[0].kind, &declined.emits[0].payload["reason"]),
            (PAYMENT_FAILED, &"card_declined".into())
        );
        assert_eq!(
            down.emits[0].payload["reason"],
            "payment_provider_unavailable"
        );
        assert_eq!(existing(&db, "a").await.unwrap().as_deref(), Some(CHARGED));
        assert_eq!(existing(&db, "b").await.unwrap().as_deref(), Some(DECLINED));
        // Recording again (a redelivery that slipped past the inbox) changes nothing.
        let mut txn = db.begin().await.unwrap();
        let again = record_charge(
            &mut txn.tx(),
            &cmd("b"),
            &ChargeOutcome::Declined {
                reason: "card_declined".into(),
            },
        )
        .await
        .unwrap();
        txn.commit().await.unwrap();
        assert!(again.emits.is_empty() && again.refund_now.is_none());
    }

    #[tokio::test]
    async fn refund_refunds_a_charge_once_and_cancels_an_uncharged_order() {
        let (_d, db) = db().await;
        let mut txn = db.begin().await.unwrap();
        record_charge(
            &mut txn.tx(),
            &cmd("a"),
            &ChargeOutcome::Charged {
                charge_id: "ch_a".into(),
            },
        )
        .await
        .unwrap();
        assert_eq!(
            begin_refund(&mut txn.tx(), "a", "payment_timeout")
                .await
                .unwrap()
                .as_deref(),
            Some("ch_a")
        );
        assert_eq!(
            record_refund(&mut txn.tx(), "a", "ch_a").await.unwrap()[0].kind,
            PAYMENT_REFUNDED
        );
        assert_eq!(
            begin_refund(&mut txn.tx(), "a", "payment_timeout")
                .await
                .unwrap(),
            None
        );
        // Refund first: tombstone; the charge in flight at that moment must be refunded.
        assert_eq!(
            begin_refund(&mut txn.tx(), "z", "payment_timeout")
                .await
                .unwrap(),
            None
        );
        txn.commit().await.unwrap();
        assert_eq!(existing(&db, "a").await.unwrap().as_deref(), Some(REFUNDED));
        assert_eq!(
            existing(&db, "z").await.unwrap().as_deref(),
            Some(CANCELLED)
        );
        let mut txn = db.begin().await.unwrap();
        let late = record_charge(
            &mut txn.tx(),
            &cmd("z"),
            &ChargeOutcome::Charged {
                charge_id: "ch_z".into(),
            },
        )
        .await
        .unwrap();
        txn.commit().await.unwrap();
        assert_eq!(late.refund_now.as_deref(), Some("ch_z"));
        assert!(late.emits.is_empty());
        assert_eq!(cancelled_event("z").payload["reason"], "cancelled");
    }
}
