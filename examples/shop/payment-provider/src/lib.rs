//! # shop-payment-provider
//!
//! A stand-in for an external card processor, so the shop's `payments` service has something real
//! (a separate process over HTTP) to be resilient against. It is deliberately *not* built on the
//! chassis: it plays a third party. Its behaviour is configurable at start (flags / environment) and
//! at run time (admin endpoints):
//!
//! - **failure rate**: a fraction of charge requests fail with `500` before anything is recorded;
//! - **ambiguous failure rate**: a fraction of charges *are* recorded but answer `500` anyway (the
//!   "did it go through?" case an idempotency key exists for);
//! - **latency**: every charge waits this long before answering;
//! - **outages**: windows relative to process start (`--outages 10s+5s,60s+10s`) or toggled with
//!   `POST /admin/outage`; during an outage every API call answers `503` with `Retry-After`;
//! - the payment method [`DECLINED_METHOD`] (`"card_declined"`) is always declined with `402`;
//! - **a scenario** of the resilience simulator (`benches/scenarios/*.toml`, `--scenario`, or
//!   `PUT /admin/scenario`): see [Playing a scenario](#playing-a-scenario).
//!
//! ## Playing a scenario
//! [`ProviderState::play`] makes charges follow a simulator scenario's downstream instead of the
//! failure rate and latency above: each charge waits the latency the scenario's model draws
//! (log-normal around its median and p99, plus the outage windows' extra latency and the
//! overload penalty for charges in flight beyond its capacity), then fails with `500` with the
//! scenario's failure probability at that moment. The model is the simulator's own
//! ([`chassis_scenario::DownstreamModel`]), so a client run against the stand-in can be compared
//! with the simulator's prediction for the same scenario; the scenario's clock starts when play
//! starts. A charge dropped while it waits (the client timed out) leaves the model's in-flight
//! count, as in the simulator. [`ProviderState::playback_calls`] lists when each charge request
//! arrived, which is the attempts a client made. `--scenario file.toml [--time-scale 0.5]` plays
//! from start-up; `PUT /admin/scenario` with `{"seed":42,"downstream":{...}}` (the scenario's
//! `[downstream]` table as JSON) starts one at run time, `DELETE` stops it, `GET` tells its
//! elapsed time and calls.
//!
//! ## Ledger
//! By default the provider keeps its charges and idempotency keys in memory, which is enough for
//! tests that never restart it. A real card processor never forgets a charge, though, and a
//! crash test that kills the stand-in must not turn one charge into two because the restarted
//! process no longer knows the key (the retried charge would be taken again, and the first one
//! would be lost from the ledger the test checks). [`ProviderState::with_ledger`]
//! (`--ledger <file>` / `PROVIDER_LEDGER_FILE`) appends every recorded answer and every refund
//! to a JSON-lines file before answering and reloads it at start: keys, charges, refunds and the
//! charge, decline and refund counters survive a restart (a `SIGKILL` included: each record is
//! one `write` to the file, in the kernel's page cache once the call returns).
//!
//! In memory, answers are kept for a retention window ([`ProviderState::with_retention`],
//! `--retention` / `PROVIDER_RETENTION`, 24 hours by default, as card processors keep
//! idempotency keys for about a day): an older key can be used again, and its charge is no
//! longer listed or refundable. Without a window the stand-in's memory grows with every charge;
//! the shop's soak runs it with a window shorter than its warm-up so that its memory reaches a
//! steady state the soak can judge.
//!
//! ## API
//! - `POST /v1/charges` with a required `Idempotency-Key` header and
//!   `{"amount_cents":1200,"currency":"EUR","payment_method":"card_ok","reference":"order-1"}`:
//!   `201` with the charge, `402` when declined. The same key with the same body replays the first
//!   answer (header `idempotent-replayed: true`) and never charges twice; the same key with another
//!   body is `422`; a key whose first request is still running is `409`, one whose request was
//!   dropped while it waited (the client gave up) is free again.
//! - `POST /v1/charges/{id}/refund`: refunds once; repeating it returns the same refund.
//! - `GET /v1/charges?reference=…`: charges for a reference (tests use it to prove "one charge").
//! - `GET /v1/stats`: counters (charges, declines, refunds, injected failures, outage rejections).
//! - `GET|PUT /admin/config` (`{"failure_rate":0.1,"ambiguous_failure_rate":0.0,"latency_ms":20}`),
//!   `POST /admin/outage` (`{"active":true}` or `{"active":true,"for_ms":5000}`, `{"active":false}`).
//! - `GET|PUT|DELETE /admin/scenario`: the scenario being played (see above).
//! - `GET /health/live`, `GET /health/ready`.
//!
//! ## Example
//! ```
//! use shop_payment_provider::{app, Behaviour, ProviderState};
//!
//! let state = ProviderState::new(Behaviour::default(), Vec::new());
//! let router: axum::Router = app(state);
//! # let _ = router;
//! ```

