//! The dashboard in a real browser: headless Chromium, driven over chromedriver's WebDriver
//! HTTP API, opens the dashboard of two running services, waits for their live data, sees a
//! breaker forced open over the admin API turn red, clicks "reset" and sees it close. The
//! screenshot is saved as `dashboard.png` in the test's output directory (`CARGO_TARGET_TMPDIR`)
//! and, when `DASHBOARD_SCREENSHOT` names a file, there too (how the README's is made).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them).

mod common;
#[path = "control/support.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use chassis_http::dashboard::DashboardService;
use chassis_http::server::{Server, ServerConfig};
use chassis_testkit::free_port;
use common::call_json as call;
use http_body_util::{BodyExt as _, Full};
use serde_json::{Value, json};
use support::{ADMIN_AUDIENCE, TestService, issuer};

/// Kills chromedriver (and so its browser) whatever happens.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
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

async fn wd(method: &str, url: &str, body: Option<Value>) -> Value {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = client.request(req).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(
        status.is_success(),
        "WebDriver {method} {url}: {status} {value}"
    );
    value["value"].clone()
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
            _profile: tempfile::tempdir().unwrap(),
        };
        // chromedriver answers /status once it listens.
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return driver;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("chromedriver did not listen on {port}");
    }

    async fn session(&self) -> String {
        let profile = format!("--user-data-dir={}", self._profile.path().display());
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": find(&["chromium"]),
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1280,900", profile],
            }
        }}});
        let value = wd("POST", &format!("{}/session", self.url), Some(caps)).await;
        value["sessionId"].as_str().unwrap().to_owned()
    }
}

/// Runs `script` in the page until it returns something other than `null` (or `false`),
/// for at most `within`; the last value or a panic naming `what`.
async fn wait_for(session: &str, what: &str, script: &str, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        let value = wd(
            "POST",
            &format!("{session}/execute/sync"),
            Some(json!({ "script": script, "args": [] })),
        )
        .await;
        if !value.is_null() && value != json!(false) {
            return value;
        }
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const BREAKER_ROW: &str = r#"document.querySelector('section[data-service="orders"] .component[data-kind="breaker"][data-name="inventory"]')"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_every_service_and_steers_a_breaker() {
    let issuer = issuer();
    let orders = TestService::start("orders", issuer.key_set()).await;
    let payments = TestService::start("payments", issuer.key_set()).await;
    let dashboard = DashboardService::new()
        .service("orders", orders.admin_url())
        .unwrap()
        .service("payments", payments.admin_url())
        .unwrap();
    let server = Server::bind(ServerConfig::default().bind("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap()
        .handle_signals(false);
    let page = format!("http://{}/dashboard", server.local_addr());
    let stop = server.shutdown_handle();
    tokio::spawn(server.serve(dashboard));

    let token = issuer.issue(ADMIN_AUDIENCE, &["admin"]).unwrap();
    let driver = Driver::start().await;
    let session = format!("{}/session/{}", driver.url, driver.session().await);
    wd(
        "POST",
        &format!("{session}/url"),
        Some(json!({ "url": format!("{page}#token={}", token.as_str()) })),
    )
    .await;

    // Live data from both services: each card filled from its stream.
    for service in ["orders", "payments"] {
        let script = format!(
            r#"var c = document.querySelector('section[data-service="{service}"]');
               return c && c.getAttribute('data-updated') && c.querySelector('.status.live') ? c.innerText : null;"#
        );
        let text = wait_for(&session, service, &script, Duration::from_secs(20)).await;
        let text = text.as_str().unwrap();
        assert!(text.contains("inventory"), "{service}: {text}");
        assert!(text.contains("database"), "{service}: {text}");
    }
    let closed = format!("var r = {BREAKER_ROW}; return r && r.getAttribute('data-state');");
    assert_eq!(
        wait_for(&session, "breaker row", &closed, Duration::from_secs(5)).await,
        "closed"
    );

    // Forced open over the admin API: red on the page within 2 s.
    let url = format!(
        "{}/admin/control/breaker/inventory/force_open",
        orders.admin_url()
    );
    let (status, _) = call("POST", &url, Some(token.as_str()), "").await;
    assert!(status.is_success());
    let red = format!(
        r#"var r = {BREAKER_ROW};
           if (!r || r.getAttribute('data-state') !== 'forced_open') return null;
           return getComputedStyle(r.querySelector('.state')).backgroundColor;"#
    );
    let colour = wait_for(&session, "forced open", &red, Duration::from_secs(2)).await;
    assert_eq!(colour, "rgb(198, 40, 40)");
    let payments_breaker = r#"return document.querySelector('section[data-service="payments"] .component[data-kind="breaker"]').getAttribute('data-state');"#;
    assert_eq!(
        wait_for(
            &session,
            "payments",
            payments_breaker,
            Duration::from_secs(2)
        )
        .await,
        "closed",
        "only the forced service's breaker changes"
    );

    let screenshot = wd("GET", &format!("{session}/screenshot"), None).await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(screenshot.as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&out, &png).unwrap();
    if let Ok(path) = std::env::var("DASHBOARD_SCREENSHOT") {
        std::fs::write(path, &png).unwrap();
    }

    // Click "reset": the breaker closes, in the service and on the page.
    // A click in the page (the card is redrawn every second, so a WebDriver element found
    // first could be replaced before its click arrives).
    let click = format!(
        "var b = {BREAKER_ROW}.querySelector('button[data-action=\"reset\"]'); b.click(); return true;"
    );
    wait_for(&session, "reset button", &click, Duration::from_secs(2)).await;
    let closed_again =
        format!("var r = {BREAKER_ROW}; return r && r.getAttribute('data-state') === 'closed';");
    wait_for(&session, "reset", &closed_again, Duration::from_secs(5)).await;
    assert_eq!(
        orders.client.circuit_breaker().unwrap().state().as_str(),
        "closed"
    );

    wd("DELETE", &session, None).await;
    stop.trigger();
}
