//! The payments service, `shop-payments`: charges and refunds through the payment provider.
//!
//! It runs, in start order: telemetry; the database (the payments schema and the chassis
//! outbox/inbox tables); RabbitMQ, attached in the background (the shop's exchanges, the
//! `payments.charge` and `payments.refund` queues); the outbox relay; the charge consumer
//! (which calls the provider before its inbox transaction, see [`charge`]); the refund
//! consumer (through the inbox); a command with a field outside its limit
//! (`shop_common::limits`) is dead-lettered by `shop_common::events::decode` before the provider
//! is called or anything is written; HTTP (`GET /internal/payments/{order_id}`).
//!
//! Environment: `HTTP_ADDR` (default `127.0.0.1:8083`), `ADMIN_ADDR` (probes and
//! `/metrics`, default `127.0.0.1:9083`), `DATABASE_URL`, `DATA_DIR`, `AMQP_URL`,
//! `SHOP_NAMESPACE`, `CONSUMER_CONCURRENCY` (see `shop_common::service`), `PROVIDER_URL`
//! (default `http://127.0.0.1:8090`), `PROVIDER_POLICY` (a JSON `ResiliencePolicy`), and the
//! chassis' `LOG_FORMAT`, `RUST_LOG`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `PRE_STOP_DELAY`, ….

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use chassis_core::lifecycle::{App, LifecycleConfig};
use chassis_core::{BoxError, ServiceInfo};
use chassis_http::client::{ClientError, ClientErrorKind};
use chassis_http::health::HealthLayer;
use chassis_http::layers::StandardLayers;
use chassis_http::server::HttpServer;
use chassis_http::{ApiError, ApiResponse, ApiResult, ResultExt};
use chassis_messaging::lifecycle::ConsumerComponent;
use chassis_messaging::{IncomingMessage, Outcome};
use serde_json::{Value, json};
use shop_common::Shop;
use shop_common::db::{Db, InboxGroup, Tx};
use shop_common::events::{
    CMD_PAYMENT_CHARGE, CMD_PAYMENT_REFUND, COMMANDS_EXCHANGE, ChargePayment, Compensate, Emit,
    decode, retry,
};
use shop_common::limits;
use shop_common::service::{env, server_config};
use shop_payments::domain::{self, ChargeOutcome};
use shop_payments::provider::{ProviderClient, ProviderReply};

#[derive(Clone)]
struct Ctx {
    shop: Shop,
    db: Db,
    provider: ProviderClient,
    /// The charges' inbox: the charges recorded at the same time share a transaction.
    charges: InboxGroup,
}

fn main() -> Result<(), BoxError> {
    // One runtime thread unless SHOP_RUNTIME_THREADS says otherwise (see `shop_common::service::runtime`).
    shop_common::service::runtime()?.block_on(run())
}

async fn run() -> Result<(), BoxError> {
    // 1. Identity and telemetry.
    let info = ServiceInfo::from_env("payments", env!("CARGO_PKG_VERSION"));
    let telemetry = shop_common::service::telemetry(info.clone())?;
    let app = App::new("payments").config(LifecycleConfig::from_env()?);
    let shop = Shop::from_env("payments");

    // 2. The database (opened at start) with its outbox, and the provider's resilient client.
    let db = shop.database()?;
    let policy = match env("PROVIDER_POLICY", "").as_str() {
        "" => ProviderClient::default_policy(),
        json => serde_json::from_str(json)?,
    };
    let provider = ProviderClient::new(&env("PROVIDER_URL", "http://127.0.0.1:8090"), &policy)?;
    let provider_breaker = provider.breaker().cloned();
    let ctx = Ctx {
        shop: shop.clone(),
        db: db.clone(),
        provider: provider.clone(),
        charges: db.inbox_group(&shop, "payments.charge")?,
    };

    // 3. RabbitMQ, attached in the background: topology, relay, the two command consumers.
    let conn = shop.connect(&info)?;
    let charges = shop.queue("charge", &[(COMMANDS_EXCHANGE, CMD_PAYMENT_CHARGE)]);
    let refunds = shop.queue("refund", &[(COMMANDS_EXCHANGE, CMD_PAYMENT_REFUND)]);
    let topology = shop
        .topology()
        .queue(charges.clone())
        .queue(refunds.clone());
    let relay = db.relay(&conn)?;
    let charge_handler = shop.controlled(&conn, &charges, move |msg| charge(ctx.clone(), msg));
    let charger = ConsumerComponent::new(&conn, charges, shop.consumer_config(), charge_handler);
    let refunder = db.consumer(&shop, &conn, refunds, "payments.refund", move |msg, tx| {
        Box::pin(refund(provider.clone(), msg, tx))
    })?;

    // 4. HTTP: the internal API behind the gateway's service tokens (it reads payments for the
    //    order details), in the standard layers. With mTLS, only the gateway's certificate gets
    //    through as well.
    let routes = shop_common::tls::only_callers(
        Router::new()
            .route("/internal/payments/{order_id}", get(payment))
            .layer(shop_common::auth::require_from_env("payments")?),
        &["gateway"],
    )?
    .with_state(db.clone())
    // Contract tests' provider states, only with SHOP_PACT_STATES=1 (see `shop_common::pact`).
    .merge(shop_common::pact::routes({
        let db = db.clone();
        move |change| shop_payments::pact_states::setup(db.clone(), change)
    }));
    let control = shop.control(app.health());
    if let Some(breaker) = provider_breaker {
        control.register_breaker(breaker);
    }
    let probes = HealthLayer::new(app.health().clone()).prometheus(telemetry.prometheus_handle());
    let service = routes.layer(StandardLayers::new());

    // 5. Run: start in this order; on SIGTERM stop in stages.
    app.component(telemetry)
        .component(db.component(domain::SCHEMA))
        .component(conn.component().declare(topology))
        .component(relay)
        .component(charger)
        .component(refunder)
        .component(shop_common::admin::with_admin(
            HttpServer::new(server_config(8083)?, service).probes(probes),
            control,
        )?)
        .run()
        .await?;
    Ok(())
}

