//! The evidence (what the services' own databases, the provider's ledger, the broker and the
//! services' logs hold once the shop is quiet) and the invariants checked on it.
//!
//! Nothing here trusts what a service answers over its API: the orders, payments, inventory and
//! notifications tables are read directly, the provider's ledger (every charge it ever took,
//! kept across its restarts in its ledger file) over its HTTP API, the queues with
//! `rabbitmqctl`, the dead-letter queues' messages over AMQP (fetched and put back), the
//! dead-letter reasons from the services' JSON logs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use serde_json::Value;
use shop_common::db::Db;
use shop_launcher::BoxError;

use crate::clients::OrderRecord;

/// The API client name the gateway scopes idempotency keys with (`<client>:<key>`).
pub const API_CLIENT: &str = "demo";

/// An order row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    /// The id.
    pub id: String,
    /// `<client>:<Idempotency-Key>`, if the placement had one.
    pub idempotency_key: Option<String>,
    /// `PENDING`, `CONFIRMED`, `FAILED`.
    pub status: String,
    /// The failure reason.
    pub reason: Option<String>,
    /// The amount, once reserved.
    pub amount_cents: Option<i64>,
    /// The provider charge of a confirmed order.
    pub charge_id: Option<String>,
    /// SKU → quantity.
    pub items: BTreeMap<String, i64>,
}

impl OrderRow {
    /// `CONFIRMED`, `FAILED(<reason>)` or `PENDING`.
    pub fn state(&self) -> String {
        match (&*self.status, &self.reason) {
            ("FAILED", Some(r)) => format!("FAILED({r})"),
            (s, _) => s.to_owned(),
        }
    }
}

/// A payments row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRow {
    /// `CHARGED`, `DECLINED`, `FAILED`, `REFUNDED`, `CANCELLED`.
    pub status: String,
    /// The provider charge, if any.
    pub charge_id: Option<String>,
    /// The amount.
    pub amount_cents: i64,
}

/// A reservation row with its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationRow {
    /// `RESERVED`, `RELEASED`, `REJECTED`.
    pub status: String,
    /// The amount reserved.
    pub amount_cents: i64,
    /// SKU → quantity.
    pub items: BTreeMap<String, i64>,
}

/// A charge in the provider's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// `ch_…`.
    pub id: String,
    /// `succeeded` or `refunded`.
    pub status: String,
    /// The amount.
    pub amount_cents: i64,
    /// The order id.
    pub reference: String,
}

/// A message found in a dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqMessage {
    /// The dead-letter queue.
    pub queue: String,
    /// The message's id.
    pub message_id: String,
    /// The routing key it was first published with.
    pub routing_key: String,
    /// `x-chassis-failure-reason`: why the consumer gave it up.
    pub reason: Option<String>,
    /// The broker's `x-death` header, if the broker dead-lettered it.
    pub x_death: Option<String>,
    /// The service log line that dead-lettered it (its reason), if one was found.
    pub logged: Option<String>,
}

impl DlqMessage {
    /// Explained: the consumer dead-lettered it with a reason, and its service logged that.
    pub fn explained(&self) -> bool {
        self.reason.is_some() && self.logged.is_some()
    }
}

/// Everything the checks look at.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// Every order in the orders database.
    pub orders: Vec<OrderRow>,
    /// Payments by order id.
    pub payments: BTreeMap<String, PaymentRow>,
    /// Stock by SKU now.
    pub stock: BTreeMap<String, i64>,
    /// Stock by SKU at the start (the catalogue seed).
    pub initial_stock: BTreeMap<String, i64>,
    /// Reservations by order id.
    pub reservations: BTreeMap<String, ReservationRow>,
    /// Notification kinds by order id.
    pub notifications: BTreeMap<String, Vec<String>>,
    /// Outbox rows by service and status.
    pub outboxes: BTreeMap<String, BTreeMap<String, i64>>,
    /// The provider's ledger.
    pub charges: Vec<Charge>,
    /// Messages (ready + unacknowledged) of every queue of the run, dead-letter queues included.
    pub queues: Vec<(String, u64)>,
    /// The dead-lettered messages.
    pub dlq: Vec<DlqMessage>,
}