mod pact_states;

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead as _, Write as _};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chassis_scenario::{CallPlan, DownstreamConfig, DownstreamModel};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The payment method that is always declined.
pub const DECLINED_METHOD: &str = "card_declined";

/// Tunable behaviour of the provider.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Behaviour {
    /// Fraction (0..=1) of charges failing with 500 before anything is recorded. Defaults to 0.
    pub failure_rate: f64,
    /// Fraction (0..=1) of charges recorded but answered with 500. Defaults to 0.
    pub ambiguous_failure_rate: f64,
    /// Added latency per charge, in milliseconds. Defaults to 0.
    pub latency_ms: u64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            failure_rate: 0.0,
            ambiguous_failure_rate: 0.0,
            latency_ms: 0,
        }
    }
}

/// An outage window relative to process start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutageWindow {
    /// When the outage starts, after process start.
    pub start: Duration,
    /// How long it lasts.
    pub duration: Duration,
}

/// Parses `"10s+5s,1m+500ms"` into outage windows (`start+duration`, comma separated).
pub fn parse_outages(s: &str) -> Result<Vec<OutageWindow>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| {
            let (start, duration) = part
                .split_once('+')
                .ok_or_else(|| format!("outage window `{part}` is not `start+duration`"))?;
            Ok(OutageWindow {
                start: parse_duration(start)?,
                duration: parse_duration(duration)?,
            })
        })
        .collect()
}

/// Parses `"250ms"`, `"5s"`, `"2m"` or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| (&s[..i], &s[i..]));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration `{s}`"))?;
    match unit {
        "" | "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!(
            "invalid duration unit in `{s}` (use ms, s, m or h)"
        )),
    }
}

/// A recorded charge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Charge {
    /// Provider charge id (`ch_…`).
    pub id: String,
    /// `succeeded` or `refunded`.
    pub status: String,
    /// Amount in cents.
    pub amount_cents: u64,
    /// Currency code.
    pub currency: String,
    /// The caller's reference (the shop uses the order id).
    pub reference: String,
    /// Refund id once refunded.
    pub refund_id: Option<String>,
}

/// Counters served at `GET /v1/stats`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// Charges created (each one real money moved).
    pub charges: u64,
    /// Declined charge attempts (first answers only, not replays).
    pub declines: u64,
    /// Refunds made.
    pub refunds: u64,
    /// Idempotent replays served.
    pub replays: u64,
    /// Injected failures (both kinds).
    pub failures_injected: u64,
    /// Requests rejected because of an outage.
    pub outage_rejections: u64,
}

#[derive(Debug)]
enum KeyEntry {
    InFlight {
        fingerprint: String,
    },
    Done {
        fingerprint: String,
        status: StatusCode,
        body: Value,
    },
}

#[derive(Debug, Default)]
struct Store {
    keys: HashMap<String, KeyEntry>,
    charges: HashMap<String, Charge>,
    /// Answers in the order they were recorded, with when: what the retention window drops
    /// first.
    recorded: VecDeque<(Instant, String, Option<String>)>,
    /// How long answers (keys and charges) are kept in memory; `None`: for ever.
    retention: Option<Duration>,
    stats: Stats,
    /// The ledger file records are appended to, if the provider keeps one.
    ledger: Option<std::fs::File>,
}

