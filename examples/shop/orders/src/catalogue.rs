//! The check an order placement makes against the inventory, over gRPC: every line must name
//! a product of the catalogue (`inventory.v1.Inventory/GetProducts`, the contract in
//! `examples/shop/proto/inventory.proto`).
//!
//! An order naming no product is refused at once with a 422 naming the line, instead of
//! being accepted and failing later in the saga (`unknown_product`). Stock is not judged
//! here: it moves between this read and the reservation, which decides (event-driven, in
//! the saga). The call goes through the chassis
//! [`GrpcClient`]: 500 ms per attempt, `GetProducts` and `GetReservation` declared idempotent
//! (reads), so an `UNAVAILABLE` answer or a timed-out attempt is tried once more within 1 s;
//! a breaker opens at 50% failures over 20 calls for 5 s. The orders service's own service
//! token (issuer `orders`) and the trace context go with every attempt.
//!
//! When the inventory cannot answer (down, overloaded, breaker open), the order is accepted
//! unchecked ([`Check::Unchecked`], logged): placing orders must not depend on the
//! inventory being up, as it does not depend on the broker; the reservation still refuses an
//! unknown product.
//!
//! # Example
//! ```
//! use chassis_http::auth::{SigningKey, TokenIssuer};
//! use shop_orders::catalogue::Catalogue;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // The channel connects lazily, on the runtime it is built in.
//! let key = SigningKey::generate_ed25519().unwrap();
//! let issuer = TokenIssuer::builder("orders").signing_key(key).build().unwrap();
//! let catalogue = Catalogue::new("http://127.0.0.1:8082", issuer, None).unwrap();
//! assert_eq!(catalogue.client().name(), "inventory");
//! # }
//! ```

use chassis_core::BoxError;
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_http::ApiError;
use chassis_http::auth::{ServiceTokenSource, TokenIssuer};
use chassis_http::error::codes;
use chassis_http::grpc::GrpcClient;
use chassis_http::tls::client::ClientTlsConfig;
use http::StatusCode;
use serde_json::json;
use shop_common::events::Item;
use shop_proto::inventory::v1::GetProductsRequest;
use shop_proto::inventory::v1::inventory_client::InventoryClient;
use shop_proto::methods;
use tonic::Status;

/// What the inventory said about an order's lines.
#[derive(Debug)]
pub enum Check {
    /// Every line names a product.
    Known,
    /// The line at `index` names no product.
    Unknown {
        /// The line's index in the order.
        index: usize,
    },
    /// The inventory did not answer; the order goes on unchecked.
    Unchecked(Status),
}

/// The inventory's catalogue as the orders service reads it; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Catalogue {
    client: GrpcClient,
}

/// The client's resilience policy; see the [module docs](self).
pub fn policy() -> ResiliencePolicy {
    serde_json::from_value(json!({
        "name": "inventory",
        "timeout": "500ms",
        "retry": {"max_attempts": 2, "deadline": "1s", "backoff": {"base": "20ms", "max": "100ms", "jitter": "full"}},
        "circuit_breaker": {"minimum_number_of_calls": 20, "sliding_window_size": 50, "wait_duration_in_open_state": "5s"}
    }))
    .expect("the catalogue policy is valid")
}

impl Catalogue {
    /// A catalogue reading the inventory at `url` (`http://` or, with `tls`, `https://`),
    /// with tokens for the audience `inventory` signed by `issuer`.
    pub fn new(
        url: &str,
        issuer: TokenIssuer,
        tls: Option<ClientTlsConfig>,
    ) -> Result<Self, BoxError> {
        let mut builder = GrpcClient::builder("inventory", url)
            .policy(policy())
            .idempotent(methods::GET_PRODUCTS)
            .idempotent(methods::GET_RESERVATION)
            .service_token(ServiceTokenSource::new(issuer, "inventory", &[])?);
        if let Some(tls) = tls {
            builder = builder.tls(tls);
        }
        Ok(Self {
            client: builder.build()?,
        })
    }

    /// The catalogue of `INVENTORY_URL`, with the orders service's key
    /// (`ORDERS_TOKEN_PRIVATE_KEY`) and the shop's TLS settings; `None` without `INVENTORY_URL`
    /// (orders are then placed unchecked).
    ///
    /// # Errors
    /// `INVENTORY_URL` without `ORDERS_TOKEN_PRIVATE_KEY`, or settings that do not build.
    pub fn from_env() -> Result<Option<Self>, BoxError> {
        let url = shop_common::service::env("INVENTORY_URL", "");
        if url.is_empty() {
            return Ok(None);
        }
        let issuer = shop_common::auth::orders_issuer_from_env()?.ok_or(
            "INVENTORY_URL needs ORDERS_TOKEN_PRIVATE_KEY (the orders service's own key; the launcher generates one)",
        )?;
        Ok(Some(Self::new(
            &url,
            issuer,
            shop_common::tls::client_tls()?,
        )?))
    }

    /// The gRPC client (its name, for the admin API).
    pub fn client(&self) -> &GrpcClient {
        &self.client
    }

    /// Whether every line of `items` names a product.
    pub async fn check(&self, items: &[Item]) -> Check {
        let mut skus: Vec<String> = items.iter().map(|i| i.sku.clone()).collect();
        skus.sort_unstable();
        skus.dedup();
        let mut inventory = InventoryClient::new(self.client.clone());
        let products = match inventory.get_products(GetProductsRequest { skus }).await {
            Ok(answer) => answer.into_inner().products,
            Err(status) => return Check::Unchecked(status),
        };
        match items
            .iter()
            .position(|i| !products.iter().any(|p| p.sku == i.sku))
        {
            Some(index) => Check::Unknown { index },
            None => Check::Known,
        }
    }

    /// [`check`](Self::check) as the placement answers it: a 422 naming the first line with
    /// an unknown product; `Ok` for known products and, logged, for an unchecked order.
    pub async fn admit(&self, items: &[Item]) -> Result<(), ApiError> {
        match self.check(items).await {
            Check::Known => Ok(()),
            Check::Unknown { index } => {
                let field = format!("items[{index}].sku");
                tracing::info!(field = %field, "order refused: unknown product");
                Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    codes::UNPROCESSABLE_ENTITY,
                    format!("{field} names no product of the catalogue"),
                )
                .with_details(json!({"field": field, "reason": "unknown_product"})))
            }
            Check::Unchecked(status) => {
                tracing::warn!(
                    code = ?status.code(),
                    message = status.message(),
                    "the inventory did not answer; order placed unchecked"
                );
                Ok(())
            }
        }
    }
}