/// Where a service's database is: `sqlite://<run dir>/<service>.db` or its PostgreSQL URL.
pub fn database_url(database: &shop_launcher::Database, run_dir: &Path, service: &str) -> String {
    database.service_url(service).unwrap_or_else(|| {
        format!(
            "sqlite://{}",
            run_dir.join(format!("{service}.db")).display()
        )
    })
}

/// The orders still pending, straight from the orders database (for the quiescence wait).
pub async fn pending_orders(db: &Db) -> Result<i64, BoxError> {
    let row = db
        .fetch_optional(
            "SELECT COUNT(*) AS n FROM orders WHERE status = 'PENDING'",
            &[],
        )
        .await?;
    Ok(row.map(|r| r.get::<i64>("n")).transpose()?.unwrap_or(0))
}

/// Outbox rows not sent yet (pending or parked), for the quiescence wait.
pub async fn unsent_outbox_rows(db: &Db) -> Result<i64, BoxError> {
    let row = db
        .fetch_optional(
            "SELECT COUNT(*) AS n FROM chassis_outbox WHERE status <> 'sent'",
            &[],
        )
        .await?;
    Ok(row.map(|r| r.get::<i64>("n")).transpose()?.unwrap_or(0))
}

/// Reads the four services' databases into `evidence`.
pub async fn read_databases(
    evidence: &mut Evidence,
    dbs: &BTreeMap<&'static str, Db>,
) -> Result<(), BoxError> {
    let db = |s: &str| dbs.get(s).ok_or_else(|| format!("no database for {s}"));
    let orders = db("orders")?;
    let mut items: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for r in orders
        .fetch_all("SELECT order_id, sku, quantity FROM order_items", &[])
        .await?
    {
        items
            .entry(r.get("order_id")?)
            .or_default()
            .insert(r.get("sku")?, r.get("quantity")?);
    }
    for r in orders
        .fetch_all(
            "SELECT id, idempotency_key, status, reason, amount_cents, charge_id FROM orders",
            &[],
        )
        .await?
    {
        let id: String = r.get("id")?;
        evidence.orders.push(OrderRow {
            items: items.remove(&id).unwrap_or_default(),
            id,
            idempotency_key: r.get("idempotency_key")?,
            status: r.get("status")?,
            reason: r.get("reason")?,
            amount_cents: r.get("amount_cents")?,
            charge_id: r.get("charge_id")?,
        });
    }
    for r in db("payments")?
        .fetch_all(
            "SELECT order_id, status, charge_id, amount_cents FROM payments",
            &[],
        )
        .await?
    {
        evidence.payments.insert(
            r.get("order_id")?,
            PaymentRow {
                status: r.get("status")?,
                charge_id: r.get("charge_id")?,
                amount_cents: r.get("amount_cents")?,
            },
        );
    }
    let inventory = db("inventory")?;
    for r in inventory
        .fetch_all("SELECT sku, stock FROM products", &[])
        .await?
    {
        evidence.stock.insert(r.get("sku")?, r.get("stock")?);
    }
    let mut held: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for r in inventory
        .fetch_all("SELECT order_id, sku, quantity FROM reservation_items", &[])
        .await?
    {
        held.entry(r.get("order_id")?)
            .or_default()
            .insert(r.get("sku")?, r.get("quantity")?);
    }
    for r in inventory
        .fetch_all(
            "SELECT order_id, status, amount_cents FROM reservations",
            &[],
        )
        .await?
    {
        let id: String = r.get("order_id")?;
        evidence.reservations.insert(
            id.clone(),
            ReservationRow {
                status: r.get("status")?,
                amount_cents: r.get("amount_cents")?,
                items: held.remove(&id).unwrap_or_default(),
            },
        );
    }
    for r in db("notifications")?
        .fetch_all("SELECT order_id, kind FROM notifications", &[])
        .await?
    {
        evidence
            .notifications
            .entry(r.get("order_id")?)
            .or_default()
            .push(r.get("kind")?);
    }
    for (service, db) in dbs {
        let mut by_status = BTreeMap::new();
        for r in db
            .fetch_all(
                "SELECT status, COUNT(*) AS n FROM chassis_outbox GROUP BY status",
                &[],
            )
            .await?
        {
            by_status.insert(r.get("status")?, r.get("n")?);
        }
        evidence.outboxes.insert((*service).to_owned(), by_status);
    }
    Ok(())
}