/// One line of the ledger file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
enum LedgerRecord {
    /// The first answer to an idempotency key (a charge or a decline), replayed for the key.
    Answer {
        key: String,
        fingerprint: String,
        status: u16,
        body: Value,
        /// The charge it created, if any.
        charge: Option<Charge>,
    },
    /// A refund of a charge.
    Refund {
        charge_id: String,
        refund_id: String,
    },
}

impl Store {
    /// Applies a ledger record (at load, or right after writing it).
    fn apply(&mut self, record: LedgerRecord) {
        match record {
            LedgerRecord::Answer {
                key,
                fingerprint,
                status,
                body,
                charge,
            } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                if status == StatusCode::PAYMENT_REQUIRED {
                    self.stats.declines += 1;
                }
                let charge_id = charge.as_ref().map(|c| c.id.clone());
                if let Some(charge) = charge {
                    self.stats.charges += 1;
                    self.charges.insert(charge.id.clone(), charge);
                }
                self.keys.insert(
                    key.clone(),
                    KeyEntry::Done {
                        fingerprint,
                        status,
                        body,
                    },
                );
                let now = Instant::now();
                self.recorded.push_back((now, key, charge_id));
                self.expire(now);
            }
            LedgerRecord::Refund {
                charge_id,
                refund_id,
            } => {
                if let Some(charge) = self.charges.get_mut(&charge_id)
                    && charge.refund_id.is_none()
                {
                    charge.refund_id = Some(refund_id);
                    charge.status = "refunded".into();
                    self.stats.refunds += 1;
                }
            }
        }
    }

    /// Forgets answers older than the retention window: their keys are free again and their
    /// charges are no longer listed or refundable (a real processor keeps idempotency keys for
    /// a day or so; a stand-in running for hours must not grow without bound).
    fn expire(&mut self, now: Instant) {
        let Some(retention) = self.retention else {
            return;
        };
        while let Some((at, _, _)) = self.recorded.front()
            && now.duration_since(*at) >= retention
        {
            let (_, key, charge_id) = self.recorded.pop_front().expect("front exists");
            if matches!(self.keys.get(&key), Some(KeyEntry::Done { .. })) {
                self.keys.remove(&key);
            }
            if let Some(id) = charge_id {
                self.charges.remove(&id);
            }
        }
    }

    /// Writes `record` to the ledger (if any), then applies it. A record that cannot be written
    /// is not applied: the caller answers 500 and nothing happened.
    fn record(&mut self, record: LedgerRecord) -> std::io::Result<()> {
        if let Some(file) = self.ledger.as_mut() {
            let mut line = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
            line.push(b'\n');
            // One write per record: a kill between two records loses at most the later one,
            // whose answer was never sent.
            file.write_all(&line)?;
        }
        self.apply(record);
        Ok(())
    }
}

#[derive(Debug)]
struct Inner {
    behaviour: Mutex<Behaviour>,
    started: Instant,
    windows: Vec<OutageWindow>,
    /// `Some(None)`: outage until turned off; `Some(Some(t))`: until `t`.
    manual_outage: Mutex<Option<Option<Instant>>>,
    store: Mutex<Store>,
    playback: Mutex<Option<Playback>>,
}

/// A scenario being played: the simulator's downstream model on the real clock.
#[derive(Debug)]
struct Playback {
    model: DownstreamModel,
    started: Instant,
    /// When each charge request arrived, since `started`.
    calls: Vec<Duration>,
    /// Tells a charge's in-flight guard whether the playback it began in is still this one.
    generation: u64,
}

/// Shared state of the provider (cheap to clone).
#[derive(Debug, Clone)]
pub struct ProviderState {
    inner: Arc<Inner>,
}

impl ProviderState {
    /// Creates the state with a behaviour and scheduled outage windows.
    pub fn new(behaviour: Behaviour, windows: Vec<OutageWindow>) -> Self {
        Self {
            inner: Arc::new(Inner {
                behaviour: Mutex::new(behaviour),
                started: Instant::now(),
                windows,
                manual_outage: Mutex::new(None),
                store: Mutex::new(Store::default()),
                playback: Mutex::new(None),
            }),
        }
    }