/// `payment.charge`. The provider call cannot sit inside a database transaction (it is slow
/// and remote, and on SQLite the transaction holds the write lock), so this handler records
/// the message in the inbox after the call, through the charges' group commit
/// ([`InboxGroup`]: the charges recorded at the same time share a transaction); a redelivery
/// calls the provider again with the same idempotency key, which replays the first answer.
async fn charge(ctx: Ctx, msg: IncomingMessage) -> Outcome {
    charge_once(&ctx, &msg).await.err().unwrap_or(Outcome::Ack)
}

async fn charge_once(ctx: &Ctx, msg: &IncomingMessage) -> Result<(), Outcome> {
    shop_common::db::record_wait("payments.charge", msg);
    let cmd: ChargePayment = decode(msg)?;
    let Some(id) = msg.message_id() else {
        return Err(Outcome::reject("message has no message_id"));
    };
    if let Some(status) = domain::existing(&ctx.db, &cmd.order_id)
        .await
        .map_err(retry)?
    {
        if status == domain::CANCELLED {
            // Refund came first: never charge; tell the saga (which already moved on).
            if let Some(mut txn) = ctx.db.claim("payments.charge", id).await.map_err(retry)? {
                let cancelled = [domain::cancelled_event(&cmd.order_id)];
                txn.emit(&ctx.shop, &cancelled, Some(id))
                    .await
                    .map_err(retry)?;
                txn.commit().await.map_err(retry)?;
            }
        }
        // Decided before (a redelivery that reached us after the record): nothing to do.
        return Ok(());
    }
    let key = domain::idempotency_key(&cmd.order_id);
    let outcome = match ctx
        .provider
        .charge(&key, cmd.amount_cents, &cmd.payment_method, &cmd.order_id)
        .await
    {
        Ok(ProviderReply::Charged { charge_id }) => ChargeOutcome::Charged { charge_id },
        Ok(ProviderReply::Declined { reason }) => ChargeOutcome::Declined { reason },
        Ok(ProviderReply::Refunded) => ChargeOutcome::Declined {
            reason: "already_refunded".into(),
        },
        Err(err) => {
            tracing::warn!(order_id = %cmd.order_id, error = %err, attempts = err.attempts(), "payment provider unavailable");
            ChargeOutcome::Unavailable {
                reason: unavailable_reason(&err),
            }
        }
    };
    // Recorded in a transaction shared with the other charges recorded at the same time.
    let recorded = {
        let (cmd, outcome) = (cmd.clone(), outcome.clone());
        ctx.charges
            .process(id, move |mut tx| {
                let (cmd, outcome) = (cmd.clone(), outcome.clone());
                Box::pin(async move {
                    let recorded = domain::record_charge(&mut tx, &cmd, &outcome)
                        .await
                        .map_err(retry)?;
                    Ok((recorded.refund_now, recorded.emits))
                })
            })
            .await?
    };
    let Some((refund_now, _)) = recorded else {
        return Ok(());
    };
    tracing::info!(order_id = %cmd.order_id, ?outcome, "payment recorded");
    if let Some(charge_id) = refund_now {
        // The order was cancelled while we were charging: give the money back now.
        ctx.provider
            .refund(&charge_id)
            .await
            .map_err(|e| Outcome::retry(format!("refund: {e}")))?;
        let mut txn = ctx.db.begin().await.map_err(retry)?;
        let emits = domain::record_refund(&mut txn.tx(), &cmd.order_id, &charge_id)
            .await
            .map_err(retry)?;
        txn.emit(&ctx.shop, &emits, Some(id)).await.map_err(retry)?;
        txn.commit().await.map_err(retry)?;
    }
    Ok(())
}

fn unavailable_reason(err: &ClientError) -> String {
    match err.kind() {
        ClientErrorKind::CircuitOpen { .. } => "payment_provider_circuit_open".into(),
        _ => "payment_provider_unavailable".into(),
    }
}

/// `payment.refund`, once through the inbox. The provider's refund is idempotent: if the
/// transaction does not commit, the redelivery refunds again harmlessly and records it.
async fn refund(
    provider: ProviderClient,
    msg: IncomingMessage,
    mut tx: Tx<'_>,
) -> Result<Vec<Emit>, Outcome> {
    let cmd: Compensate = decode(&msg)?;
    let charged = domain::begin_refund(&mut tx, &cmd.order_id, &cmd.reason)
        .await
        .map_err(retry)?;
    let Some(charge_id) = charged else {
        return Ok(Vec::new());
    };
    provider
        .refund(&charge_id)
        .await
        .map_err(|e| Outcome::retry(format!("refund: {e}")))?;
    domain::record_refund(&mut tx, &cmd.order_id, &charge_id)
        .await
        .map_err(retry)
}

/// `GET /internal/payments/{order_id}`; an id longer than `MAX_ORDER_ID_LEN` is 422.
async fn payment(State(db): State<Db>, Path(order_id): Path<String>) -> ApiResult<Value> {
    limits::check_order_id("order_id", &order_id)?;
    match domain::existing(&db, &order_id).await.or_internal()? {
        Some(status) => Ok(ApiResponse::ok(
            json!({"order_id": order_id, "status": status}),
        )),
        None => Err(ApiError::not_found("no payment for this order")),
    }
}