/// Reads the provider's whole ledger (`GET /v1/charges`).
pub async fn read_ledger(provider_url: &str) -> Result<Vec<Charge>, BoxError> {
    let body: Value = reqwest::get(format!("{provider_url}/v1/charges"))
        .await?
        .error_for_status()?
        .json()
        .await?;
    let list = body["charges"]
        .as_array()
        .ok_or("no charges in the ledger")?;
    Ok(list
        .iter()
        .map(|c| Charge {
            id: c["id"].as_str().unwrap_or_default().to_owned(),
            status: c["status"].as_str().unwrap_or_default().to_owned(),
            amount_cents: c["amount_cents"].as_i64().unwrap_or(-1),
            reference: c["reference"].as_str().unwrap_or_default().to_owned(),
        })
        .collect())
}

fn header_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => s.to_string(),
        AMQPValue::ShortString(s) => s.to_string(),
        other => format!("{other:?}"),
    }
}

/// Fetches every message of the dead-letter queues `queues` without acknowledging them (they
/// go back to their queue when the channel closes) and looks up the log line of the service
/// that dead-lettered each (`message dead-lettered` with its id, in `<run dir>/<service>.log`).
pub async fn read_dead_letters(
    amqp_url: &str,
    namespace: &str,
    queues: &[String],
    run_dir: &Path,
) -> Result<Vec<DlqMessage>, BoxError> {
    if queues.is_empty() {
        return Ok(Vec::new());
    }
    let conn = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let mut found = Vec::new();
    let mut logs: BTreeMap<String, String> = BTreeMap::new();
    for queue in queues {
        let service = queue
            .strip_prefix(namespace)
            .and_then(|q| q.split('.').next())
            .unwrap_or_default()
            .to_owned();
        let log = logs.entry(service.clone()).or_insert_with(|| {
            std::fs::read_to_string(run_dir.join(format!("{service}.log"))).unwrap_or_default()
        });
        while let Some(got) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        {
            let props = &got.delivery.properties;
            let headers = props.headers().clone().unwrap_or_default();
            let header = |name: &str| headers.inner().get(name).map(header_text);
            let message_id = props
                .message_id()
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let logged = (!message_id.is_empty())
                .then(|| {
                    log.lines()
                        .find(|l| l.contains("message dead-lettered") && l.contains(&message_id))
                })
                .flatten()
                .map(|line| {
                    serde_json::from_str::<Value>(line)
                        .ok()
                        .and_then(|v| {
                            v["fields"]["reason"]
                                .as_str()
                                .or(v["reason"].as_str())
                                .map(str::to_owned)
                        })
                        .unwrap_or_else(|| line.to_owned())
                });
            found.push(DlqMessage {
                queue: queue.clone(),
                message_id,
                routing_key: header("x-chassis-original-routing-key")
                    .unwrap_or_else(|| got.delivery.routing_key.to_string()),
                reason: header("x-chassis-failure-reason"),
                x_death: header("x-death"),
                logged,
            });
            if got.message_count == 0 {
                break;
            }
        }
    }
    // Unacknowledged: closing puts every fetched message back into its queue.
    let _ = channel.close(200, "read".into()).await;
    let _ = conn.close(200, "read".into()).await;
    Ok(found)
}

/// One invariant's result.
#[derive(Debug, Clone)]
pub struct Invariant {
    /// What must hold.
    pub name: &'static str,
    /// How many things were checked.
    pub checked: usize,
    /// What broke it (empty: it holds).
    pub violations: Vec<String>,
}

