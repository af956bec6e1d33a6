//! The orders service: `shop-orders` (env: `HTTP_ADDR`, `DATABASE_URL`, `AMQP_URL`,
//! `SAGA_STEP_TIMEOUT_MS` (default 30000); see `shop_common::runtime`).

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use chassis_core::BoxError;
use chassis_messaging::amqp::incoming::IncomingMessage;
use shop_common::db::now_ms;
use shop_common::events::{
    EVENTS_EXCHANGE, INVENTORY_REJECTED, INVENTORY_RESERVED, PAYMENT_FAILED, PAYMENT_SUCCEEDED,
};
use shop_common::runtime::{App, HandlerError, Spec, decode, handle_once};
use shop_common::web::{ApiErr, ok};
use shop_orders::saga::{self, NewOrder};

#[derive(Clone)]
struct Ctx {
    app: App,
    step_timeout_ms: i64,
}

async fn on_reply(ctx: Ctx, msg: IncomingMessage) -> Result<(), HandlerError> {
    let timeout = ctx.step_timeout_ms;
    match msg.routing_key() {
        INVENTORY_RESERVED => {
            let e = decode(&msg)?;
            handle_once(&ctx.app, "orders.saga", &msg, move |tx| {
                Box::pin(async move { Ok(saga::on_inventory_reserved(tx, &e, timeout).await?) })
            })
            .await
        }
        INVENTORY_REJECTED => {
            let e = decode(&msg)?;
            handle_once(&ctx.app, "orders.saga", &msg, move |tx| {
                Box::pin(async move { Ok(saga::on_inventory_rejected(tx, &e).await?) })
            })
            .await
        }
        PAYMENT_SUCCEEDED => {
            let e = decode(&msg)?;
            handle_once(&ctx.app, "orders.saga", &msg, move |tx| {
                Box::pin(async move { Ok(saga::on_payment_succeeded(tx, &e).await?) })
            })
            .await
        }
        PAYMENT_FAILED => {
            let e = decode(&msg)?;
            handle_once(&ctx.app, "orders.saga", &msg, move |tx| {
                Box::pin(async move { Ok(saga::on_payment_failed(tx, &e).await?) })
            })
            .await
        }
        other => Err(HandlerError::Reject(format!(
            "unexpected routing key `{other}`"
        ))),
    }
}

/// Fails overdue saga steps once a second (and right after a restart).
async fn sweep(ctx: Ctx) {
    let token = ctx.app.shutdown().token();
    loop {
        let result = async {
            let mut tx = ctx.app.db().begin().await?;
            let (ids, emits) = saga::expire_overdue(&mut tx, now_ms(), 100).await?;
            ctx.app.emit(&mut tx, &emits, None).await?;
            ctx.app.commit(tx).await?;
            Ok::<_, HandlerError>(ids)
        }
        .await;
        match result {
            Ok(ids) if !ids.is_empty() => {
                tracing::warn!(count = ids.len(), ?ids, "saga steps timed out")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = ?e, "timeout sweep failed"),
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let app = App::start(Spec {
        name: "orders",
        default_port: 8081,
        schema: saga::SCHEMA,
    })
    .await?;
    let step_timeout_ms = std::env::var("SAGA_STEP_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let ctx = Ctx {
        app: app.clone(),
        step_timeout_ms,
    };

    let queue = app.queue(
        "saga",
        &[
            (EVENTS_EXCHANGE, INVENTORY_RESERVED),
            (EVENTS_EXCHANGE, INVENTORY_REJECTED),
            (EVENTS_EXCHANGE, PAYMENT_SUCCEEDED),
            (EVENTS_EXCHANGE, PAYMENT_FAILED),
        ],
    );
    let c = ctx.clone();
    app.consume(queue, move |_app, msg| on_reply(c.clone(), msg))
        .await?;
    app.spawn(sweep(ctx.clone()));

    let router = Router::new()
        .route("/internal/orders", post(place))
        .route("/internal/orders/{id}", get(get_order))
        .route("/internal/stats", get(stats))
        .layer(shop_common::auth::require_from_env("orders")?)
        .with_state(ctx);
    app.serve(router).await
}

async fn place(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiErr> {
    let new: NewOrder = serde_json::from_slice(&body)
        .map_err(|e| ApiErr::bad_request(format!("invalid order: {e}")))?;
    new.validate().map_err(ApiErr::bad_request)?;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut tx = ctx.app.db().begin().await?;
    let placed = saga::place(&mut tx, &new, key.as_deref(), ctx.step_timeout_ms).await?;
    ctx.app
        .emit(&mut tx, &placed.emits, None)
        .await
        .map_err(|e| ApiErr::internal(format!("{e:?}")))?;
    ctx.app.commit(tx).await?;
    if placed.created {
        tracing::info!(order_id = %placed.order.id, "order placed");
    }
    let mut data = serde_json::to_value(&placed.order).map_err(ApiErr::internal)?;
    data["order_id"] = data["id"].clone();
    data["replayed"] = (!placed.created).into();
    Ok(ok(StatusCode::ACCEPTED, data))
}

async fn get_order(State(ctx): State<Ctx>, Path(id): Path<String>) -> Result<Response, ApiErr> {
    match saga::get(ctx.app.db(), &id).await? {
        Some(order) => Ok(ok(StatusCode::OK, order)),
        None => Err(ApiErr::not_found("no such order")),
    }
}

async fn stats(State(ctx): State<Ctx>) -> Result<Response, ApiErr> {
    let counts: serde_json::Map<String, serde_json::Value> = saga::count_by_status(ctx.app.db())
        .await?
        .into_iter()
        .map(|(k, v)| (k, v.into()))
        .collect();
    Ok(ok(StatusCode::OK, counts))
}