    /// [`ProviderState::new`] with a ledger file at `path` (created if missing): what it holds is
    /// loaded, and every answer and refund from now on is appended to it before the provider
    /// answers, so a restarted provider replays keys and lists charges it recorded before (see
    /// the [crate docs](crate#ledger)). A last line cut short (a crash mid-write, never answered)
    /// is dropped from the file.
    ///
    /// # Errors
    /// The file cannot be read or opened for appending, or a line before the last is not a
    /// ledger record.
    pub fn with_ledger(
        behaviour: Behaviour,
        windows: Vec<OutageWindow>,
        path: &std::path::Path,
    ) -> std::io::Result<Self> {
        let mut store = Store::default();
        if path.exists() {
            let lines: Vec<String> = std::io::BufReader::new(std::fs::File::open(path)?)
                .lines()
                .collect::<Result<_, _>>()?;
            let last = lines.len().saturating_sub(1);
            for (i, line) in lines.iter().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<LedgerRecord>(line) {
                    Ok(record) => store.apply(record),
                    Err(_) if i == last => {}
                    Err(e) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("{}: line {}: {e}", path.display(), i + 1),
                        ));
                    }
                }
            }
        }
        // A line cut short by a crash (it was never answered) is cut off, so the next record
        // starts on a line of its own.
        let bytes = std::fs::read(path).unwrap_or_default();
        if bytes.last().is_some_and(|b| *b != b'\n') {
            let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)?
                .set_len(keep as u64)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        store.ledger = Some(file);
        let state = Self::new(behaviour, windows);
        *state.inner.store.lock().expect("store lock") = store;
        Ok(state)
    }

    /// Keeps answers (idempotency keys and the charges they created) for `retention` only:
    /// after it a key can be used again and its charge is no longer listed or refundable.
    /// Without it (the default of [`ProviderState::new`]) nothing is forgotten and memory grows
    /// with every charge. Answers loaded from a ledger file count from the moment they were
    /// loaded.
    pub fn with_retention(self, retention: Duration) -> Self {
        {
            let mut store = self.inner.store.lock().expect("store lock");
            store.retention = Some(retention);
            store.expire(Instant::now());
        }
        self
    }

    /// Starts playing a simulator scenario's downstream (see the
    /// [crate docs](crate#playing-a-scenario)), its clock starting now; replaces a scenario
    /// already playing. `seed` seeds the model's draws.
    pub fn play(&self, downstream: DownstreamConfig, seed: u64) {
        let mut playback = self.inner.playback.lock().expect("playback lock");
        let generation = playback.as_ref().map_or(0, |p| p.generation + 1);
        *playback = Some(Playback {
            model: DownstreamModel::new(downstream, seed),
            started: Instant::now(),
            calls: Vec::new(),
            generation,
        });
    }

    /// Stops playing a scenario: charges follow the [`Behaviour`] again.
    pub fn stop_playing(&self) {
        *self.inner.playback.lock().expect("playback lock") = None;
    }

    /// When each charge request arrived since the scenario started playing (every attempt of
    /// every client, replays and refusals included); empty when none plays.
    pub fn playback_calls(&self) -> Vec<Duration> {
        self.inner
            .playback
            .lock()
            .expect("playback lock")
            .as_ref()
            .map(|p| p.calls.clone())
            .unwrap_or_default()
    }

    /// Records a charge request's arrival, if a scenario plays.
    fn playback_arrival(&self) {
        if let Some(p) = self.inner.playback.lock().expect("playback lock").as_mut() {
            let at = p.started.elapsed();
            p.calls.push(at);
        }
    }

    /// The plan of a charge about to be processed, if a scenario plays, with the guard that
    /// keeps it in the model's in-flight count.
    fn playback_begin(&self) -> Option<(CallPlan, PlaybackCall<'_>)> {
        let mut playback = self.inner.playback.lock().expect("playback lock");
        let p = playback.as_mut()?;
        let plan = p.model.begin(p.started.elapsed());
        Some((
            plan,
            PlaybackCall {
                state: self,
                generation: p.generation,
            },
        ))
    }

    /// The current counters.
    pub fn stats(&self) -> Stats {
        self.inner.store.lock().expect("store lock").stats
    }

    /// Remaining outage time, if an outage is active now (`Duration::MAX`-free: unknown end = 1 s).
    fn outage_remaining(&self) -> Option<Duration> {
        let now = Instant::now();
        {
            let mut manual = self.inner.manual_outage.lock().expect("outage lock");
            match *manual {
                Some(None) => return Some(Duration::from_secs(1)),
                Some(Some(until)) if until > now => return Some(until - now),
                Some(Some(_)) => *manual = None,
                None => {}
            }
        }
        let elapsed = now - self.inner.started;
        self.inner
            .windows
            .iter()
            .find(|w| elapsed >= w.start && elapsed < w.start + w.duration)
            .map(|w| w.start + w.duration - elapsed)
    }

    fn reject_if_outage(&self) -> Option<Response> {
        let remaining = self.outage_remaining()?;
        self.inner
            .store
            .lock()
            .expect("store lock")
            .stats
            .outage_rejections += 1;
        let secs = remaining.as_secs().max(1);
        let mut resp = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "outage",
            "provider is down",
        );
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from(secs));
        Some(resp)
    }
}

