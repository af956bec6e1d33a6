//! The payments service: `shop-payments` (env: `HTTP_ADDR`, `DATABASE_URL`, `AMQP_URL`,
//! `PROVIDER_URL` (default `http://127.0.0.1:8090`), `PROVIDER_POLICY` (a JSON
//! `ResiliencePolicy`); see `shop_common::runtime`).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use chassis_core::BoxError;
use chassis_http::client::{ClientError, ClientErrorKind};
use shop_common::events::{
    CMD_PAYMENT_CHARGE, CMD_PAYMENT_REFUND, COMMANDS_EXCHANGE, ChargePayment, Compensate,
};
use shop_common::runtime::{App, HandlerError, Spec, decode, handle_once};
use shop_common::web::{ApiErr, ok};
use shop_payments::domain::{self, ChargeOutcome};
use shop_payments::provider::{ProviderClient, ProviderReply};

#[derive(Clone)]
struct Ctx {
    app: App,
    provider: ProviderClient,
}

fn unavailable_reason(err: &ClientError) -> String {
    match err.kind() {
        ClientErrorKind::CircuitOpen { .. } => "payment_provider_circuit_open".into(),
        _ => "payment_provider_unavailable".into(),
    }
}

async fn charge(
    ctx: Ctx,
    msg: chassis_messaging::amqp::incoming::IncomingMessage,
) -> Result<(), HandlerError> {
    let cmd: ChargePayment = decode(&msg)?;
    if let Some(status) = domain::existing(ctx.app.db(), &cmd.order_id).await? {
        if status == domain::CANCELLED {
            // Refund came first: never charge; tell the saga (which already moved on).
            return handle_once(&ctx.app, "payments.charge", &msg, move |_tx| {
                Box::pin(async move { Ok(vec![domain::cancelled_event(&cmd.order_id)]) })
            })
            .await;
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
    let Some(mut tx) = ctx.app.claim("payments.charge", &msg).await? else {
        return Ok(());
    };
    let rec = domain::record_charge(&mut tx, &cmd, &outcome).await?;
    tracing::info!(order_id = %cmd.order_id, ?outcome, "payment recorded");
    ctx.app.emit(&mut tx, &rec.emits, Some(&msg)).await?;
    ctx.app.commit(tx).await?;
    let refund_now = rec.refund_now.map(|c| (cmd.order_id.clone(), c));
    if let Some((order_id, charge_id)) = refund_now {
        // The order was cancelled while we were charging: give the money back now.
        ctx.provider
            .refund(&charge_id)
            .await
            .map_err(|e| HandlerError::Retry(format!("refund: {e}")))?;
        let mut tx = ctx.app.db().begin().await?;
        let emits = domain::record_refund(&mut tx, &order_id, &charge_id).await?;
        ctx.app.emit(&mut tx, &emits, Some(&msg)).await?;
        ctx.app.commit(tx).await?;
    }
    Ok(())
}

async fn refund(
    ctx: Ctx,
    msg: chassis_messaging::amqp::incoming::IncomingMessage,
) -> Result<(), HandlerError> {
    let cmd: Compensate = decode(&msg)?;
    let Some(mut tx) = ctx.app.claim("payments.refund", &msg).await? else {
        return Ok(());
    };
    let emits = match domain::begin_refund(&mut tx, &cmd.order_id, &cmd.reason).await? {
        // The provider refund is idempotent: if we crash before commit, the retry refunds again
        // harmlessly and records it.
        Some(charge_id) => match ctx.provider.refund(&charge_id).await {
            Ok(_) => domain::record_refund(&mut tx, &cmd.order_id, &charge_id).await?,
            Err(e) => return Err(HandlerError::Retry(format!("refund: {e}"))),
        },
        None => Vec::new(),
    };
    ctx.app.emit(&mut tx, &emits, Some(&msg)).await?;
    ctx.app.commit(tx).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let app = App::start(Spec {
        name: "payments",
        default_port: 8083,
        schema: domain::SCHEMA,
    })
    .await?;
    let provider_url =
        std::env::var("PROVIDER_URL").unwrap_or_else(|_| "http://127.0.0.1:8090".into());
    let policy = match std::env::var("PROVIDER_POLICY") {
        Ok(json) if !json.is_empty() => serde_json::from_str(&json)?,
        _ => ProviderClient::default_policy(),
    };
    let ctx = Ctx {
        app: app.clone(),
        provider: ProviderClient::new(&provider_url, &policy)?,
    };

    let c = ctx.clone();
    app.consume(
        app.queue("charge", &[(COMMANDS_EXCHANGE, CMD_PAYMENT_CHARGE)]),
        move |_app, msg| charge(c.clone(), msg),
    )
    .await?;
    let c = ctx.clone();
    app.consume(
        app.queue("refund", &[(COMMANDS_EXCHANGE, CMD_PAYMENT_REFUND)]),
        move |_app, msg| refund(c.clone(), msg),
    )
    .await?;

    let router = Router::new()
        .route("/internal/payments/{order_id}", get(payment))
        .with_state(ctx);
    app.serve(router).await
}

async fn payment(State(ctx): State<Ctx>, Path(order_id): Path<String>) -> Result<Response, ApiErr> {
    match domain::existing(ctx.app.db(), &order_id).await? {
        Some(status) => Ok(ok(
            StatusCode::OK,
            serde_json::json!({"order_id": order_id, "status": status}),
        )),
        None => Err(ApiErr::not_found("no payment for this order")),
    }
}