impl Invariant {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            checked: 0,
            violations: Vec::new(),
        }
    }

    fn check(&mut self, ok: bool, violation: impl FnOnce() -> String) {
        self.checked += 1;
        if !ok {
            self.violations.push(violation());
        }
    }

    /// Whether it holds.
    pub fn holds(&self) -> bool {
        self.violations.is_empty()
    }
}

const CONFIRMED: &str = "CONFIRMED";
const FAILED: &str = "FAILED";

/// Every invariant, evaluated on `evidence` and what the clients saw.
pub fn evaluate(evidence: &Evidence, clients: &[OrderRecord], namespace: &str) -> Vec<Invariant> {
    let orders: BTreeMap<&str, &OrderRow> =
        evidence.orders.iter().map(|o| (o.id.as_str(), o)).collect();
    let by_key: BTreeMap<&str, &OrderRow> = evidence
        .orders
        .iter()
        .filter_map(|o| Some((o.idempotency_key.as_deref()?, o)))
        .collect();
    let mut charges_of: BTreeMap<&str, Vec<&Charge>> = BTreeMap::new();
    for c in &evidence.charges {
        charges_of.entry(c.reference.as_str()).or_default().push(c);
    }

    // 1. Every accepted order reaches a final state.
    let mut finals = Invariant::new("every accepted order reaches a final state");
    for o in &evidence.orders {
        finals.check(o.status == CONFIRMED || o.status == FAILED, || {
            format!("order {} is {}", o.id, o.state())
        });
    }
    for r in clients {
        if let Some(id) = r.accepted_id() {
            finals.check(orders.contains_key(id), || {
                format!(
                    "order {id} (key {}) was accepted but is not in the orders database",
                    r.key
                )
            });
        }
    }

    // 2. One order per idempotency key; a final status never changes.
    let mut idem = Invariant::new("one order per Idempotency-Key, final statuses never change");
    for r in clients {
        let Some(id) = r.accepted_id() else { continue };
        idem.check(r.ids.len() == 1, || {
            format!(
                "key {} was answered with {} orders: {:?}",
                r.key,
                r.ids.len(),
                r.ids
            )
        });
        let stored = by_key.get(format!("{API_CLIENT}:{}", r.key).as_str());
        idem.check(stored.is_some_and(|o| o.id == id), || {
            format!(
                "key {} names order {id} for the client but {:?} in the database",
                r.key,
                stored.map(|o| &o.id)
            )
        });
        if let (Some(seen), Some(o)) = (&r.final_seen, orders.get(id)) {
            let now = match &o.reason {
                Some(reason) if o.status == FAILED => format!("FAILED:{reason}"),
                _ => o.status.clone(),
            };
            idem.check(*seen == now, || {
                format!("order {id} was {seen} for the client and is {now} now")
            });
        }
    }

    // 3. No order charged twice; a confirmed order paid once, a failed one not at all (or
    // refunded); the provider's ledger, the payments table and the order agree.
    let mut money = Invariant::new(
        "no order charged twice; confirmed = one live charge, failed = none (or refunded)",
    );
    for (reference, list) in &charges_of {
        money.check(list.len() == 1, || {
            format!(
                "order {reference} has {} charges at the provider",
                list.len()
            )
        });
        money.check(orders.contains_key(reference), || {
            format!("charge(s) for unknown order {reference}")
        });
    }
    for o in &evidence.orders {
        let live: Vec<&&Charge> = charges_of
            .get(o.id.as_str())
            .map(|l| l.iter().filter(|c| c.status == "succeeded").collect())
            .unwrap_or_default();
        let payment = evidence.payments.get(&o.id);
        if o.status == CONFIRMED {
            money.check(live.len() == 1, || {
                format!("confirmed order {} has {} live charges", o.id, live.len())
            });
            if let Some(c) = live.first() {
                money.check(Some(c.amount_cents) == o.amount_cents, || {
                    format!(
                        "order {} amount {:?} but charged {}",
                        o.id, o.amount_cents, c.amount_cents
                    )
                });
                money.check(o.charge_id.as_deref() == Some(c.id.as_str()), || {
                    format!(
                        "order {} names charge {:?}, ledger {}",
                        o.id, o.charge_id, c.id
                    )
                });
            }
            money.check(
                payment.is_some_and(|p| p.status == "CHARGED" && p.charge_id == o.charge_id),
                || format!("confirmed order {} has payment {payment:?}", o.id),
            );
        } else if o.status == FAILED {
            money.check(live.is_empty(), || {
                format!(
                    "failed order {} ({}) keeps {} unrefunded charge(s): {:?}",
                    o.id,
                    o.state(),
                    live.len(),
                    live.iter().map(|c| &c.id).collect::<Vec<_>>()
                )
            });
            money.check(payment.is_none_or(|p| p.status != "CHARGED"), || {
                format!("failed order {} has payment {payment:?}", o.id)
            });
        }
    }

    // 4. Stock never negative; what is held is what the confirmed orders hold.
    let mut stock = Invariant::new("stock never negative, reservations consistent with orders");
    for (sku, n) in &evidence.stock {
        stock.check(*n >= 0, || format!("stock of {sku} is {n}"));
        let held: i64 = evidence
            .reservations
            .values()
            .filter(|r| r.status == "RESERVED")
            .filter_map(|r| r.items.get(sku))
            .sum();
        if let Some(initial) = evidence.initial_stock.get(sku) {
            stock.check(initial - n == held, || {
                format!("{sku}: {initial} at start, {n} now, but reservations hold {held}")
            });
        }
    }
    for o in &evidence.orders {
        let r = evidence.reservations.get(&o.id);
        if o.status == CONFIRMED {
            stock.check(
                r.is_some_and(|r| r.status == "RESERVED" && r.items == o.items),
                || {
                    format!(
                        "confirmed order {} has reservation {r:?}, items {:?}",
                        o.id, o.items
                    )
                },
            );
        } else if o.status == FAILED {
            stock.check(
                r.is_some_and(|r| r.status == "RELEASED" || r.status == "REJECTED"),
                || {
                    format!(
                        "failed order {} ({}) has reservation {r:?}",
                        o.id,
                        o.state()
                    )
                },
            );
        }
    }
    for (id, r) in &evidence.reservations {
        if r.status == "RESERVED" {
            stock.check(
                orders
                    .get(id.as_str())
                    .is_some_and(|o| o.status == CONFIRMED),
                || {
                    format!(
                        "reservation of {id} holds stock for order {:?}",
                        orders.get(id.as_str()).map(|o| o.state())
                    )
                },
            );
        }
    }

    // 5. Every outbox drained.
    let mut outbox = Invariant::new("every outbox drained (no pending or parked rows)");
    for (service, by_status) in &evidence.outboxes {
        for (status, n) in by_status {
            outbox.check(status == "sent", || {
                format!("{service}: {n} {status} outbox rows")
            });
        }
    }

    // 6. Every queue drained (dead-letter queues apart: see 7).
    let mut queues = Invariant::new("every work and retry queue empty");
    for (name, n) in &evidence.queues {
        if is_work_queue(name, namespace) {
            queues.check(*n == 0, || format!("{name} holds {n} messages"));
        }
    }

    // 7. Every dead letter explained.
    let mut dlq = Invariant::new("every dead-lettered message explained by a logged reason");
    let dlq_depth: u64 = evidence
        .queues
        .iter()
        .filter(|(name, _)| name.starts_with(namespace) && name.ends_with(".dlq"))
        .map(|(_, n)| n)
        .sum();
    dlq.check(dlq_depth as usize == evidence.dlq.len(), || {
        format!(
            "{dlq_depth} dead letters listed, {} read",
            evidence.dlq.len()
        )
    });
    for m in &evidence.dlq {
        dlq.check(m.explained(), || {
            format!(
                "{}: message {} ({}) reason {:?}, x-death {:?}, logged {:?}",
                m.queue, m.message_id, m.routing_key, m.reason, m.x_death, m.logged
            )
        });
    }

    // 8. One notification per finished order, of the right kind.
    let mut notes = Invariant::new("one notification per final order, of its kind");
    for o in &evidence.orders {
        let want = match &*o.status {
            CONFIRMED => "order_confirmed",
            FAILED => "order_failed",
            _ => continue,
        };
        let got = evidence.notifications.get(&o.id);
        notes.check(got.is_some_and(|k| k.len() == 1 && k[0] == want), || {
            format!("order {} ({}) has notifications {got:?}", o.id, o.state())
        });
    }
    let known: BTreeSet<&str> = orders.keys().copied().collect();
    for id in evidence.notifications.keys() {
        notes.check(known.contains(id.as_str()), || {
            format!("notification for unknown order {id}")
        });
    }

    vec![finals, idem, money, stock, outbox, queues, dlq, notes]
}