/// Builds the provider's router.
pub fn app(state: ProviderState) -> Router {
    // The contract tests' provider states, only with SHOP_PACT_STATES=1 (see `pact_states`).
    let states = if pact_states::enabled() {
        pact_states::routes()
    } else {
        Router::new()
    };
    states
        .route("/v1/charges", post(create_charge).get(list_charges))
        .route("/v1/charges/{id}/refund", post(refund_charge))
        .route("/v1/stats", get(stats))
        .route("/admin/config", get(get_config).put(put_config))
        .route("/admin/outage", post(set_outage))
        .route(
            "/admin/scenario",
            get(get_scenario).put(put_scenario).delete(delete_scenario),
        )
        .route("/health/live", get(health))
        .route("/health/ready", get(health))
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// Body of `POST /v1/charges`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChargeRequest {
    /// Amount in cents, > 0.
    pub amount_cents: u64,
    /// Currency code, e.g. `EUR`.
    pub currency: String,
    /// Payment method token; [`DECLINED_METHOD`] is always declined.
    pub payment_method: String,
    /// The caller's reference.
    pub reference: String,
}

async fn create_charge(
    State(state): State<ProviderState>,
    headers: HeaderMap,
    Json(req): Json<ChargeRequest>,
) -> Response {
    state.playback_arrival();
    if let Some(resp) = state.reject_if_outage() {
        return resp;
    }
    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing_idempotency_key",
            "Idempotency-Key header is required",
        );
    };
    let key = key.to_owned();
    if req.amount_cents == 0 {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
            "amount_cents must be > 0",
        );
    }
    let fingerprint = serde_json::to_string(&req).expect("serialisable request");
    {
        let mut store = state.inner.store.lock().expect("store lock");
        match store.keys.get(&key) {
            Some(KeyEntry::Done {
                fingerprint: f,
                status,
                body,
            }) if *f == fingerprint => {
                let (status, body) = (*status, body.clone());
                store.stats.replays += 1;
                let mut resp = (status, Json(body)).into_response();
                resp.headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                return resp;
            }
            Some(KeyEntry::InFlight { fingerprint: f } | KeyEntry::Done { fingerprint: f, .. })
                if *f != fingerprint =>
            {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with a different request",
                );
            }
            Some(KeyEntry::InFlight { .. }) => {
                return error(
                    StatusCode::CONFLICT,
                    "request_in_progress",
                    "a request with this key is in progress",
                );
            }
            _ => {
                store.keys.insert(
                    key.clone(),
                    KeyEntry::InFlight {
                        fingerprint: fingerprint.clone(),
                    },
                );
            }
        }
    }
    let mut mark = InFlightMark {
        state: &state,
        key: Some(&key),
    };
    let behaviour = *state.inner.behaviour.lock().expect("behaviour lock");
    let planned = state.playback_begin();
    match &planned {
        Some((plan, _)) => tokio::time::sleep(plan.latency).await,
        None if behaviour.latency_ms > 0 => {
            tokio::time::sleep(Duration::from_millis(behaviour.latency_ms)).await;
        }
        None => {}
    }
    // No await from here on: the request can no longer be dropped half-way.
    mark.key = None;
    drop(mark);
    let (fails, ambiguous_failure_rate) = match planned {
        // The call leaves the model's in-flight count when its wait is over, as in the simulator.
        Some((plan, _leave)) => (plan.fails, 0.0),
        None => (
            rand::random::<f64>() < behaviour.failure_rate,
            behaviour.ambiguous_failure_rate,
        ),
    };
    let mut store = state.inner.store.lock().expect("store lock");
    if fails {
        store.keys.remove(&key);
        store.stats.failures_injected += 1;
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "injected failure",
        );
    }
    let (status, body, charge) = if req.payment_method == DECLINED_METHOD {
        (
            StatusCode::PAYMENT_REQUIRED,
            json!({"error": {"code": "card_declined", "message": "the card was declined"}}),
            None,
        )
    } else {
        let charge = Charge {
            id: format!("ch_{}", uuid::Uuid::now_v7().simple()),
            status: "succeeded".into(),
            amount_cents: req.amount_cents,
            currency: req.currency.clone(),
            reference: req.reference.clone(),
            refund_id: None,
        };
        let body = serde_json::to_value(&charge).expect("serialisable charge");
        (StatusCode::CREATED, body, Some(charge))
    };
    let recorded = store.record(LedgerRecord::Answer {
        key: key.clone(),
        fingerprint,
        status: status.as_u16(),
        body: body.clone(),
        charge,
    });
    if let Err(e) = recorded {
        // Nothing was recorded: the key is free for a retry.
        store.keys.remove(&key);
        tracing::error!(error = %e, "the ledger could not be written");
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the ledger could not be written",
        );
    }
    if rand::random::<f64>() < ambiguous_failure_rate {
        store.stats.failures_injected += 1;
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "injected failure after processing",
        );
    }
    (status, Json(body)).into_response()
}

