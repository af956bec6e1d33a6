//! The resilience dashboard of a running shop in a real browser: the real binaries (as
//! `--keep-running` starts them), the dashboard the launcher serves over every service's admin
//! API, headless Chromium driven over chromedriver's WebDriver HTTP API.
//!
//! The page must show every service live, with the outboxes and consumers the services
//! register; a breaker of the gateway forced open over its admin API turns red within 2 s (and
//! the gateway really refuses that downstream), "reset" clicked in the page closes it; a
//! payment command parked in orders' outbox (its queue unbound for a moment) is requeued by the
//! row's own "requeue" button and its order completes; a dead-lettered message listed on
//! notifications' consumer is moved back by its "move back" button (the service logs the move
//! with the message id). The screenshot is saved as
//! `dashboard-shop.png` in the test's output directory (`CARGO_TARGET_TMPDIR`) and, when
//! `DASHBOARD_SCREENSHOT` names a file, there too: the examples README's is made with
//! `DASHBOARD_SCREENSHOT=examples/shop/dashboard.png cargo test -p shop-launcher --test dashboard`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them) and the local
//! RabbitMQ (`AMQP_URL`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use shop_launcher::workload::{place, wait_final};
use shop_launcher::{System, SystemConfig, build_services_for_tests, cleanup, free_port};

const KEY: &str = "demo-key-0001";
const SERVICES: [&str; 5] = [
    "gateway",
    "orders",
    "inventory",
    "payments",
    "notifications",
];

/// chromedriver (and so its browser), killed whatever happens.
struct Driver {
    child: Child,
    url: String,
    profile: tempfile::TempDir,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(names: &[&str]) -> String {
    for name in names {
        for dir in ["/usr/bin", "/usr/lib/chromium", "/usr/local/bin"] {
            let path = format!("{dir}/{name}");
            if std::path::Path::new(&path).exists() {
                return path;
            }
        }
    }
    panic!("none of {names:?} is installed: apt-get install -y chromium chromium-driver");
}

impl Driver {
    async fn start() -> Self {
        let port = free_port();
        let child = Command::new(find(&["chromedriver", "chromium-driver"]))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profile: tempfile::tempdir().unwrap(),
            http: reqwest::Client::new(),
        };
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "chromedriver did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver
    }