/// The first `max` violations of `invariant`, one per line, indented.
pub fn violations_text(invariant: &Invariant, max: usize) -> String {
    let mut out = String::new();
    for v in invariant.violations.iter().take(max) {
        let _ = writeln!(out, "      - {v}");
    }
    if invariant.violations.len() > max {
        let _ = writeln!(out, "      … and {} more", invariant.violations.len() - max);
    }
    out
}

/// Whether `name` is one of the run's work or retry queues, which a quiet shop has drained:
/// in the run's namespace, and neither a dead-letter queue (its messages stay for a person to
/// read; checked on their own) nor a stream queue (`*.stream`: a log the order-history read
/// model replays, which keeps every message until its retention drops it).
pub fn is_work_queue(name: &str, namespace: &str) -> bool {
    name.starts_with(namespace) && !name.ends_with(".dlq") && !name.ends_with(".stream")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_queues_exclude_dead_letters_streams_and_other_runs() {
        let ns = "shop-1a2b";
        assert!(is_work_queue("shop-1a2b.orders.replies", ns));
        assert!(is_work_queue("shop-1a2b.payments.commands.retry.1", ns));
        assert!(!is_work_queue("shop-1a2b.orders.replies.dlq", ns));
        assert!(!is_work_queue(
            "shop-1a2b.notifications.order-history.stream",
            ns
        ));
        assert!(!is_work_queue("shop-ffff.orders.replies", ns));
    }

    fn order(id: &str, status: &str, reason: Option<&str>, charge: Option<&str>) -> OrderRow {
        OrderRow {
            id: id.into(),
            idempotency_key: Some(format!("{API_CLIENT}:k-{id}")),
            status: status.into(),
            reason: reason.map(Into::into),
            amount_cents: Some(450),
            charge_id: charge.map(Into::into),
            items: BTreeMap::from([("tea".to_owned(), 1)]),
        }
    }

    fn charge(id: &str, reference: &str, status: &str) -> Charge {
        Charge {
            id: id.into(),
            status: status.into(),
            amount_cents: 450,
            reference: reference.into(),
        }
    }

    /// A consistent world: one confirmed order, one declined; everything drained.
    fn consistent() -> (Evidence, Vec<OrderRecord>) {
        let evidence = Evidence {
            orders: vec![
                order("o1", CONFIRMED, None, Some("ch_1")),
                order("o2", FAILED, Some("card_declined"), None),
            ],
            payments: BTreeMap::from([
                (
                    "o1".to_owned(),
                    PaymentRow {
                        status: "CHARGED".into(),
                        charge_id: Some("ch_1".into()),
                        amount_cents: 450,
                    },
                ),
                (
                    "o2".to_owned(),
                    PaymentRow {
                        status: "DECLINED".into(),
                        charge_id: None,
                        amount_cents: 450,
                    },
                ),
            ]),
            stock: BTreeMap::from([("tea".to_owned(), 9)]),
            initial_stock: BTreeMap::from([("tea".to_owned(), 10)]),
            reservations: BTreeMap::from([
                (
                    "o1".to_owned(),
                    ReservationRow {
                        status: "RESERVED".into(),
                        amount_cents: 450,
                        items: BTreeMap::from([("tea".to_owned(), 1)]),
                    },
                ),
                (
                    "o2".to_owned(),
                    ReservationRow {
                        status: "RELEASED".into(),
                        amount_cents: 450,
                        items: BTreeMap::from([("tea".to_owned(), 1)]),
                    },
                ),
            ]),
            notifications: BTreeMap::from([
                ("o1".to_owned(), vec!["order_confirmed".to_owned()]),
                ("o2".to_owned(), vec!["order_failed".to_owned()]),
            ]),
            outboxes: BTreeMap::from([(
                "orders".to_owned(),
                BTreeMap::from([("sent".to_owned(), 5)]),
            )]),
            charges: vec![charge("ch_1", "o1", "succeeded")],
            queues: vec![
                ("ns.orders.saga".into(), 0),
                ("ns.orders.saga.dlq".into(), 0),
            ],
            dlq: Vec::new(),
        };
        let clients = vec![
            OrderRecord {
                key: "k-o1".into(),
                ids: vec!["o1".into()],
                attempts: 2,
                final_seen: Some("CONFIRMED".into()),
                ..OrderRecord::default()
            },
            OrderRecord {
                key: "k-o2".into(),
                ids: vec!["o2".into()],
                attempts: 1,
                final_seen: Some("FAILED:card_declined".into()),
                ..OrderRecord::default()
            },
        ];
        (evidence, clients)
    }

    fn broken(evidence: &Evidence, clients: &[OrderRecord]) -> Vec<&'static str> {
        evaluate(evidence, clients, "ns.")
            .into_iter()
            .filter(|i| !i.holds())
            .map(|i| i.name)
            .collect()
    }

    #[test]
    fn a_consistent_shop_breaks_nothing() {
        let (evidence, clients) = consistent();
        assert_eq!(broken(&evidence, &clients), Vec::<&str>::new());
    }

    #[test]
    fn each_kind_of_damage_breaks_its_invariant() {
        let (base, clients) = consistent();
        let name = |i: usize| evaluate(&base, &clients, "ns.")[i].name;

        let mut e = base.clone();
        e.orders[0].status = "PENDING".into();
        assert!(broken(&e, &clients).contains(&name(0)));

        let mut c = clients.clone();
        c[0].ids.push("o9".into());
        assert!(broken(&base, &c).contains(&name(1)));
        let mut c = clients.clone();
        c[1].final_seen = Some("CONFIRMED".into());
        assert!(broken(&base, &c).contains(&name(1)));

        let mut e = base.clone();
        e.charges.push(charge("ch_2", "o1", "succeeded"));
        assert!(broken(&e, &clients).contains(&name(2)));
        let mut e = base.clone();
        e.charges.push(charge("ch_3", "o2", "succeeded"));
        assert_eq!(broken(&e, &clients), vec![name(2)]);
        e.charges[1].status = "refunded".into();
        assert!(broken(&e, &clients).is_empty(), "a refunded charge is fine");

        let mut e = base.clone();
        e.stock.insert("tea".into(), 8);
        assert_eq!(broken(&e, &clients), vec![name(3)]);
        let mut e = base.clone();
        e.reservations.get_mut("o2").unwrap().status = "RESERVED".into();
        assert!(broken(&e, &clients).contains(&name(3)));

        let mut e = base.clone();
        e.outboxes
            .get_mut("orders")
            .unwrap()
            .insert("parked".into(), 1);
        assert_eq!(broken(&e, &clients), vec![name(4)]);

        let mut e = base.clone();
        e.queues[0].1 = 3;
        assert_eq!(broken(&e, &clients), vec![name(5)]);

        let mut e = base.clone();
        e.queues[1].1 = 1;
        let mut letter = DlqMessage {
            queue: "ns.orders.saga.dlq".into(),
            message_id: "m-1".into(),
            routing_key: "payment.failed".into(),
            reason: Some("undecodable: missing field".into()),
            x_death: None,
            logged: Some("undecodable: missing field".into()),
        };
        e.dlq.push(letter.clone());
        assert!(broken(&e, &clients).is_empty(), "a logged dead letter");
        letter.logged = None;
        e.dlq[0] = letter;
        assert_eq!(broken(&e, &clients), vec![name(6)]);

        let mut e = base.clone();
        e.notifications.remove("o2");
        assert_eq!(broken(&e, &clients), vec![name(7)]);
    }
}
