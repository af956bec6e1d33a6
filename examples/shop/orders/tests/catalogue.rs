//! The placement's product check against a real inventory gRPC API (the inventory's
//! `InventoryApi` behind the chassis `GrpcLayers` and the orders token check, on a loopback
//! port), through the orders service's resilient client.

use std::time::Duration;

use chassis_core::shutdown::Shutdown;
use chassis_http::auth::{
    KeySet, RequireServiceTokenLayer, SigningKey, TokenIssuer, TokenVerifier, VerificationKey,
};
use chassis_http::grpc::{GrpcLayers, GrpcRouter};
use chassis_http::server::{Server, ServerConfig};
use shop_common::db::Db;
use shop_common::events::Item;
use shop_inventory::domain;
use shop_inventory::grpc::InventoryApi;
use shop_orders::catalogue::{Catalogue, Check};
use shop_proto::methods;
use tower::Layer as _;

fn items(skus: &[&str]) -> Vec<Item> {
    skus.iter()
        .map(|s| Item {
            sku: (*s).into(),
            quantity: 1,
        })
        .collect()
}

/// An inventory gRPC API admitting tokens of `trusted`; its URL and its stop switch.
async fn inventory(trusted: &SigningKey) -> (String, Shutdown) {
    let db = Db::open("sqlite::memory:").unwrap();
    domain::migrate(&db).await.unwrap();
    domain::seed(
        &db,
        &domain::parse_seed("tea:Tea:450:5,mug:Mug:900:0").unwrap(),
    )
    .await
    .unwrap();
    let key =
        VerificationKey::from_public_pem("orders-1", trusted.public_key_pem().unwrap()).unwrap();
    let verifier = TokenVerifier::builder("inventory")
        .trust_issuer("orders")
        .keys(KeySet::new().with(key))
        .build()
        .unwrap();
    let api = RequireServiceTokenLayer::new(verifier).layer(InventoryApi::new(db).into_server());
    let routes = GrpcRouter::new().route(methods::INVENTORY, api);
    let shutdown = Shutdown::new();
    let server = Server::bind(
        ServerConfig::default()
            .bind("127.0.0.1:0".parse().unwrap())
            .drain_timeout(Duration::from_secs(1)),
    )
    .await
    .unwrap()
    .shutdown(shutdown.clone())
    .handle_signals(false);
    let url = format!("http://{}", server.local_addr());
    tokio::spawn(server.serve(GrpcLayers::new().layer(routes)));
    (url, shutdown)
}

fn issuer(key: SigningKey) -> TokenIssuer {
    TokenIssuer::builder("orders")
        .signing_key(key.with_kid("orders-1").unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn known_and_unknown_products() {
    let key = SigningKey::generate_ed25519().unwrap();
    let (url, _stop) = inventory(&key).await;
    let catalogue = Catalogue::new(&url, issuer(key), None).unwrap();
    // Out of stock is still a known product: the reservation decides on stock.
    assert!(matches!(
        catalogue.check(&items(&["tea", "mug", "tea"])).await,
        Check::Known
    ));
    assert!(matches!(
        catalogue.check(&items(&["tea", "nope"])).await,
        Check::Unknown { index: 1 }
    ));
    let refused = catalogue.admit(&items(&["nope"])).await.unwrap_err();
    assert_eq!(refused.status().as_u16(), 422);
    assert!(catalogue.admit(&items(&["tea"])).await.is_ok());
}

#[tokio::test]
async fn a_token_the_inventory_does_not_trust_leaves_the_order_unchecked() {
    let (url, _stop) = inventory(&SigningKey::generate_ed25519().unwrap()).await;
    let stranger = issuer(SigningKey::generate_ed25519().unwrap());
    let catalogue = Catalogue::new(&url, stranger, None).unwrap();
    match catalogue.check(&items(&["nope"])).await {
        Check::Unchecked(status) => {
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}")
        }
        other => panic!("{other:?}"),
    }
    // Placing orders does not depend on the inventory's answer.
    assert!(catalogue.admit(&items(&["nope"])).await.is_ok());
}

#[tokio::test]
async fn an_inventory_that_is_away_leaves_the_order_unchecked_within_the_deadline() {
    // A port nobody listens on: connection refused, retried once, then unchecked.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let catalogue = Catalogue::new(
        &format!("http://127.0.0.1:{port}"),
        issuer(SigningKey::generate_ed25519().unwrap()),
        None,
    )
    .unwrap();
    let started = std::time::Instant::now();
    match catalogue.check(&items(&["tea"])).await {
        Check::Unchecked(status) => {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
