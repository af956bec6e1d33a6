//! The JSON envelope end to end: axum handlers returning `ApiResult` behind `StandardLayers`,
//! served by the chassis server on 127.0.0.1 and called by a real client; axum's own rejections
//! and its router's 404/405 answered with the chassis error body.

#[path = "../server/support.rs"]
mod support;

use axum::Router;
use axum::extract::{Json, Path};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing;
use bytes::Bytes;
use chassis_http::layers::StandardLayers;
use chassis_http::response::SuccessBody;
use chassis_http::server::Server;
use chassis_http::{ApiError, ApiResponse, ApiResult, ResultExt as _};
use http::Request;
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use support::*;
use tower::ServiceBuilder;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Item {
    id: u64,
    name: String,
}

#[derive(Debug, Deserialize)]
struct NewItem {
    name: String,
}

async fn get_item(Path(id): Path<u64>) -> ApiResult<Item> {
    if id == 0 {
        return Err(ApiError::not_found("no item 0"));
    }
    Ok(ApiResponse::ok(Item {
        id,
        name: format!("item {id}"),
    }))
}

async fn create_item(Json(new): Json<NewItem>) -> ApiResult<Item> {
    Ok(ApiResponse::created(Item {
        id: 7,
        name: new.name,
    })
    .with_header(header::LOCATION, HeaderValue::from_static("/items/7")))
}

async fn broken() -> ApiResult<Item> {
    let id: u64 = "seven"
        .parse()
        .or_internal_context("decoding the stored item id")?;
    Ok(ApiResponse::ok(Item {
        id,
        name: String::new(),
    }))
}

/// The handlers above, and handlers answering errors of their own making.
fn app() -> Router {
    Router::new()
        .route("/items", routing::post(create_item))
        .route("/items/{id}", routing::get(get_item))
        .route("/broken", routing::get(broken))
        .route(
            "/own-json-error",
            routing::get(|| async {
                (
                    StatusCode::CONFLICT,
                    axum::Json(serde_json::json!({"mine": true})),
                )
            }),
        )
        .route(
            "/plain-error",
            routing::get(|| async { (StatusCode::BAD_REQUEST, "  name is required\n") }),
        )
        .route(
            "/plain-server-error",
            routing::get(|| async {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "pool at 10.0.0.5:5432 refused",
                )
            }),
        )
        .route(
            "/html-error",
            routing::get(|| async {
                (
                    StatusCode::FORBIDDEN,
                    [(header::CONTENT_TYPE, "text/html")],
                    "<h1>Forbidden</h1>",
                )
                    .into_response()
            }),
        )
        .route(
            "/teapot",
            routing::get(|| async {
                (
                    StatusCode::IM_A_TEAPOT,
                    [("x-kept", "yes")],
                    "short and stout",
                )
            }),
        )
}

/// The app behind the standard layers the two ways a service stacks them.
async fn servers() -> [TestServer; 2] {
    let routed = app().layer(StandardLayers::new());
    let wrapped = ServiceBuilder::new()
        .layer(StandardLayers::new())
        .service(app());
    [
        start(Server::bind(test_config()).await.unwrap(), routed).await,
        start(Server::bind(test_config()).await.unwrap(), wrapped).await,
    ]
}

fn request(method: &str, uri: String) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("traceparent", TRACEPARENT)
}

