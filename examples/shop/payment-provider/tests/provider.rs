//! The provider over real HTTP on loopback.

use serde_json::{Value, json};
use shop_payment_provider::{Behaviour, ProviderState, Stats, app};

async fn start(behaviour: Behaviour) -> (String, ProviderState) {
    let state = ProviderState::new(behaviour, Vec::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app(state.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}"), state)
}

fn charge(reference: &str, method: &str) -> Value {
    json!({"amount_cents": 1500, "currency": "EUR", "payment_method": method, "reference": reference})
}

#[tokio::test]
async fn same_idempotency_key_charges_once() {
    let (base, state) = start(Behaviour::default()).await;
    let c = reqwest::Client::new();
    let first = c
        .post(format!("{base}/v1/charges"))
        .header("idempotency-key", "k1")
        .json(&charge("o1", "card_ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let second = c
        .post(format!("{base}/v1/charges"))
        .header("idempotency-key", "k1")
        .json(&charge("o1", "card_ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 201);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    assert_eq!(state.stats().charges, 1);
    // Same key, different body: refused.
    let other = c
        .post(format!("{base}/v1/charges"))
        .header("idempotency-key", "k1")
        .json(&charge("o2", "card_ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 422);
    // Missing key: refused.
    let none = c
        .post(format!("{base}/v1/charges"))
        .json(&charge("o3", "card_ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 400);
    let listed: Value = c
        .get(format!("{base}/v1/charges?reference=o1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["charges"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn declined_method_is_declined_and_replayed() {
    let (base, state) = start(Behaviour::default()).await;
    let c = reqwest::Client::new();
    for _ in 0..2 {
        let r = c
            .post(format!("{base}/v1/charges"))
            .header("idempotency-key", "d1")
            .json(&charge("o1", "card_declined"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 402);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "card_declined");
    }
    assert_eq!(
        state.stats(),
        Stats {
            declines: 1,
            replays: 1,
            ..Stats::default()
        }
    );
}

#[tokio::test]
async fn outage_toggles_at_runtime_and_refund_is_idempotent() {
    let (base, _state) = start(Behaviour::default()).await;
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{base}/admin/outage"))
        .json(&json!({"active": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{base}/v1/charges"))
        .header("idempotency-key", "x")
        .json(&charge("o1", "card_ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    c.post(format!("{base}/admin/outage"))
        .json(&json!({"active": false}))
        .send()
        .await
        .unwrap();
    let r = c
        .post(format!("{base}/v1/charges"))
        .header("idempotency-key", "x")
        .json(&charge("o1", "card_ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r1: Value = c
        .post(format!("{base}/v1/charges/{id}/refund"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r2: Value = c
        .post(format!("{base}/v1/charges/{id}/refund"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r1["refund_id"], r2["refund_id"]);
    assert_eq!(r1["status"], "refunded");
    let stats: Stats = c
        .get(format!("{base}/v1/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (stats.charges, stats.refunds, stats.outage_rejections),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn injected_failures_record_nothing_and_ambiguous_ones_replay() {
    let (base, state) = start(Behaviour {
        failure_rate: 1.0,
        ..Behaviour::default()
    })
    .await;
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{base}/v1/charges"))
        .header("idempotency-key", "f")
        .json(&charge("o1", "card_ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(state.stats().charges, 0);
    // Switch to "charged but answered 500": the retry with the same key replays the success.
    let r = c
        .put(format!("{base}/admin/config"))
        .json(&json!({"failure_rate": 0.0, "ambiguous_failure_rate": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{base}/v1/charges"))
        .header("idempotency-key", "f")
        .json(&charge("o1", "card_ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let r = c
        .post(format!("{base}/v1/charges"))
        .header("idempotency-key", "f")
        .json(&charge("o1", "card_ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(state.stats().charges, 1);
    let bad = c
        .put(format!("{base}/admin/config"))
        .json(&json!({"failure_rate": 2.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
}

#[tokio::test]
async fn a_request_dropped_mid_wait_leaves_its_key_free_for_the_retry() {
    let (base, state) = start(Behaviour {
        latency_ms: 600,
        ..Behaviour::default()
    })
    .await;
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(100))
        .build()
        .unwrap();
    let err = impatient
        .post(format!("{base}/v1/charges"))
        .header("idempotency-key", "k-dropped")
        .json(&charge("o-dropped", "card_ok"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // The server notices the closed connection and drops the waiting handler.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let retry = reqwest::Client::new()
        .post(format!("{base}/v1/charges"))
        .header("idempotency-key", "k-dropped")
        .json(&charge("o-dropped", "card_ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 201, "{:?}", retry.text().await);
    assert_eq!(state.stats().charges, 1);
}

async fn serve(state: ProviderState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app(state);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// A provider killed and started again with its ledger file still knows every key, charge and
/// refund: the retried charge is replayed, not taken a second time (without the ledger the
/// restarted stand-in charged again and forgot the first charge).
#[tokio::test]
async fn a_restarted_provider_replays_keys_and_lists_charges_from_its_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.jsonl");
    let c = reqwest::Client::new();
    let post = |base: &str, key: &str, body: Value| {
        c.post(format!("{base}/v1/charges"))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };

    let first = ProviderState::with_ledger(Behaviour::default(), Vec::new(), &path).unwrap();
    let base = serve(first.clone()).await;
    let charged: Value = post(&base, "k-ledger", charge("o-ledger", "card_ok"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let declined = post(&base, "k-declined", charge("o-declined", "card_declined"))
        .await
        .unwrap();
    assert_eq!(declined.status(), 402);
    let id = charged["id"].as_str().unwrap().to_owned();
    let refunded = c
        .post(format!("{base}/v1/charges/{id}/refund"))
        .send()
        .await
        .unwrap();
    assert_eq!(refunded.status(), 200);
    let other: Value = post(&base, "k-kept", charge("o-kept", "card_ok"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    // "Restart": a new process state from the same file (a crash mid-write leaves a cut line).
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"record\":\"ans"))
        .unwrap();
    let second = ProviderState::with_ledger(Behaviour::default(), Vec::new(), &path).unwrap();
    assert_eq!(
        second.stats(),
        Stats {
            charges: 2,
            declines: 1,
            refunds: 1,
            ..Stats::default()
        }
    );
    let base = serve(second.clone()).await;
    let replay = post(&base, "k-kept", charge("o-kept", "card_ok"))
        .await
        .unwrap();
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap()["id"], other["id"]);
    let declined_again = post(&base, "k-declined", charge("o-declined", "card_declined"))
        .await
        .unwrap();
    assert_eq!(declined_again.status(), 402);
    assert_eq!(declined_again.headers()["idempotent-replayed"], "true");
    let listed: Value = c
        .get(format!("{base}/v1/charges?reference=o-ledger"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["charges"][0]["status"], "refunded", "{listed}");
    // A new charge after the cut line is written on a line of its own and survives the next
    // start too.
    let third_key = post(&base, "k-after", charge("o-after", "card_ok"))
        .await
        .unwrap();
    assert_eq!(third_key.status(), 201);
    let third = ProviderState::with_ledger(Behaviour::default(), Vec::new(), &path).unwrap();
    assert_eq!(third.stats().charges, 3);
    assert_eq!(second.stats().charges, 3);
}

#[tokio::test]
async fn answers_older_than_the_retention_window_are_forgotten() {
    let state = ProviderState::new(Behaviour::default(), Vec::new())
        .with_retention(std::time::Duration::from_millis(300));
    let base = serve(state.clone()).await;
    let c = reqwest::Client::new();
    let post = |key: &'static str, reference: &'static str| {
        c.post(format!("{base}/v1/charges"))
            .header("idempotency-key", key)
            .json(&charge(reference, "card_ok"))
            .send()
    };
    let listed = |reference: &'static str| {
        let url = format!("{base}/v1/charges?reference={reference}");
        async move {
            let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            v["charges"].as_array().map_or(0, Vec::len)
        }
    };
    let first: Value = post("old", "r-old").await.unwrap().json().await.unwrap();
    // Within the window: replayed, one charge.
    let replay = post("old", "r-old").await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(listed("r-old").await, 1);

    // Past the window, the next recorded answer drops the old one: its charge is no longer
    // listed or refundable, and its key is free again.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(post("new", "r-new").await.unwrap().status(), 201);
    assert_eq!(listed("r-old").await, 0);
    assert_eq!(listed("r-new").await, 1);
    let refund = c
        .post(format!(
            "{base}/v1/charges/{}/refund",
            first["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(refund.status(), 404);
    let again = post("old", "r-old").await.unwrap();
    assert_eq!(again.status(), 201);
    assert!(again.headers().get("idempotent-replayed").is_none());
    // The counters are history, not the window.
    assert_eq!(state.stats().charges, 3);

    // Many charges in a short window: only the window's are kept.
    let keys: Vec<String> = (0..200).map(|i| format!("bulk-{i}")).collect();
    for key in &keys {
        let resp = c
            .post(format!("{base}/v1/charges"))
            .header("idempotency-key", key)
            .json(&charge("bulk", "card_ok"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(post("last", "r-last").await.unwrap().status(), 201);
    assert_eq!(listed("bulk").await, 0);
}

#[tokio::test]
async fn plays_a_simulator_scenario_set_at_run_time() {
    let (base, state) = start(Behaviour::default()).await;
    let c = reqwest::Client::new();
    // Hard down for the first 400 ms (each failure after 30 ms), then 30 ms per charge and no
    // failures: the scenario's downstream, not the behaviour, decides.
    let play = c
        .put(format!("{base}/admin/scenario"))
        .json(&json!({"seed": 3, "downstream": {
            "failure_rate": 0.0, "latency_p50": "30ms", "latency_p99": "30ms",
            "outages": [{"start": "0s", "end": "400ms"}]
        }}))
        .send()
        .await
        .unwrap();
    assert_eq!(play.status(), 200);
    let post = |key: &'static str| {
        c.post(format!("{base}/v1/charges"))
            .header("idempotency-key", key)
            .json(&charge(key, "card_ok"))
            .send()
    };
    let started = std::time::Instant::now();
    let down = post("p1").await.unwrap();
    assert_eq!(down.status(), 500);
    assert!(started.elapsed() >= std::time::Duration::from_millis(30));
    tokio::time::sleep(std::time::Duration::from_millis(450)).await;
    let up = post("p1").await.unwrap();
    assert_eq!(up.status(), 201);
    let status: Value = c
        .get(format!("{base}/admin/scenario"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["playing"], true);
    assert_eq!(status["calls"], 2);
    assert_eq!(status["in_flight"], 0);
    assert_eq!(state.playback_calls().len(), 2);
    assert_eq!(state.stats().failures_injected, 1);
    // A failure rate outside 0..=1 is refused; stopping hands charges back to the behaviour.
    let bad = c
        .put(format!("{base}/admin/scenario"))
        .json(&json!({"downstream": {"failure_rate": 2.0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    c.delete(format!("{base}/admin/scenario"))
        .send()
        .await
        .unwrap();
    assert!(state.playback_calls().is_empty());
    assert_eq!(post("p2").await.unwrap().status(), 201);
}
