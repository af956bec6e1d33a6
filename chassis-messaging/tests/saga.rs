//! The saga building block on a real SQLite file and (feature `postgres`) the real PostgreSQL,
//! one schema per test: transitions, compensations newest first, redelivered events applied
//! once, timeouts that fire once, only in their state, and after a restart; a read model
//! projected in each transition's transaction, committed transitions announced, refused
//! events written nowhere.

mod outbox_support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chassis_messaging::amqp::consumer::{Handler, Outcome};
use chassis_messaging::amqp::incoming::IncomingMessage;
use chassis_messaging::amqp::publisher::Publish;
use chassis_messaging::amqp::topology::{ExchangeConfig, QueueConfig, TopologyConfig};
use chassis_messaging::envelope::{Envelope, SUBJECT};
use chassis_messaging::error::{Error, ErrorKind};
use chassis_messaging::memory::MemoryBroker;
use chassis_messaging::message::{HeaderValue, OutgoingMessage};
use chassis_messaging::saga::{Saga, SagaConfig, SagaDatabase, SagaDefinition};
use chassis_messaging::sql::outbox::{Outbox, Relay, RelayConfig};
use chassis_messaging::version::Versioned;
use outbox_support::*;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

const COMMANDS: &str = "saga-test.commands";

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Order {
    amount_cents: i64,
    charge_id: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Reserved {
    amount_cents: i64,
}
impl Versioned for Reserved {
    const VERSION: u32 = 1;
}

#[derive(Serialize, Deserialize)]
struct Charged {
    charge_id: String,
}
impl Versioned for Charged {
    const VERSION: u32 = 1;
}

#[derive(Serialize, Deserialize)]
struct Declined {
    reason: String,
}
impl Versioned for Declined {
    const VERSION: u32 = 1;
}

fn command(kind: &str) -> Envelope<serde_json::Value> {
    Envelope::new("test/orders", kind, serde_json::json!({}))
}

/// Reserve, then charge (the reservation's release registered as its compensation, the
/// charge bounded by the `payment` timeout); charged completes, declined or the timeout fail.
/// Each event is read in one state only.
fn definition(payment_timeout: Duration) -> SagaDefinition<Order> {
    SagaDefinition::<Order>::new("order")
        .initially("stock.reserved", move |step, e: Envelope<Reserved>| {
            if e.data.amount_cents < 0 {
                return step.reject("amount_cents must not be negative");
            }
            step.data_mut().amount_cents = e.data.amount_cents;
            step.compensate_with_event(COMMANDS, command("stock.release"))
                .unwrap();
            step.send_event(COMMANDS, command("payment.charge"))
                .unwrap();
            step.schedule("payment", payment_timeout);
            step.transition_to("Charging");
        })
        .during(
            "Charging",
            "payment.charged",
            |step, e: Envelope<Charged>| {
                step.data_mut().charge_id = Some(e.data.charge_id);
                step.send_event(COMMANDS, command("order.confirm")).unwrap();
                step.complete();
            },
        )
        .during(
            "Charging",
            "payment.declined",
            |step, e: Envelope<Declined>| step.fail(e.data.reason),
        )
        .on_timeout("Charging", "payment", |step| {
            step.compensate("refund");
            step.fail("payment timed out");
        })
        // Made when the saga fails, so it can say why.
        .compensation("refund", |step, reason| {
            let refund = Envelope::new(
                "test/orders",
                "payment.refund",
                serde_json::json!({ "reason": reason }),
            );
            step.send_event(COMMANDS, refund).unwrap();
        })
}

fn event<T: Serialize>(kind: &str, order: &str, data: T) -> IncomingMessage {
    let e = Envelope::new("test/others", kind, data).subject(order);
    IncomingMessage::from_outgoing(e.to_message("saga-test.events").unwrap())
}

async fn saga_on<DB: SagaDatabase>(
    pool: sqlx::Pool<DB>,
    payment_timeout: Duration,
) -> Saga<DB, Order> {
    let config = SagaConfig::default().poll_interval(Duration::from_millis(50));
    let saga = Saga::new(definition(payment_timeout), Outbox::new(pool), config).unwrap();
    saga.migrate().await.unwrap();
    saga
}

/// Relays everything the outbox holds to an in-memory broker and returns it, in publishing
/// order.
async fn published<DB: SagaDatabase>(pool: &sqlx::Pool<DB>) -> Vec<OutgoingMessage> {
    let broker = Arc::new(MemoryBroker::new());
    broker
        .declare(
            &TopologyConfig::new()
                .exchange(ExchangeConfig::topic(COMMANDS))
                .queue(QueueConfig::new("all-commands").bind(COMMANDS, "#")),
        )
        .unwrap();
    let relay = Relay::new(
        Outbox::new(pool.clone()),
        broker.clone(),
        RelayConfig::default(),
    )
    .unwrap();
    relay.run_until_idle().await.unwrap();
    broker.published()
}

/// Relays everything the outbox holds and returns the routing keys per saga instance (the
/// subject), in publishing order.
async fn sent<DB: SagaDatabase>(pool: &sqlx::Pool<DB>) -> BTreeMap<String, Vec<String>> {
    let mut per_saga = BTreeMap::<String, Vec<String>>::new();
    for msg in published(pool).await {
        let subject = match msg.headers.get(SUBJECT) {
            Some(HeaderValue::String(s)) => s.clone(),
            other => panic!("no subject: {other:?}"),
        };
        per_saga.entry(subject).or_default().push(msg.routing_key);
    }
    per_saga
}

fn expect(per_saga: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    per_saga
        .iter()
        .map(|(id, keys)| (id.to_string(), keys.iter().map(|k| k.to_string()).collect()))
        .collect()
}

async fn transitions_compensations_and_redelivery<DB: SagaDatabase>(pool: sqlx::Pool<DB>) {
    let saga = saga_on(pool.clone(), Duration::from_secs(60)).await;
    let handler = saga.handler();

    // Order 1: reserved (delivered twice), then declined: the release goes out.
    let reserved = event("stock.reserved", "o-1", Reserved { amount_cents: 450 });
    assert_eq!(handler.handle(reserved.clone()).await, Outcome::Ack);
    assert_eq!(handler.handle(reserved).await, Outcome::Ack, "redelivery");
    let o1 = saga.get("o-1").await.unwrap().unwrap();
    assert_eq!((o1.state.as_str(), o1.version), ("Charging", 1));
    assert_eq!((o1.data.amount_cents, o1.compensations), (450, 1));
    let declined = event(
        "payment.declined",
        "o-1",
        Declined {
            reason: "card_declined".into(),
        },
    );
    assert_eq!(handler.handle(declined.clone()).await, Outcome::Ack);
    assert_eq!(handler.handle(declined).await, Outcome::Ack, "redelivery");
    let o1 = saga.get("o-1").await.unwrap().unwrap();
    assert_eq!(o1.state, "Failed");
    assert_eq!(o1.failure.as_deref(), Some("card_declined"));
    assert!(o1.finished);
    assert_eq!((o1.version, o1.compensations), (2, 0));
    // A late answer for an ended saga changes nothing.
    let late = event(
        "payment.charged",
        "o-1",
        Charged {
            charge_id: "ch-late".into(),
        },
    );
    assert_eq!(handler.handle(late).await, Outcome::Ack);
    assert_eq!(saga.get("o-1").await.unwrap().unwrap().version, 2);

    // Order 2: an event its state does not handle is ignored; charged completes and drops
    // the compensation.
    let early = event(
        "payment.charged",
        "o-2",
        Charged {
            charge_id: "ch-early".into(),
        },
    );
    assert_eq!(handler.handle(early).await, Outcome::Ack);
    assert!(
        saga.get("o-2").await.unwrap().is_none(),
        "not started by it"
    );
    let reserved = event("stock.reserved", "o-2", Reserved { amount_cents: 100 });
    assert_eq!(handler.handle(reserved).await, Outcome::Ack);
    let charged = event(
        "payment.charged",
        "o-2",
        Charged {
            charge_id: "ch-2".into(),
        },
    );
    assert_eq!(handler.handle(charged).await, Outcome::Ack);
    let o2 = saga.get("o-2").await.unwrap().unwrap();
    assert_eq!(o2.state, "Completed");
    assert_eq!(o2.data.charge_id.as_deref(), Some("ch-2"));
    assert_eq!((o2.failure, o2.compensations), (None, 0));

    // Messages it cannot place are rejected: no subject, or a version it does not read.
    let orphan = IncomingMessage::from_outgoing(
        Envelope::new("test", "stock.reserved", Reserved { amount_cents: 1 })
            .to_message("saga-test.events")
            .unwrap(),
    );
    assert!(
        matches!(handler.handle(orphan).await, Outcome::Reject { reason } if reason.contains("correlates to no instance"))
    );
    let future = IncomingMessage::from_outgoing(
        Envelope::new("test", "stock.reserved", Reserved { amount_cents: 1 })
            .subject("o-3")
            .version(2)
            .to_message("saga-test.events")
            .unwrap(),
    );
    assert!(
        matches!(handler.handle(future).await, Outcome::Reject { reason } if reason.contains("version 2"))
    );
    assert!(saga.get("o-3").await.unwrap().is_none());

    // An instance started in the caller's transaction (as an HTTP handler would, with its
    // own writes), then moved by an event; starting it twice fails.
    let mut tx = pool.begin().await.unwrap();
    let started = saga
        .start(&mut *tx, "o-4", Order::default(), |step| {
            step.send_event(COMMANDS, command("stock.reserve")).unwrap();
            step.transition_to("Reserving");
        })
        .await
        .unwrap();
    assert_eq!(
        (started.from.as_str(), started.to.as_str()),
        ("Initial", "Reserving")
    );
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    assert!(
        saga.start(&mut *tx, "o-4", Order::default(), |_| {})
            .await
            .is_err()
    );
    drop(tx);
    assert_eq!(saga.get("o-4").await.unwrap().unwrap().state, "Reserving");

    // Each transition's messages once; the failure sent the registered release.
    assert_eq!(
        sent(&pool).await,
        expect(&[
            ("o-1", &["payment.charge", "stock.release"]),
            ("o-2", &["payment.charge", "order.confirm"]),
            ("o-4", &["stock.reserve"]),
        ])
    );
    // Every timeout went with its saga.
    assert!(saga.fire_due().await.unwrap().is_empty());
}

/// Timeouts due at once: one fires in its state (compensations newest first), one whose
/// saga moved on is dropped unrun, and a second look fires nothing.
async fn timeouts_fire_once_and_only_in_their_state<DB: SagaDatabase>(pool: sqlx::Pool<DB>) {
    let saga = saga_on(pool.clone(), Duration::ZERO).await;
    let handler = saga.handler();
    for order in ["o-late", "o-paid"] {
        let reserved = event("stock.reserved", order, Reserved { amount_cents: 5 });
        assert_eq!(handler.handle(reserved).await, Outcome::Ack);
    }
    let charged = event(
        "payment.charged",
        "o-paid",
        Charged {
            charge_id: "ch".into(),
        },
    );
    assert_eq!(handler.handle(charged).await, Outcome::Ack);

    let fired = saga.fire_due().await.unwrap();
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(
        (fired[0].saga_id.as_str(), fired[0].from.as_str()),
        ("o-late", "Charging")
    );
    assert!(fired[0].finished);
    assert!(saga.fire_due().await.unwrap().is_empty(), "fired once");
    let late = saga.get("o-late").await.unwrap().unwrap();
    assert_eq!(
        (late.state.as_str(), late.failure.as_deref()),
        ("Failed", Some("payment timed out"))
    );
    assert_eq!(
        saga.get("o-paid").await.unwrap().unwrap().state,
        "Completed"
    );
    assert_eq!(
        sent(&pool).await,
        expect(&[
            (
                "o-late",
                &["payment.charge", "payment.refund", "stock.release"]
            ),
            ("o-paid", &["payment.charge", "order.confirm"]),
        ]),
        "the timeout's refund, then the reservation's release: newest first"
    );
}

/// A timeout scheduled by a process that then stops fires in the next one: it lives in the
/// database, not in a timer.
async fn a_timeout_survives_a_restart<DB: SagaDatabase>(
    first: sqlx::Pool<DB>,
    reopen: impl AsyncFnOnce() -> sqlx::Pool<DB>,
) {
    let saga = saga_on(first.clone(), Duration::from_millis(300)).await;
    let reserved = event("stock.reserved", "o-1", Reserved { amount_cents: 5 });
    assert_eq!(saga.handler().handle(reserved).await, Outcome::Ack);
    // The process stops before the timeout is due; nothing ran its timeouts.
    drop(saga);
    first.close().await;

    let pool = reopen().await;
    let saga = saga_on(pool.clone(), Duration::from_millis(300)).await;
    assert_eq!(saga.get("o-1").await.unwrap().unwrap().state, "Charging");
    let token = CancellationToken::new();
    let timeouts = tokio::spawn(saga.clone().run_timeouts(token.clone()));
    let failed = eventually(Duration::from_secs(10), || async {
        saga.get("o-1").await.unwrap().unwrap().state == "Failed"
    })
    .await;
    token.cancel();
    timeouts.await.unwrap();
    assert!(failed, "the timeout fired after the restart");
    let o1 = saga.get("o-1").await.unwrap().unwrap();
    assert_eq!(
        (o1.failure.as_deref(), o1.version),
        (Some("payment timed out"), 2)
    );
    assert_eq!(
        sent(&pool).await,
        expect(&[(
            "o-1",
            &["payment.charge", "payment.refund", "stock.release"]
        )])
    );
}

/// Two replicas on one database: each due timeout fires once between them, and of two
/// answers racing for one instance exactly one moves it.
async fn replicas_race_and_each_transition_happens_once<DB: SagaDatabase>(pool: sqlx::Pool<DB>) {
    let a = saga_on(pool.clone(), Duration::ZERO).await;
    let b = saga_on(pool.clone(), Duration::ZERO).await;
    let orders: Vec<String> = (0..8).map(|i| format!("o-{i}")).collect();
    for id in &orders {
        let reserved = event("stock.reserved", id, Reserved { amount_cents: 1 });
        assert_eq!(a.handler().handle(reserved).await, Outcome::Ack);
    }
    let (fired_a, fired_b) = tokio::join!(a.fire_due(), b.fire_due());
    let mut fired: Vec<String> = fired_a
        .unwrap()
        .into_iter()
        .chain(fired_b.unwrap())
        .map(|t| t.saga_id)
        .collect();
    fired.sort();
    let mut expected = orders.clone();
    expected.sort();
    assert_eq!(fired, expected, "each timeout fired by exactly one replica");

    // Charged and declined at once, on two replicas: one wins, the other finds it ended.
    let reserved = event("stock.reserved", "o-race", Reserved { amount_cents: 1 });
    let c = saga_on(pool.clone(), Duration::from_secs(60)).await;
    let d = saga_on(pool.clone(), Duration::from_secs(60)).await;
    assert_eq!(c.handler().handle(reserved).await, Outcome::Ack);
    let charged = event(
        "payment.charged",
        "o-race",
        Charged {
            charge_id: "ch".into(),
        },
    );
    let declined = event(
        "payment.declined",
        "o-race",
        Declined {
            reason: "card_declined".into(),
        },
    );
    let (hc, hd) = (c.handler(), d.handler());
    let (oc, od) = tokio::join!(hc.handle(charged), hd.handle(declined));
    // The loser waited for the winner's transaction (PostgreSQL: the row lock; SQLite: the
    // write lock) and then found the saga ended: acked, nothing to retry.
    assert_eq!((oc, od), (Outcome::Ack, Outcome::Ack));
    let raced = c.get("o-race").await.unwrap().unwrap();
    assert!(raced.finished);
    assert_eq!(raced.version, 2, "one transition after the start");
    let keys = &sent(&pool).await["o-race"];
    let expected: &[&str] = if raced.state == "Completed" {
        &["payment.charge", "order.confirm"]
    } else {
        &["payment.charge", "stock.release"]
    };
    assert_eq!(keys, expected);
}

type View = Option<(String, Option<String>, i64, i64)>;

/// The saga with a projection into `order_view` (state, failure, compensations sent,
/// version), which refuses a charge id of `ch-poison` (to show a projection's error undoing
/// its transition), and a reader of the view: SQL is per database, so a macro.
macro_rules! with_view {
    ($pool:expr) => {{
        let pool = $pool;
        sqlx::raw_sql(
            "CREATE TABLE order_view (id TEXT PRIMARY KEY, state TEXT NOT NULL, failure TEXT, \
             compensated BIGINT NOT NULL, version BIGINT NOT NULL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        let saga = saga_on(pool.clone(), Duration::ZERO)
            .await
            .project(|conn, t, order| {
                Box::pin(async move {
                    if order.data.charge_id.as_deref() == Some("ch-poison") {
                        return Err(Error::validation("the view refuses ch-poison"));
                    }
                    sqlx::query(
                        "INSERT INTO order_view (id, state, failure, compensated, version) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET \
                         state = excluded.state, failure = excluded.failure, \
                         compensated = order_view.compensated + excluded.compensated, \
                         version = excluded.version",
                    )
                    .bind(&order.id)
                    .bind(&order.state)
                    .bind(&order.failure)
                    .bind(t.compensated as i64)
                    .bind(order.version)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| Error::with_source(ErrorKind::Database, e))?;
                    Ok(())
                })
            });
        let view = move |id: &'static str| {
            let pool = pool.clone();
            async move {
                let row: View = sqlx::query_as(
                    "SELECT state, failure, compensated, version FROM order_view WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&pool)
                .await
                .unwrap();
                row
            }
        };
        (saga, view)
    }};
}

/// Each transition (event, timeout) updates the read model in its own transaction and is
/// announced once committed; a refused event and a projection's error write nothing.
async fn a_read_model_follows_each_transition<DB: SagaDatabase, F>(
    pool: sqlx::Pool<DB>,
    saga: Saga<DB, Order>,
    view: impl Fn(&'static str) -> F,
) where
    F: Future<Output = View>,
{
    let seen = Arc::new(Mutex::new(Vec::new()));
    let saga = saga.on_committed({
        let seen = seen.clone();
        move |t| {
            let mut seen = seen.lock().unwrap();
            seen.push((t.saga_id.clone(), t.to.clone(), t.compensated));
        }
    });
    let handler = saga.handler();
    for order in ["o-1", "o-2"] {
        let reserved = event("stock.reserved", order, Reserved { amount_cents: 5 });
        assert_eq!(handler.handle(reserved).await, Outcome::Ack);
    }
    assert_eq!(view("o-1").await, Some(("Charging".into(), None, 0, 1)));

    // Refused by the transition: rejected with the reason, nothing written or announced.
    let negative = event("stock.reserved", "o-neg", Reserved { amount_cents: -1 });
    assert!(
        matches!(handler.handle(negative).await, Outcome::Reject { reason } if reason.contains("must not be negative"))
    );
    assert!(saga.get("o-neg").await.unwrap().is_none());
    assert_eq!(view("o-neg").await, None);
    let mut tx = pool.begin().await.unwrap();
    let refused = saga
        .start(&mut *tx, "o-neg", Order::default(), |step| {
            step.reject("not today")
        })
        .await
        .unwrap_err();
    assert!(
        matches!(refused.kind(), ErrorKind::Validation { .. }),
        "{refused}"
    );
    drop(tx);

    // Refused by the projection: the transition is undone with it (still Charging, no
    // confirmation sent).
    let poison = event(
        "payment.charged",
        "o-2",
        Charged {
            charge_id: "ch-poison".into(),
        },
    );
    assert!(matches!(
        handler.handle(poison).await,
        Outcome::Reject { .. }
    ));
    let o2 = saga.get("o-2").await.unwrap().unwrap();
    assert_eq!((o2.state.as_str(), o2.version), ("Charging", 1));
    assert_eq!(view("o-2").await, Some(("Charging".into(), None, 0, 1)));

    // Both payment timeouts fire: the view shows the failure and the two compensations.
    assert_eq!(saga.fire_due().await.unwrap().len(), 2);
    assert_eq!(
        view("o-1").await,
        Some(("Failed".into(), Some("payment timed out".into()), 2, 2))
    );
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    let expected = [
        ("o-1", "Charging", 0),
        ("o-2", "Charging", 0),
        ("o-1", "Failed", 2),
        ("o-2", "Failed", 2),
    ];
    let mut expected: Vec<_> = expected
        .iter()
        .map(|(id, to, n)| (id.to_string(), to.to_string(), *n))
        .collect();
    expected.sort();
    assert_eq!(
        seen, expected,
        "each transition announced once, after its commit"
    );
    let refunds: Vec<serde_json::Value> = published(&pool)
        .await
        .iter()
        .filter(|m| m.routing_key == "payment.refund")
        .map(|m| serde_json::from_slice(&m.body).unwrap())
        .collect();
    assert_eq!(
        refunds,
        vec![serde_json::json!({ "reason": "payment timed out" }); 2],
        "the compensation step was given the failure's reason"
    );
}

#[tokio::test]
async fn sqlite_a_read_model_follows_each_transition() {
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlite_pool(&dir).await;
    let (saga, view) = with_view!(pool.clone());
    a_read_model_follows_each_transition(pool, saga, view).await;
}

#[tokio::test]
async fn sqlite_replicas_race_and_each_transition_happens_once() {
    let dir = tempfile::tempdir().unwrap();
    replicas_race_and_each_transition_happens_once(sqlite_pool(&dir).await).await;
}

#[tokio::test]
async fn sqlite_transitions_compensations_and_redelivery() {
    let dir = tempfile::tempdir().unwrap();
    transitions_compensations_and_redelivery(sqlite_pool(&dir).await).await;
}

#[tokio::test]
async fn sqlite_timeouts_fire_once_and_only_in_their_state() {
    let dir = tempfile::tempdir().unwrap();
    timeouts_fire_once_and_only_in_their_state(sqlite_pool(&dir).await).await;
}

#[tokio::test]
async fn sqlite_a_timeout_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = sqlite_pool(&dir).await;
    a_timeout_survives_a_restart(first, async || sqlite_pool(&dir).await).await;
}

/// A timeout scheduled while the loop sleeps fires when due, not at the next poll: the loop
/// moves its wake-up to the due time it is told of (here 300 ms, with a 60 s poll interval).
#[tokio::test]
async fn sqlite_a_timeout_scheduled_while_the_loop_sleeps_fires_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlite_pool(&dir).await;
    let config = SagaConfig::default().poll_interval(Duration::from_secs(60));
    let saga = Saga::new(
        definition(Duration::from_millis(300)),
        Outbox::new(pool.clone()),
        config,
    )
    .unwrap();
    saga.migrate().await.unwrap();
    let token = CancellationToken::new();
    let timeouts = tokio::spawn(saga.clone().run_timeouts(token.clone()));
    // Let the loop's first look find nothing and go to sleep for the poll interval.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let reserved = event("stock.reserved", "o-1", Reserved { amount_cents: 5 });
    assert_eq!(saga.handler().handle(reserved).await, Outcome::Ack);
    let failed = eventually(Duration::from_secs(10), || async {
        saga.get("o-1").await.unwrap().unwrap().state == "Failed"
    })
    .await;
    let took = started.elapsed();
    token.cancel();
    timeouts.await.unwrap();
    assert!(failed, "the timeout fired");
    assert!(
        took >= Duration::from_millis(300),
        "not before it is due: {took:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "long before the poll: {took:?}"
    );
}

