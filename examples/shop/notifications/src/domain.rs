//! Notifications: one per finished order.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), chassis_core::BoxError> {
//! use shop_common::db::Db;
//! use shop_common::events::OrderFinished;
//! use shop_notifications::domain;
//!
//! let db = Db::open("sqlite::memory:")?;
//! domain::migrate(&db).await?;
//! let e = OrderFinished { order_id: "o-1".into(), customer_id: "c".into(), status: "CONFIRMED".into(), reason: None };
//! let mut txn = db.begin().await?;
//! assert!(domain::record(&mut txn.tx(), &e).await?);
//! assert!(!domain::record(&mut txn.tx(), &e).await?, "a second time is absorbed");
//! txn.commit().await?;
//! assert_eq!(domain::list(&db, Some("o-1")).await?.len(), 1);
//! # Ok(()) }
//! ```

use serde::{Deserialize, Serialize};
use shop_common::db::{Db, Row, Tx, now_ms};
use shop_common::events::OrderFinished;

/// The notifications schema (portable SQL).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS notifications (
    id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL UNIQUE,
    customer_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    created_ms BIGINT NOT NULL
)";

/// Creates the table.
pub async fn migrate(db: &Db) -> Result<(), sqlx::Error> {
    db.execute_script(SCHEMA).await
}

/// A notification sent to a customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Id (UUID v7).
    pub id: String,
    /// The order.
    pub order_id: String,
    /// The customer.
    pub customer_id: String,
    /// `order_confirmed` or `order_failed`.
    pub kind: String,
    /// The text.
    pub message: String,
    /// When, ms since epoch.
    pub created_ms: i64,
}

/// The text for a finished order.
pub fn message_for(e: &OrderFinished) -> (&'static str, String) {
    match e.reason.as_deref() {
        None => (
            "order_confirmed",
            format!("Your order {} is confirmed.", e.order_id),
        ),
        Some(reason) => (
            "order_failed",
            format!(
                "Your order {} could not be completed ({reason}).",
                e.order_id
            ),
        ),
    }
}

/// Records the notification for `e`; `false` when the order already has one.
pub async fn record(tx: &mut Tx<'_>, e: &OrderFinished) -> Result<bool, sqlx::Error> {
    let (kind, message) = message_for(e);
    let n = tx
        .execute(
            "INSERT INTO notifications (id, order_id, customer_id, kind, message, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (order_id) DO NOTHING",
            &[
                uuid::Uuid::now_v7().to_string().into(),
                (&e.order_id).into(),
                (&e.customer_id).into(),
                kind.into(),
                message.into(),
                now_ms().into(),
            ],
        )
        .await?;
    Ok(n == 1)
}

fn from_row(r: &Row) -> Result<Notification, sqlx::Error> {
    Ok(Notification {
        id: r.get("id")?,
        order_id: r.get("order_id")?,
        customer_id: r.get("customer_id")?,
        kind: r.get("kind")?,
        message: r.get("message")?,
        created_ms: r.get("created_ms")?,
    })
}

/// Notifications of one order, or the latest 100.
pub async fn list(db: &Db, order_id: Option<&str>) -> Result<Vec<Notification>, sqlx::Error> {
    let rows = match order_id {
        Some(id) => {
            db.fetch_all(
                "SELECT id, order_id, customer_id, kind, message, created_ms FROM notifications WHERE order_id = $1",
                &[id.into()],
            )
            .await?
        }
        None => {
            db.fetch_all(
                "SELECT id, order_id, customer_id, kind, message, created_ms FROM notifications \
                 ORDER BY created_ms DESC LIMIT 100",
                &[],
            )
            .await?
        }
    };
    rows.iter().map(from_row).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_notification_per_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&format!("sqlite://{}", dir.path().join("n.db").display())).unwrap();
        migrate(&db).await.unwrap();
        let ok = OrderFinished {
            order_id: "a".into(),
            customer_id: "c".into(),
            status: "CONFIRMED".into(),
            reason: None,
        };
        let bad = OrderFinished {
            order_id: "b".into(),
            customer_id: "c".into(),
            status: "FAILED".into(),
            reason: Some("out_of_stock".into()),
        };
        for _ in 0..3 {
            let mut txn = db.begin().await.unwrap();
            record(&mut txn.tx(), &ok).await.unwrap();
            record(&mut txn.tx(), &bad).await.unwrap();
            txn.commit().await.unwrap();
        }
        let all = list(&db, None).await.unwrap();
        assert_eq!(all.len(), 2);
        let b = list(&db, Some("b")).await.unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].kind, "order_failed");
        assert!(b[0].message.contains("out_of_stock"));
        assert!(list(&db, Some("zzz")).await.unwrap().is_empty());
    }
}