    /// A WebDriver command; its `value`.
    async fn wd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.url);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let response = req.send().await.unwrap();
        let status = response.status();
        let value: Value = response.json().await.unwrap();
        assert!(
            status.is_success(),
            "WebDriver {method} {url}: {status} {value}"
        );
        value["value"].clone()
    }

    /// A browser session: its path under the driver's URL.
    async fn session(&self) -> String {
        let profile = format!("--user-data-dir={}", self.profile.path().display());
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": find(&["chromium"]),
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1700,1150", "--force-device-scale-factor=0.8", profile],
            }
        }}});
        let value = self.wd(reqwest::Method::POST, "/session", Some(caps)).await;
        format!("/session/{}", value["sessionId"].as_str().unwrap())
    }

    /// Runs `script` in the page: its return value.
    async fn exec(&self, session: &str, script: &str) -> Value {
        self.wd(
            reqwest::Method::POST,
            &format!("{session}/execute/sync"),
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Runs `script` in the page until it returns something other than `null` (or `false`),
    /// for at most `within`; the value, or a panic naming `what` with the page's text.
    async fn wait_for(&self, session: &str, what: &str, script: &str, within: Duration) -> Value {
        let started = Instant::now();
        loop {
            let value = self.exec(session, script).await;
            if !value.is_null() && value != json!(false) {
                return value;
            }
            if started.elapsed() > within {
                let page = self.exec(session, "return document.body.innerText;").await;
                panic!("{what}: not within {within:?}; the page:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The row of component `kind`/`name` on `service`'s card, as a JavaScript expression.
fn row(service: &str, kind: &str, name: &str) -> String {
    format!(
        r#"document.querySelector('section[data-service="{service}"] .component[data-kind="{kind}"][data-name="{name}"]')"#
    )
}

/// Publishes a message that is not a chassis envelope straight to notifications' queue: its
/// consumer dead-letters it at once.
async fn publish_poison(system: &System, message_id: &str) {
    use lapin::BasicProperties;
    use lapin::options::BasicPublishOptions;

    let conn =
        lapin::Connection::connect(system.amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("the broker answers");
    let channel = conn.create_channel().await.unwrap();
    let queue = format!("{}notifications.orders", system.namespace());
    channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            b"not an envelope",
            BasicProperties::default().with_message_id(message_id.into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    conn.close(200, "done".into()).await.unwrap();
}

/// Unbinds (or binds again) payments' charge queue from the commands exchange: while unbound,
/// orders' `payment.charge` commands are unroutable and (with `max_attempts` 1) parked at once.
async fn charge_binding(system: &System, bound: bool) {
    use lapin::options::QueueBindOptions;
    use lapin::types::FieldTable;

    let conn =
        lapin::Connection::connect(system.amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("the broker answers");
    let channel = conn.create_channel().await.unwrap();
    let ns = system.namespace();
    let (queue, exchange) = (format!("{ns}payments.charge"), format!("{ns}shop.commands"));
    if bound {
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "payment.charge".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    } else {
        channel
            .queue_unbind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "payment.charge".into(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    conn.close(200, "done".into()).await.unwrap();
}

/// Waits until `service`'s log has a line containing every one of `needles`.
async fn wait_for_log(system: &System, service: &str, needles: &[&str], within: Duration) {
    let path = system.run_dir().join(format!("{service}.log"));
    let started = Instant::now();
    loop {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        if log
            .lines()
            .any(|line| needles.iter().all(|n| line.contains(n)))
        {
            return;
        }
        assert!(
            started.elapsed() < within,
            "no line with {needles:?} in {service}.log within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_of_a_running_shop_shows_and_steers_every_service() {
    let bin = build_services_for_tests().expect("cargo build of the services");
    let dir = tempfile::tempdir().unwrap();
    let mut config = SystemConfig::new(bin, dir.path().to_path_buf());
    // An unroutable command is parked at its first attempt, not after five with backoff.
    config
        .extra_env
        .push(("OUTBOX_RELAY".into(), r#"{"max_attempts": 1}"#.into()));
    let system = System::start(config).await.expect("system starts");
    let http = reqwest::Client::new();
    let token = system.admin_token().unwrap();

    // Some traffic for the rates, and a message notifications cannot read, for its DLQ.
    let order = json!({"customer_id": "c-dash", "items": [{"sku": "tea", "quantity": 1}],
        "payment_method": "card_ok"});
    let (status, placed) = place(&http, system.url("gateway"), KEY, &order, None)
        .await
        .unwrap();
    assert_eq!(status, 202, "{placed}");
    let order_id = placed["data"]["order_id"].as_str().unwrap().to_owned();
    let poison = format!("poison-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    publish_poison(&system, &poison).await;

    let page = system.serve_dashboard().await.unwrap();
    let driver = Driver::start().await;
    let session = driver.session().await;
    driver
        .wd(
            reqwest::Method::POST,
            &format!("{session}/url"),
            Some(json!({ "url": page })),
        )
        .await;

    // Every service live, each with its health; the outbox of each service that has one and
    // the consumers' queues with their depths.
    for service in SERVICES {
        let script = format!(
            r#"var c = document.querySelector('section[data-service="{service}"]');
               return c && c.getAttribute('data-updated') && c.querySelector('.status.live')
                 && c.querySelector('.component[data-kind="health"]') ? c.innerText : null;"#
        );
        driver
            .wait_for(&session, service, &script, Duration::from_secs(20))
            .await;
    }
    for service in ["orders", "inventory", "payments"] {
        let script = format!(
            "var r = {}; return r && r.innerText;",
            row(service, "outbox", "outbox")
        );
        let text = driver
            .wait_for(&session, service, &script, Duration::from_secs(5))
            .await;
        assert!(text.as_str().unwrap().contains("pending"), "{text}");
    }
    let ns = system.namespace().to_owned();
    for (service, queue) in [
        ("orders", "orders.saga"),
        ("inventory", "inventory.order-placed"),
        ("inventory", "inventory.release"),
        ("payments", "payments.charge"),
        ("payments", "payments.refund"),
        ("notifications", "notifications.orders"),
    ] {
        let script = format!(
            "var r = {}; return r && r.innerText;",
            row(service, "consumer", &format!("{ns}{queue}"))
        );
        let text = driver
            .wait_for(&session, queue, &script, Duration::from_secs(5))
            .await;
        assert!(text.as_str().unwrap().contains("DLQ"), "{text}");
    }
    // The gateway's downstream policies: a breaker and a retry budget each.
    for kind in ["breaker", "retry_budget"] {
        let script = format!("return !!{};", row("gateway", kind, "inventory"));
        driver
            .wait_for(&session, kind, &script, Duration::from_secs(5))
            .await;
    }
    let first = wait_final(
        &http,
        system.url("gateway"),
        KEY,
        &order_id,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(first["status"], "CONFIRMED", "{first}");

    // An order whose payment command finds no queue: the row is parked in orders' outbox and
    // listed on the page with a "requeue" button of its own.
    charge_binding(&system, false).await;
    let (status, placed) = place(&http, system.url("gateway"), KEY, &order, None)
        .await
        .unwrap();
    assert_eq!(status, 202, "{placed}");
    let stuck_order = placed["data"]["order_id"].as_str().unwrap().to_owned();
    let parked_row = format!(
        "{}.querySelector('.item[data-id]')",
        row("orders", "outbox", "outbox")
    );
    let parked = format!(
        "var i = {parked_row}; return i && i.querySelector('button[data-action=\"requeue\"]') ? i.innerText : null;"
    );
    let text = driver
        .wait_for(&session, "parked row", &parked, Duration::from_secs(15))
        .await;
    assert!(text.as_str().unwrap().contains(&stuck_order), "{text}");

    // The dead-lettered message listed by its id on notifications' consumer, with its button.
    let dlq_row = format!(
        r#"{}.querySelector('.item[data-id="{poison}"]')"#,
        row(
            "notifications",
            "consumer",
            &format!("{ns}notifications.orders")
        )
    );
    let listed = format!(
        "var i = {dlq_row}; return i && i.querySelector('button[data-action=\"requeue_dlq\"]') ? i.innerText : null;"
    );
    let text = driver
        .wait_for(&session, "DLQ listing", &listed, Duration::from_secs(10))
        .await;
    assert!(text.as_str().unwrap().contains("undecodable"), "{text}");

    // The gateway's breaker for inventory forced open over its admin API: red within 2 s, and
    // the gateway refuses to call inventory.
    let breaker = row("gateway", "breaker", "inventory");
    let closed = format!("var r = {breaker}; return r && r.getAttribute('data-state');");
    assert_eq!(
        driver
            .wait_for(&session, "breaker row", &closed, Duration::from_secs(5))
            .await,
        "closed"
    );
    let control = format!(
        "{}/admin/control/breaker/inventory",
        system.admin_url("gateway")
    );
    let forced = http
        .post(format!("{control}/force_open"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(forced.status().is_success(), "{}", forced.status());
    let red = format!(
        r#"var r = {breaker};
           if (!r || r.getAttribute('data-state') !== 'forced_open') return null;
           return getComputedStyle(r.querySelector('.state')).backgroundColor;"#
    );
    let colour = driver
        .wait_for(&session, "forced open", &red, Duration::from_secs(2))
        .await;
    assert_eq!(colour, "rgb(198, 40, 40)");
    let products = |http: reqwest::Client| {
        let url = format!("{}/api/v1/products", system.url("gateway"));
        async move {
            http.get(url)
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(products(http.clone()).await, 503, "an open breaker refuses");

    let screenshot = driver
        .wd(reqwest::Method::GET, &format!("{session}/screenshot"), None)
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(screenshot.as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-shop.png");
    std::fs::write(&out, &png).unwrap();
    if let Ok(path) = std::env::var("DASHBOARD_SCREENSHOT") {
        std::fs::write(path, &png).unwrap();
    }

    // "reset" clicked in the page (in the page's own script: the card is redrawn every second,
    // so an element found over WebDriver first could be replaced before its click arrives).
    let click = format!(
        "var r = {breaker}; var b = r && r.querySelector('button[data-action=\"reset\"]'); if (!b) return null; b.click(); return true;"
    );
    driver
        .wait_for(&session, "reset button", &click, Duration::from_secs(2))
        .await;
    let closed_again =
        format!("var r = {breaker}; return r && r.getAttribute('data-state') === 'closed';");
    driver
        .wait_for(&session, "reset", &closed_again, Duration::from_secs(5))
        .await;
    let state: Value = http
        .get(&control)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["state"]["state"], "closed", "{state}");
    assert_eq!(products(http.clone()).await, 200, "a closed breaker calls");

    // The queue bound again, "requeue" on the parked row: the command goes out, the order
    // completes, and the row leaves the page.
    charge_binding(&system, true).await;
    let requeue = format!(
        "var i = {parked_row}; var b = i && i.querySelector('button'); if (!b) return null; b.click(); return true;"
    );
    driver
        .wait_for(&session, "requeue", &requeue, Duration::from_secs(2))
        .await;
    let stuck = wait_final(
        &http,
        system.url("gateway"),
        KEY,
        &stuck_order,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert_eq!(stuck["status"], "CONFIRMED", "{stuck}");
    let gone = format!("return !{parked_row};");
    driver
        .wait_for(&session, "parked row gone", &gone, Duration::from_secs(5))
        .await;

    // "move back" on the listed message: notifications moves exactly that one to its work
    // queue, with the audit line naming it (undecodable still, it is dead-lettered again).
    let move_back = format!(
        "var i = {dlq_row}; var b = i && i.querySelector('button'); if (!b) return null; b.click(); return true;"
    );
    driver
        .wait_for(&session, "move back", &move_back, Duration::from_secs(2))
        .await;
    wait_for_log(
        &system,
        "notifications",
        &[
            "dead-lettered message moved back to the work queue",
            &poison,
        ],
        Duration::from_secs(10),
    )
    .await;
    let notice = driver
        .exec(
            &session,
            "return document.getElementById('notice').textContent;",
        )
        .await;
    assert_eq!(notice, "", "the action was refused: {notice}");

    driver.wd(reqwest::Method::DELETE, &session, None).await;
    let (amqp_url, namespace) = (system.amqp_url().to_owned(), system.namespace().to_owned());
    let unclean = system.stop().await;
    cleanup::delete_namespace(&amqp_url, &namespace)
        .await
        .expect("the namespace is deleted");
    assert!(unclean.is_empty(), "did not stop cleanly: {unclean:?}");
}