/// The memory broker with every command bound to one queue.
fn commands_broker() -> Arc<MemoryBroker> {
    let broker = Arc::new(MemoryBroker::new());
    broker
        .declare(
            &TopologyConfig::new()
                .exchange(ExchangeConfig::topic(COMMANDS))
                .queue(QueueConfig::new("all-commands").bind(COMMANDS, "#")),
        )
        .unwrap();
    broker
}

fn routing_keys(broker: &MemoryBroker) -> Vec<String> {
    broker
        .published()
        .into_iter()
        .map(|m| m.routing_key)
        .collect()
}

/// A process killed while its relay had an instance's command in flight (reserved, maybe
/// published, not yet recorded): the instance's next command, written after the restart,
/// waits behind it. It must go out within seconds (the dead relay's lease is short, a live
/// relay renews its own), not after a lease as long as a step's timeout, which would fail a
/// healthy instance on the timeout while its reply was held up.
#[tokio::test]
async fn sqlite_a_killed_relay_holds_up_an_instances_next_command_only_briefly() {
    use chassis_messaging::sql::outbox::OutboxStore;
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlite_pool(&dir).await;
    let saga = saga_on(pool.clone(), Duration::from_secs(60)).await;
    let handler = saga.handler();
    let reserved = event("stock.reserved", "o-1", Reserved { amount_cents: 450 });
    assert_eq!(handler.handle(reserved).await, Outcome::Ack);
    // The killed process's relay: it reserved the charge with the default lease, then died.
    let dead = Outbox::new(pool.clone());
    let lease = RelayConfig::default().lease;
    let (_claim, rows) = dead
        .claim(100, lease, &std::collections::HashSet::new())
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "the charge is reserved by the dead relay");
    drop(dead);
    // After the restart: the charge's reply completes the order, whose confirmation follows
    // the charge (one subject, in order).
    let charged = event(
        "payment.charged",
        "o-1",
        Charged {
            charge_id: "ch".into(),
        },
    );
    assert_eq!(handler.handle(charged).await, Outcome::Ack);
    let broker = commands_broker();
    let relay = Relay::new(
        Outbox::new(pool.clone()),
        broker.clone(),
        RelayConfig::default(),
    );
    let token = CancellationToken::new();
    let running = relay.unwrap().spawn(token.clone());
    let started = tokio::time::Instant::now();
    let out = eventually(Duration::from_secs(10), || {
        let published = routing_keys(&broker);
        async move { published.len() == 2 }
    })
    .await;
    token.cancel();
    running.await.unwrap();
    assert!(
        out,
        "after {:?} the new relay published only {:?}",
        started.elapsed(),
        routing_keys(&broker)
    );
    assert_eq!(
        routing_keys(&broker),
        ["payment.charge", "order.confirm"],
        "the charge again (the inbox absorbs it), then the confirmation"
    );
}