/// The in-flight mark of a charge's key while its request waits. Dropped with the request (the
/// client hung up or timed out mid-wait, and the server dropped the handler) while still armed,
/// it removes the mark: nothing was recorded, so a retry with the key must be processed, not
/// answered 409 "in progress" forever.
struct InFlightMark<'a> {
    state: &'a ProviderState,
    key: Option<&'a str>,
}

impl Drop for InFlightMark<'_> {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut store = self
            .state
            .inner
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if matches!(store.keys.get(key), Some(KeyEntry::InFlight { .. })) {
            store.keys.remove(key);
        }
    }
}

/// A played charge in the scenario model's in-flight count, leaving it when dropped: when its
/// wait is over, or with the request if the client hung up mid-wait.
struct PlaybackCall<'a> {
    state: &'a ProviderState,
    generation: u64,
}

impl Drop for PlaybackCall<'_> {
    fn drop(&mut self) {
        let mut playback = self
            .state
            .inner
            .playback
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = playback.as_mut()
            && p.generation == self.generation
        {
            p.model.end();
        }
    }
}

async fn refund_charge(State(state): State<ProviderState>, Path(id): Path<String>) -> Response {
    if let Some(resp) = state.reject_if_outage() {
        return resp;
    }
    let mut store = state.inner.store.lock().expect("store lock");
    let Some(charge) = store.charges.get(&id) else {
        return error(StatusCode::NOT_FOUND, "no_such_charge", "no such charge");
    };
    if charge.refund_id.is_none() {
        let record = LedgerRecord::Refund {
            charge_id: id.clone(),
            refund_id: format!("re_{}", uuid::Uuid::now_v7().simple()),
        };
        if let Err(e) = store.record(record) {
            tracing::error!(error = %e, "the ledger could not be written");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the ledger could not be written",
            );
        }
    }
    let body = serde_json::to_value(&store.charges[&id]).expect("serialisable charge");
    (StatusCode::OK, Json(body)).into_response()
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    reference: Option<String>,
}

async fn list_charges(State(state): State<ProviderState>, Query(q): Query<ListQuery>) -> Response {
    let store = state.inner.store.lock().expect("store lock");
    let mut charges: Vec<&Charge> = store
        .charges
        .values()
        .filter(|c| q.reference.as_ref().is_none_or(|r| *r == c.reference))
        .collect();
    charges.sort_by(|a, b| a.id.cmp(&b.id));
    Json(json!({ "charges": charges })).into_response()
}

