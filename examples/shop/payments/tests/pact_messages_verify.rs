//! Payments honours its message pacts (Pact V4 asynchronous messages, provider side): every
//! event a consumer's pact expects from `payments` (`*-payments-messages.json` in
//! `examples/shop/pacts/`) is produced by payments' own domain code on SQLite
//! (`domain::record_charge` for `payment.succeeded` and `payment.failed`,
//! `domain::record_refund` for `payment.refunded`), wrapped in the envelope its outbox
//! publishes (`Emit::envelope` with the service `payments`), and matched against the pact: a
//! missing or renamed field, a wrong type or another attribute fails the test.

use shop_common::db::{Db, Tx};
use shop_common::events::{ChargePayment, Emit};
use shop_payments::domain::{self, ChargeOutcome};

fn charge(order_id: &str) -> ChargePayment {
    ChargePayment {
        order_id: order_id.into(),
        amount_cents: 1_350,
        payment_method: "card_ok".into(),
    }
}

async fn one(db: &Db, f: impl AsyncFnOnce(&mut Tx<'_>) -> Vec<Emit>) -> Emit {
    let mut txn = db.begin().await.unwrap();
    let mut emits = f(&mut txn.tx()).await;
    txn.commit().await.unwrap();
    assert_eq!(emits.len(), 1, "{emits:?}");
    emits.remove(0)
}

#[tokio::test]
async fn honours_its_message_pacts() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&format!("sqlite://{}", dir.path().join("p.db").display())).unwrap();
    domain::migrate(&db).await.unwrap();

    let charged = ChargeOutcome::Charged {
        charge_id: "ch_42".into(),
    };
    let succeeded = one(&db, async |tx| {
        domain::record_charge(tx, &charge("o-1"), &charged)
            .await
            .unwrap()
            .emits
    })
    .await;
    let declined = ChargeOutcome::Declined {
        reason: "card_declined".into(),
    };
    let failed = one(&db, async |tx| {
        domain::record_charge(tx, &charge("o-2"), &declined)
            .await
            .unwrap()
            .emits
    })
    .await;
    let refunded = one(&db, async |tx| {
        let charge_id = domain::begin_refund(tx, "o-1", "payment_timeout")
            .await
            .unwrap()
            .expect("o-1 was charged");
        domain::record_refund(tx, "o-1", &charge_id).await.unwrap()
    })
    .await;
    let emits = [
        ("a payment succeeded", succeeded),
        ("a payment failed", failed),
        ("a payment was refunded", refunded),
    ];
    shop_contract::messages::verify_emits(
        "payments",
        Some("0193a5c0-3333-7000-8000-000000000001"),
        &emits,
    )
    .await;
}
