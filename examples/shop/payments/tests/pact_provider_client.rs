//! The payments service's contract with the payment provider (Pact, consumer side):
//! `examples/shop/pacts/payments-payment-provider.json`, replayed against the provider
//! stand-in by `payment-provider/tests/pact_verify.rs`.
//!
//! The client under test is the one the service uses, [`ProviderClient`], pointed at the Pact
//! mock server: a charge (with its `Idempotency-Key`), a declined charge, and a refund.

use pact_consumer::prelude::*;
use serde_json::json;
use shop_payments::provider::{ProviderClient, ProviderReply};

/// A charge request as payments sends it.
fn charge_request(payment_method: &str, reference: &str) -> JsonPattern {
    json_pattern!({
        "amount_cents": like!(1200),
        "currency": like!("EUR"),
        "payment_method": payment_method,
        "reference": like!(reference)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_and_refunds() {
    let _writing = shop_contract::write_lock().await;
    let mut pact = shop_contract::pact("payments", "payment-provider");
    pact.interaction("a charge", "", |mut i| {
        i.request
            .post()
            .path("/v1/charges")
            .content_type("application/json")
            .header("accept", "application/json")
            // One key per order: a retried charge is applied once.
            .header("idempotency-key", term!("^charge-.+$", "charge-o-pact-1"))
            .json_body(charge_request("card_ok", "o-pact-1"));
        i.response
            .created()
            .content_type("application/json")
            .json_body(json_pattern!({
                "id": term!("^ch_[A-Za-z0-9_-]+$", "ch_pact_1"),
                "status": "succeeded"
            }));
        i
    });
    pact.interaction("a declined charge", "", |mut i| {
        i.request
            .post()
            .path("/v1/charges")
            .content_type("application/json")
            .header("accept", "application/json")
            .header("idempotency-key", term!("^charge-.+$", "charge-o-pact-2"))
            .json_body(charge_request("card_declined", "o-pact-2"));
        i.response
            .status(402)
            .content_type("application/json")
            .json_body(json_pattern!({
                "error": {"code": "card_declined", "message": like!("the card was declined")}
            }));
        i
    });
    pact.interaction("a refund", "", |mut i| {
        i.given_with_params("charge exists", &json!({"charge_id": "ch_pact_1"}));
        i.request
            .post()
            .path("/v1/charges/ch_pact_1/refund")
            .content_type("application/json")
            .header("accept", "application/json");
        i.response
            .ok()
            .content_type("application/json")
            .json_body(json_pattern!({"status": "refunded"}));
        i
    });
    let server = pact.start_mock_server(None, None);
    let client =
        ProviderClient::new(server.url().as_str(), &ProviderClient::default_policy()).unwrap();

    let charged = client
        .charge("charge-o-pact-1", 1200, "card_ok", "o-pact-1")
        .await
        .unwrap();
    assert_eq!(
        charged,
        ProviderReply::Charged {
            charge_id: "ch_pact_1".into()
        }
    );
    let declined = client
        .charge("charge-o-pact-2", 1200, "card_declined", "o-pact-2")
        .await
        .unwrap();
    assert_eq!(
        declined,
        ProviderReply::Declined {
            reason: "card_declined".into()
        }
    );
    assert_eq!(
        client.refund("ch_pact_1").await.unwrap(),
        ProviderReply::Refunded
    );
}