/// Publishes to the memory broker after `delay`: a broker slow to confirm.
struct SlowBroker {
    inner: Arc<MemoryBroker>,
    delay: Duration,
}

impl Publish for SlowBroker {
    fn publish(
        &self,
        msg: OutgoingMessage,
    ) -> futures_util::future::BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.inner.publish(msg).await
        })
    }
}

/// A live relay whose publish outlasts the lease keeps its rows (it renews the lease while
/// they travel): a second relay on the database does not send an instance's command again.
#[tokio::test]
async fn sqlite_a_live_relay_keeps_a_command_in_flight_longer_than_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlite_pool(&dir).await;
    let saga = saga_on(pool.clone(), Duration::from_secs(60)).await;
    let reserved = event("stock.reserved", "o-1", Reserved { amount_cents: 450 });
    assert_eq!(saga.handler().handle(reserved).await, Outcome::Ack);
    let config = RelayConfig::default()
        .lease(Duration::from_millis(300))
        .publish_timeout(Duration::from_secs(5));
    let broker = commands_broker();
    let slow = Arc::new(SlowBroker {
        inner: broker.clone(),
        delay: Duration::from_millis(1500),
    });
    let token = CancellationToken::new();
    let first = Relay::new(Outbox::new(pool.clone()), slow, config.clone()).unwrap();
    let first = first.spawn(token.clone());
    // The second relay starts once the first one reserved the charge.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = Relay::new(Outbox::new(pool.clone()), broker.clone(), config).unwrap();
    let second = second.spawn(token.clone());
    let sent = eventually(Duration::from_secs(5), || {
        let published = routing_keys(&broker);
        async move { !published.is_empty() }
    })
    .await;
    // Longer than the lease again, for a second relay that took the rows over to publish.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    token.cancel();
    first.await.unwrap();
    second.await.unwrap();
    assert!(sent, "the charge was published");
    assert_eq!(routing_keys(&broker), ["payment.charge"], "published once");
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;

    #[tokio::test]
    async fn postgres_transitions_compensations_and_redelivery() {
        let db = PgSchema::new(4).await;
        transitions_compensations_and_redelivery(db.pool.clone()).await;
        db.drop().await;
    }

    #[tokio::test]
    async fn postgres_timeouts_fire_once_and_only_in_their_state() {
        let db = PgSchema::new(4).await;
        timeouts_fire_once_and_only_in_their_state(db.pool.clone()).await;
        db.drop().await;
    }

    #[tokio::test]
    async fn postgres_replicas_race_and_each_transition_happens_once() {
        let db = PgSchema::new(8).await;
        replicas_race_and_each_transition_happens_once(db.pool.clone()).await;
        db.drop().await;
    }

    #[tokio::test]
    async fn postgres_a_read_model_follows_each_transition() {
        let db = PgSchema::new(4).await;
        let (saga, view) = with_view!(db.pool.clone());
        a_read_model_follows_each_transition(db.pool.clone(), saga, view).await;
        db.drop().await;
    }

    #[tokio::test]
    async fn postgres_a_timeout_survives_a_restart() {
        use std::str::FromStr;
        let db = PgSchema::new(4).await;
        let schema = db.schema.clone();
        a_timeout_survives_a_restart(db.pool.clone(), async || {
            let options =
                sqlx::postgres::PgConnectOptions::from_str(&database_url()).expect("DATABASE_URL");
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect_with(options.options([("search_path", schema.as_str())]))
                .await
                .expect("connect to PostgreSQL")
        })
        .await;
        db.drop().await;
    }
}
