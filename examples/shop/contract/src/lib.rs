//! # shop-contract
//!
//! What the shop's consumer-driven contract tests (Pact, V4 specification) share. It is a
//! dev-dependency of the services' tests only; no service depends on it.
//!
//! - A **consumer** test (e.g. `gateway/tests/pact_orders.rs`) describes the calls it makes with
//!   [`pact`] (a `PactBuilder` writing into [`pacts_dir`]), starts the builder's mock server and
//!   drives the service's real client code against it. When every expected call arrived and
//!   matched, the pact file `<consumer>-<provider>.json` is written (merged with the file's
//!   other interactions: several tests may add to one pact). [`write_lock`] keeps a test
//!   binary's tests from writing the same file at once.
//! - A **provider** test starts the real service binary ([`Service::start`] for the chassis
//!   services, on SQLite, with a broker address where nothing listens; [`StandIn::start`] for
//!   the payment-provider stand-in) with `SHOP_PACT_STATES=1`, and [`verify`]s it against
//!   every pact in [`pacts_dir`] naming it as the provider: each interaction's provider states
//!   are set up (by default through the service's `POST /_pact/state`, see `shop_common::pact`),
//!   its request is sent, and the answer must match the pact. A mismatch fails the test with
//!   the verifier's report.
//!
//! - Messages (events and commands on RabbitMQ) have pacts of their own, Pact V4 asynchronous
//!   messages: see [`messages`].
//!
//! The internal APIs want the gateway's service token: a pact does not carry one (the token is
//! the transport's business and changes on every run), so [`verify`] adds a valid one to every
//! request it replays.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chassis_http::auth::SigningKey;
use pact_consumer::builders::PactBuilder;
use pact_verifier::callback_executors::{
    HttpRequestProviderStateExecutor, NullRequestFilterExecutor, ProviderStateExecutor,
};
use pact_verifier::{
    FilterInfo, PactSource, ProviderInfo, ProviderTransport, VerificationOptions,
    verify_provider_async,
};

pub mod messages;

pub use pact_consumer;
pub use pact_verifier;

/// The directory holding the pact files, `examples/shop/pacts` (committed: the contracts the
/// providers are verified against).
pub fn pacts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the contract crate sits in examples/shop")
        .join("pacts")
}

/// A V4 pact between `consumer` and `provider` whose mock servers write it into
/// [`pacts_dir`].
pub fn pact(consumer: &str, provider: &str) -> PactBuilder {
    let mut builder = PactBuilder::new_v4(consumer, provider);
    builder.with_output_dir(pacts_dir());
    builder
}

/// Held for a consumer test's whole run (declare it before the mock servers, so it is dropped
/// after them, when they write their pacts): two tests of one binary never write the same
/// pact file at once.
pub async fn write_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A free loopback port, below the ephemeral range (see [`chassis_testkit::free_port`]).
pub fn free_port() -> u16 {
    chassis_testkit::free_port()
}