#[tokio::test]
async fn success_envelope_with_status_and_trace_id() {
    let client = client();
    for server in servers().await {
        let reply = send(
            &client,
            request("GET", format!("http://{}/items/3", server.addr))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.headers["content-type"], "application/json");
        assert_eq!(
            reply.json(),
            serde_json::json!({
                "success": true,
                "data": {"id": 3, "name": "item 3"},
                "traceId": TRACE_ID,
            })
        );

        let reply = send(
            &client,
            request("POST", format!("http://{}/items", server.addr))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(br#"{"name":"lamp"}"#)))
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        assert_eq!(reply.headers["location"], "/items/7");
        let body: SuccessBody<Item> = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            body,
            SuccessBody {
                success: true,
                data: Item {
                    id: 7,
                    name: "lamp".into()
                },
                trace_id: Some(TRACE_ID.into()),
            }
        );

        // An `ApiError` returned by the handler: its own status, code and trace id.
        let reply = send(
            &client,
            request("GET", format!("http://{}/items/0", server.addr))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        let body = reply.error_body(StatusCode::NOT_FOUND, "not_found");
        assert_eq!(body["error"]["message"], "no item 0");
        assert_eq!(body["traceId"], TRACE_ID);
        server.stop().await;
    }
}

#[tokio::test]
async fn an_error_through_or_internal_is_a_500_without_the_cause() {
    let client = client();
    for server in servers().await {
        let reply = get(&client, server.addr, "/broken").await;
        let body = reply.error_body(StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
        assert_eq!(body["error"]["message"], "internal error");
        assert!(!reply.text().contains("invalid digit"), "{}", reply.text());
        server.stop().await;
    }
}

#[tokio::test]
async fn axum_rejections_get_the_json_error_body() {
    let client = client();
    for server in servers().await {
        let addr = server.addr;
        let post = |content_type: Option<&str>, body: &'static [u8]| {
            let mut req = request("POST", format!("http://{addr}/items"));
            if let Some(content_type) = content_type {
                req = req.header("content-type", content_type);
            }
            req.body(Full::new(Bytes::from_static(body))).unwrap()
        };

        // Not JSON at all.
        let reply = send(&client, post(Some("application/json"), b"{\"name\":")).await;
        let body = reply.error_body(StatusCode::BAD_REQUEST, "bad_request");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("Failed to parse the request body as JSON"),
            "{message}"
        );
        assert_eq!(body["traceId"], TRACE_ID);

        // JSON, not the expected shape.
        let reply = send(&client, post(Some("application/json"), b"{\"name\":5}")).await;
        let body = reply.error_body(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable_entity");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("invalid type"),
            "{body}"
        );

        // No content type.
        let reply = send(&client, post(None, b"{\"name\":\"lamp\"}")).await;
        let body = reply.error_body(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Content-Type"),
            "{body}"
        );

        // A path parameter that does not parse.
        let reply = get(&client, addr, "/items/abc").await;
        let body = reply.error_body(StatusCode::BAD_REQUEST, "bad_request");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("abc"),
            "{body}"
        );

        // No such route, and a route without this method: the router's empty answers.
        let reply = get(&client, addr, "/nowhere").await;
        let body = reply.error_body(StatusCode::NOT_FOUND, "not_found");
        assert_eq!(body["error"]["message"], "Not Found");
        let reply = send(
            &client,
            request("DELETE", format!("http://{addr}/items/3"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        reply.error_body(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        assert_eq!(reply.headers["allow"], "GET,HEAD");
        assert!(reply.headers.contains_key("x-request-id"));
        server.stop().await;
    }
}

#[tokio::test]
async fn error_responses_the_handler_wrote() {
    let client = client();
    for server in servers().await {
        let addr = server.addr;

        // Its own JSON is its choice: not rewritten.
        let reply = get(&client, addr, "/own-json-error").await;
        assert_eq!(reply.status, StatusCode::CONFLICT);
        assert_eq!(reply.json(), serde_json::json!({"mine": true}));

        // Plain text of a 4xx is the message, trimmed; the other headers stay.
        let body = get(&client, addr, "/plain-error")
            .await
            .error_body(StatusCode::BAD_REQUEST, "bad_request");
        assert_eq!(body["error"]["message"], "name is required");
        let reply = get(&client, addr, "/teapot").await;
        let body = reply.error_body(StatusCode::IM_A_TEAPOT, "i_m_a_teapot");
        assert_eq!(body["error"]["message"], "short and stout");
        assert_eq!(reply.headers["x-kept"], "yes");
        assert_eq!(
            reply.headers["content-length"],
            reply.body.len().to_string().as_str()
        );

        // Plain text of a 5xx may describe internals: not sent.
        let reply = get(&client, addr, "/plain-server-error").await;
        let body = reply.error_body(StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
        assert_eq!(body["error"]["message"], "Internal Server Error");
        assert!(!reply.text().contains("10.0.0.5"), "{}", reply.text());

        // A body that is not text for humans: the reason phrase.
        let body = get(&client, addr, "/html-error")
            .await
            .error_body(StatusCode::FORBIDDEN, "forbidden");
        assert_eq!(body["error"]["message"], "Forbidden");
        server.stop().await;
    }
}
