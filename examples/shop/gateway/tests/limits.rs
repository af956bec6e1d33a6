//! The gateway binary's size limits and its answer to a write whose success answer it cannot
//! relay, against a small HTTP/1.1 upstream written in this test (a real server on loopback:
//! it reads each request and answers with a status, headers and a body chosen by the request's
//! `customer_id`, including bodies too large to relay and bodies cut off mid-way, which no
//! well-behaved framework would send on purpose).

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chassis_http::auth::SigningKey;
use serde_json::{Value, json};
use shop_common::limits::{MAX_API_BODY_BYTES, MAX_CUSTOMER_ID_LEN, MAX_SKU_LEN};
use shop_contract::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "limits-test-key";
const ORDER_ID: &str = "0190d5f2-7c1e-7a00-8000-00000000abcd";

/// What the upstream answers, chosen by the `customer_id` of the request.
fn answer(customer_id: &str) -> Vec<u8> {
    let small = json!({"success": true, "data": {"id": ORDER_ID, "order_id": ORDER_ID, "status": "PENDING"}, "traceId": null}).to_string();
    let location = format!("location: /internal/orders/{ORDER_ID}\r\n");
    let head = |len: usize, location: &str| {
        format!(
            "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\n{location}content-length: {len}\r\nconnection: close\r\n\r\n"
        )
    };
    match customer_id {
        // 2 MiB of JSON: more than the gateway relays.
        "big-answer" | "big-answer-no-location" => {
            let filler = "x".repeat(2 << 20);
            let body = json!({"success": true, "data": {"id": ORDER_ID, "status": "PENDING", "customer_id": filler}}).to_string();
            let location = if customer_id == "big-answer" {
                location.as_str()
            } else {
                ""
            };
            let mut out = head(body.len(), location).into_bytes();
            out.extend_from_slice(body.as_bytes());
            out
        }
        // Announces 5000 bytes, sends 10 and closes: the body breaks off.
        "cut-answer" => {
            let mut out = head(5000, &location).into_bytes();
            out.extend_from_slice(&small.as_bytes()[..10]);
            out
        }
        _ => {
            let mut out = head(small.len(), &location).into_bytes();
            out.extend_from_slice(small.as_bytes());
            out
        }
    }
}

/// Reads one request (head and `content-length` body) from `stream`; `None` if it closed.
async fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0_u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf[head_end..head_end + len].to_vec())
}

/// The upstream "orders": one request per connection, every request counted.
async fn upstream() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let Some(body) = read_request(&mut stream).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let order: Value = serde_json::from_slice(&body).unwrap_or_default();
                let out = answer(order["customer_id"].as_str().unwrap_or_default());
                let _ = stream.write_all(&out).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (url, hits)
}

/// The gateway binary with `orders_url` as its orders service.
async fn gateway(orders_url: &str) -> (tokio::process::Child, String) {
    let key = SigningKey::generate_ed25519().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shop-gateway"))
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
        .env("GATEWAY_API_KEYS", format!("{KEY}:limits"))
        .env("ORDERS_URL", orders_url)
        .env("SERVICE_TOKEN_PRIVATE_KEY", key.to_pkcs8_pem().unwrap())
        .env("LOG_FORMAT", "json")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let admin = format!("http://127.0.0.1:{admin_port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = http.get(format!("{admin}/health/ready")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway did not get ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The public port never publishes the metrics or the probes: they are on the admin port.
    for path in ["/metrics", "/health/ready", "/health/live"] {
        let public = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(public.status(), 404, "{path} on the gateway's public port");
    }
    let metrics = http.get(format!("{admin}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    (child, base)
}

fn order(customer_id: &str) -> Value {
    json!({"customer_id": customer_id, "items": [{"sku": "tea", "quantity": 1}], "payment_method": "card_ok"})
}

async fn post(base: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/orders"))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.json().await.unwrap();
    (status, headers, body)
}

/// The chassis error body: `success: false`, the code, and a trace id.
fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let trace = body["traceId"].as_str().unwrap_or_default();
    assert_eq!(trace.len(), 32, "no trace id: {body}");
}

#[tokio::test]
async fn oversized_requests_are_refused_before_anything_is_forwarded() {
    let (url, hits) = upstream().await;
    let (_gateway, base) = gateway(&url).await;

    // 1 MB customer_id: over the API body limit, 413.
    let (status, _, body) = post(&base, &order(&"c".repeat(1_000_000))).await;
    assert_eq!(status, 413, "{body}");
    assert_error(&body, "payload_too_large");

    // Under the body limit, over a field's limit: 422 naming the field.
    let (status, _, body) = post(&base, &order(&"c".repeat(MAX_CUSTOMER_ID_LEN + 1))).await;
    assert_eq!(status, 422, "{body}");
    assert_error(&body, "unprocessable_entity");
    assert_eq!(body["error"]["details"]["field"], "customer_id", "{body}");
    assert_eq!(body["error"]["details"]["limit"], MAX_CUSTOMER_ID_LEN);

    let mut long_sku = order("c-1");
    long_sku["items"][0]["sku"] = "s".repeat(MAX_SKU_LEN + 1).into();
    let (status, _, body) = post(&base, &long_sku).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["details"]["field"], "items[0].sku", "{body}");

    let mut many = order("c-1");
    many["items"] = (0..51)
        .map(|i| json!({"sku": format!("s{i}"), "quantity": 1}))
        .collect();
    let (status, _, body) = post(&base, &many).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["details"]["field"], "items", "{body}");

    let mut long_method = order("c-1");
    long_method["payment_method"] = "p".repeat(200).into();
    let (status, _, body) = post(&base, &long_method).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["details"]["field"], "payment_method");

    // An unknown field is not forwarded, and a large one falls under the body limit.
    let mut extra = order("c-1");
    extra["note"] = "n".repeat(MAX_API_BODY_BYTES).into();
    let (status, _, body) = post(&base, &extra).await;
    assert_eq!(status, 413, "{body}");

    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing reached orders");

    // Within the limits it is forwarded.
    let (status, headers, body) = post(&base, &order("c-1")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body["data"],
        json!({"order_id": ORDER_ID, "status": "PENDING"})
    );
    assert_eq!(headers["location"], format!("/api/v1/orders/{ORDER_ID}"));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_success_answer_too_large_or_cut_off_is_still_a_success() {
    let (url, hits) = upstream().await;
    let (_gateway, base) = gateway(&url).await;

    for case in ["big-answer", "cut-answer"] {
        let (status, headers, body) = post(&base, &order(case)).await;
        assert_eq!(status, 202, "{case}: {body}");
        assert_eq!(body["success"], true, "{case}: {body}");
        assert_eq!(body["data"]["order_id"], ORDER_ID, "{case}: {body}");
        assert_eq!(body["data"]["status"], Value::Null, "{case}: {body}");
        assert!(
            body["data"]["detail"]
                .as_str()
                .is_some_and(|d| d.contains("accepted")),
            "{case}: {body}"
        );
        assert_eq!(
            headers["location"],
            format!("/api/v1/orders/{ORDER_ID}"),
            "{case}"
        );
    }
    // Without a Location the id is unknown, and the answer is still the upstream's success.
    let (status, headers, body) = post(&base, &order("big-answer-no-location")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["data"]["order_id"], Value::Null, "{body}");
    assert!(!headers.contains_key("location"));
    // Each placement was sent once (no Idempotency-Key: never repeated).
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}