/// Waits until `url` answers 2xx, for at most 30 s.
async fn wait_ready(http: &reqwest::Client, url: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http.get(url).timeout(Duration::from_secs(2)).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        assert!(Instant::now() < deadline, "{what} did not get ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A shop service's binary running for a provider verification: its own SQLite database in a
/// temporary directory, an unreachable broker (it runs degraded: its HTTP API is what is
/// verified, and it leaves nothing on the shared broker), a fresh service-token key and
/// `SHOP_PACT_STATES=1`. Killed when dropped.
#[derive(Debug)]
pub struct Service {
    _child: tokio::process::Child,
    dir: tempfile::TempDir,
    port: u16,
    token: String,
}

impl Service {
    /// Starts the binary `bin` of the service `name` (the audience of its service tokens) and
    /// waits until its API answers.
    pub async fn start(bin: &str, name: &str) -> Self {
        let key = SigningKey::generate_ed25519()
            .and_then(|k| k.with_kid("pact"))
            .expect("a signing key");
        let issuer = shop_common::auth::issuer_from_pem(&key.to_pkcs8_pem().expect("pem"), "pact")
            .expect("an issuer");
        let token = issuer.issue(name, &[]).expect("a service token");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (port, admin) = (free_port(), free_port());
        let child = tokio::process::Command::new(bin)
            .env_remove("DATABASE_URL")
            .env_remove("INVENTORY_URL")
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("ADMIN_ADDR", format!("127.0.0.1:{admin}"))
            .env("DATA_DIR", dir.path())
            .env(
                "AMQP_URL",
                format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port()),
            )
            .env("SHOP_NAMESPACE", format!("pact-{name}."))
            .env("SERVICE_TOKEN_KID", "pact")
            .env(
                "SERVICE_TOKEN_PUBLIC_KEY",
                key.public_key_pem().expect("public pem"),
            )
            .env(shop_common::pact::ENV, "1")
            .env("LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start the service");
        // Live once every component started, the HTTP server last: the API answers. (Ready
        // would also ask for the broker, which is kept away here.)
        let live = format!("http://127.0.0.1:{admin}/health/live");
        wait_ready(&reqwest::Client::new(), &live, name).await;
        Self {
            _child: child,
            dir,
            port,
            token: token.as_str().to_owned(),
        }
    }

    /// The service's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The service's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A valid service token of the gateway for this service.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The directory holding its SQLite database (`<service>.db`).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The payment-provider stand-in's binary `bin` running with `SHOP_PACT_STATES=1` on a free
/// port, its ledger in memory, no failures injected. Killed when dropped.
#[derive(Debug)]
pub struct StandIn {
    _child: tokio::process::Child,
    port: u16,
}

impl StandIn {
    /// Starts `bin` and waits until it answers.
    pub async fn start(bin: &str) -> Self {
        let port = free_port();
        let child = tokio::process::Command::new(bin)
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .env("SHOP_PACT_STATES", "1")
            .env("PROVIDER_FAILURE_RATE", "0")
            .env("PROVIDER_AMBIGUOUS_FAILURE_RATE", "0")
            .env("PROVIDER_LATENCY", "0ms")
            .env("PROVIDER_OUTAGES", "")
            .env_remove("PROVIDER_LEDGER_FILE")
            .env_remove("PROVIDER_SCENARIO")
            .env_remove("TLS_CERT_FILE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start the payment provider");
        let ready = format!("http://127.0.0.1:{port}/health/ready");
        wait_ready(&reqwest::Client::new(), &ready, "the payment provider").await;
        Self {
            _child: child,
            port,
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// The pact files in [`pacts_dir`] whose provider is `provider` (`*-<provider>.json`), sorted.
pub fn pacts_for(provider: &str) -> Vec<PathBuf> {
    let suffix = format!("-{provider}.json");
    let mut files: Vec<PathBuf> = std::fs::read_dir(pacts_dir())
        .expect("the pacts directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(&suffix))
        })
        .collect();
    files.sort();
    files
}

/// The state executor posting to the provider's `POST /_pact/state` on `port`.
pub fn state_route(port: u16) -> Arc<HttpRequestProviderStateExecutor> {
    Arc::new(HttpRequestProviderStateExecutor {
        state_change_url: Some(format!(
            "http://127.0.0.1:{port}{}",
            shop_common::pact::PATH
        )),
        state_change_teardown: false,
        state_change_body: true,
        retries: 0,
    })
}

/// Verifies the provider `provider` listening on `port` against all its pacts in
/// [`pacts_dir`] (there must be at least one), setting provider states up with `states`
/// (e.g. [`state_route`]) and sending `token` as the bearer token with every request. Panics
/// with the verifier's report when an interaction does not match, so the calling test fails.
pub async fn verify<S>(provider: &str, port: u16, token: Option<&str>, states: Arc<S>)
where
    S: ProviderStateExecutor + Send + Sync + 'static,
{
    let files = pacts_for(provider);
    assert!(
        !files.is_empty(),
        "no pact in {} names {provider} as its provider",
        pacts_dir().display()
    );
    let sources = files
        .iter()
        .map(|f| PactSource::File(f.display().to_string()))
        .collect();
    let info = ProviderInfo {
        name: provider.to_owned(),
        host: "127.0.0.1".into(),
        transports: vec![ProviderTransport {
            transport: "http".into(),
            port: Some(port),
            path: None,
            scheme: Some("http".into()),
        }],
        ..ProviderInfo::default()
    };
    let mut custom_headers = HashMap::new();
    if let Some(token) = token {
        custom_headers.insert("Authorization".to_owned(), format!("Bearer {token}"));
    }
    let options = VerificationOptions::<NullRequestFilterExecutor> {
        custom_headers,
        coloured_output: false,
        request_timeout: 5000,
        ..VerificationOptions::default()
    };
    let result = verify_provider_async(
        info,
        sources,
        FilterInfo::None,
        Vec::new(),
        &options,
        None,
        &states,
        None,
    )
    .await
    .expect("the verification ran");
    let verified = result.interaction_results.len();
    assert!(
        result.result,
        "{provider} does not honour its pacts ({} of {verified} interactions failed):\n{}\n{:#?}",
        result.errors.len(),
        result.output.join("\n"),
        result.errors
    );
    assert!(verified > 0, "no interaction of {provider}'s pacts ran");
}

/// What a [`FnStates`] setup returns: the values the verifier may inject into the request, or
/// why the state could not be set up.
pub type StateFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<StateValues, String>> + Send>>;

/// Values a provider state hands to the verifier (for the pact's `fromProviderState`
/// expressions, e.g. `${orderId}` in a path).
pub type StateValues = HashMap<String, serde_json::Value>;

/// A state executor running `setup(state, params)` in the test itself: for a provider whose
/// states are reached through its own API (an order is placed with `POST /internal/orders`)
/// rather than a `/_pact/state` route. Teardowns, and calls naming no state, do nothing.
pub struct FnStates<F> {
    setup: F,
}

impl<F> FnStates<F>
where
    F: Fn(String, StateValues) -> StateFuture + Send + Sync + 'static,
{
    /// The executor calling `setup`.
    pub fn new(setup: F) -> Arc<Self> {
        Arc::new(Self { setup })
    }
}

impl<F> std::fmt::Debug for FnStates<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnStates")
    }
}

#[async_trait::async_trait]
impl<F> ProviderStateExecutor for FnStates<F>
where
    F: Fn(String, StateValues) -> StateFuture + Send + Sync + 'static,
{
    async fn call(
        self: Arc<Self>,
        interaction_id: Option<String>,
        provider_state: &pact_models::provider_states::ProviderState,
        setup: bool,
        _client: Option<&reqwest::Client>,
    ) -> anyhow::Result<StateValues> {
        // The verifier also calls with no state, for interactions that need none.
        if !setup || provider_state.name.is_empty() {
            return Ok(StateValues::new());
        }
        let params = provider_state.params.clone().into_iter().collect();
        (self.setup)(provider_state.name.clone(), params)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "provider state `{}` of interaction {interaction_id:?}: {e}",
                    provider_state.name
                )
            })
    }

    fn teardown(&self) -> bool {
        false
    }
}