async fn stats(State(state): State<ProviderState>) -> Json<Stats> {
    Json(state.stats())
}

async fn get_config(State(state): State<ProviderState>) -> Json<Value> {
    let behaviour = *state.inner.behaviour.lock().expect("behaviour lock");
    let outage = state.outage_remaining().is_some();
    Json(json!({ "behaviour": behaviour, "outage_active": outage }))
}

async fn put_config(State(state): State<ProviderState>, Json(b): Json<Behaviour>) -> Response {
    let valid = |r: f64| (0.0..=1.0).contains(&r);
    if !valid(b.failure_rate) || !valid(b.ambiguous_failure_rate) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rate",
            "rates must be within 0..=1",
        );
    }
    *state.inner.behaviour.lock().expect("behaviour lock") = b;
    Json(json!({ "behaviour": b })).into_response()
}

/// Body of `POST /admin/outage`.
#[derive(Debug, Deserialize)]
struct OutageRequest {
    active: bool,
    for_ms: Option<u64>,
}

async fn set_outage(
    State(state): State<ProviderState>,
    Json(req): Json<OutageRequest>,
) -> Json<Value> {
    let mut manual = state.inner.manual_outage.lock().expect("outage lock");
    *manual = match (req.active, req.for_ms) {
        (false, _) => None,
        (true, None) => Some(None),
        (true, Some(ms)) => Some(Some(Instant::now() + Duration::from_millis(ms))),
    };
    Json(json!({ "outage_active": req.active }))
}

/// Body of `PUT /admin/scenario`: a simulator scenario's `[downstream]` table and seed.
#[derive(Debug, Deserialize)]
struct PlayRequest {
    #[serde(default = "default_seed")]
    seed: u64,
    downstream: DownstreamConfig,
}

fn default_seed() -> u64 {
    42
}

async fn put_scenario(
    State(state): State<ProviderState>,
    Json(req): Json<PlayRequest>,
) -> Response {
    let valid = |r: f64| (0.0..=1.0).contains(&r);
    if !valid(req.downstream.failure_rate)
        || !req.downstream.outages.iter().all(|o| valid(o.failure_rate))
    {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rate",
            "failure rates must be within 0..=1",
        );
    }
    state.play(req.downstream, req.seed);
    Json(json!({ "playing": true })).into_response()
}

async fn get_scenario(State(state): State<ProviderState>) -> Json<Value> {
    let playback = state.inner.playback.lock().expect("playback lock");
    Json(match playback.as_ref() {
        Some(p) => json!({
            "playing": true,
            "elapsed_ms": u64::try_from(p.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "calls": p.calls.len(),
            "in_flight": p.model.in_flight(),
        }),
        None => json!({ "playing": false }),
    })
}

async fn delete_scenario(State(state): State<ProviderState>) -> Json<Value> {
    state.stop_playing();
    Json(json!({ "playing": false }))
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "UP" }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_windows() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("40").unwrap(), Duration::from_millis(40));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("x").is_err());
        let w = parse_outages("10s+5s, 1m+500ms").unwrap();
        assert_eq!(
            w,
            vec![
                OutageWindow {
                    start: Duration::from_secs(10),
                    duration: Duration::from_secs(5)
                },
                OutageWindow {
                    start: Duration::from_secs(60),
                    duration: Duration::from_millis(500)
                },
            ]
        );
        assert!(parse_outages("10s").is_err());
        assert!(parse_outages("").unwrap().is_empty());
    }

    #[test]
    fn scheduled_window_is_an_outage_only_inside_it() {
        let state = ProviderState::new(
            Behaviour::default(),
            vec![OutageWindow {
                start: Duration::ZERO,
                duration: Duration::from_secs(3600),
            }],
        );
        assert!(state.outage_remaining().is_some());
        let later = ProviderState::new(
            Behaviour::default(),
            vec![OutageWindow {
                start: Duration::from_secs(3600),
                duration: Duration::from_secs(1),
            }],
        );
        assert!(later.outage_remaining().is_none());
    }
}
