//! # shop-chaos
//!
//! The whole shop under faults, then its invariants checked in the services' own databases.
//!
//! [`run`] starts a RabbitMQ node of its own (`chassis_testkit::RabbitNode`, free ports: the
//! machine's broker is never touched), every shop service as its own process on it (the
//! launcher's [`System`]: SQLite files in the run directory, or a PostgreSQL database each; the
//! payment provider with its ledger file), and then, for [`ChaosConfig::duration`]:
//!
//! - [`clients`]: concurrent clients place orders through the gateway, each with its own
//!   `Idempotency-Key`, retrying (same key) while the shop cannot answer, and follow them;
//! - [`faults`]: one fault at a time, with seeded gaps: a service `SIGKILL`ed and started again
//!   (same port, same database file), or the broker node stopped and started again. Every
//!   round kills each of the six services once and restarts the broker once; the fault phase
//!   lasts until `duration` has passed and at least one round is complete.
//!
//! Then the faults stop, the clients finish the placement they are in, and the run waits for
//! quiescence: no order pending, every outbox sent, every work queue empty (or
//! [`ChaosConfig::quiescence_timeout`]). [`checks`] reads the evidence and evaluates the
//! invariants; the [`Report`] says what was placed, what became of it, which faults were
//! injected and which invariants hold. Everything started is stopped on the way out, on error
//! and on panic too (the system kills its processes when dropped, the node stops when dropped).
//!
//! # Example
//! ```no_run
//! # async fn run() -> Result<(), shop_launcher::BoxError> {
//! let bin_dir = shop_launcher::build_services(true)?;
//! let run_dir = std::env::temp_dir().join("shop-chaos-example");
//! let mut config = shop_chaos::ChaosConfig::new(bin_dir, run_dir);
//! config.duration = std::time::Duration::from_secs(600);
//! let report = shop_chaos::run(config).await?;
//! println!("{report}");
//! assert!(report.passed());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chassis_testkit::RabbitNode;
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use shop_common::db::Db;
use shop_launcher::{BoxError, Database, SERVICES_WITH_DATABASE, System, SystemConfig};

pub mod checks;
pub mod clients;
pub mod faults;

use checks::{Evidence, Invariant};
use clients::OrderRecord;
use faults::{Fault, Schedule};

/// The catalogue of a chaos run: three plentiful products and a scarce one, whose stock runs
/// out (`out_of_stock` failures). Known here so the stock check can compare.
pub const INVENTORY_SEED: &str = "tea:Green tea:450:1000000,mug:Mug:1200:1000000,\
kettle:Kettle:3900:1000000,scarce:Scarce teapot:9900:25";

/// The end-user API key the clients use (the launcher's default, client `demo`).
pub const API_KEY: &str = "demo-key-0001";

/// What a run does.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Where the service binaries are.
    pub bin_dir: PathBuf,
    /// Where the databases, the provider's ledger and the logs go.
    pub run_dir: PathBuf,
    /// SQLite files (default) or a PostgreSQL database per service.
    pub database: Database,
    /// How long faults are injected (at least one full round, see the crate docs).
    pub duration: Duration,
    /// Seeds the fault schedule and the clients' choices.
    pub seed: u64,
    /// Clients placing orders at once.
    pub clients: usize,
    /// Pause between two orders of a client.
    pub think_time: Duration,
    /// Mean gap between two faults.
    pub fault_interval: Duration,
    /// How long to wait, after the faults, for every order to be final and everything sent.
    pub quiescence_timeout: Duration,
    /// The saga's step timeout.
    pub step_timeout: Duration,
    /// Fraction of orders paying with the always-declined method.
    pub declined_ratio: f64,
    /// Fraction of orders for the scarce product.
    pub scarce_ratio: f64,
}

impl ChaosConfig {
    /// Defaults: SQLite, 10 minutes of faults every 10 s on average, 8 clients, seed 1.
    pub fn new(bin_dir: PathBuf, run_dir: PathBuf) -> Self {
        Self {
            bin_dir,
            run_dir,
            database: Database::Sqlite,
            duration: Duration::from_secs(600),
            seed: 1,
            clients: 8,
            think_time: Duration::from_millis(100),
            fault_interval: Duration::from_secs(10),
            quiescence_timeout: Duration::from_secs(120),
            step_timeout: Duration::from_secs(30),
            declined_ratio: 0.05,
            scarce_ratio: 0.05,
        }
    }
}

/// One fault as injected.
#[derive(Debug, Clone)]
pub struct Injected {
    /// When, since the fault phase began.
    pub at: Duration,
    /// What.
    pub fault: Fault,
    /// How long the victim was down (kill to ready again, or stop to started).
    pub outage: Duration,
}

/// What the clients saw, summed.
#[derive(Debug, Clone, Default)]
pub struct ClientSummary {
    /// Orders the clients tried to place (distinct keys).
    pub placed: usize,
    /// Orders accepted (`202`).
    pub accepted: usize,
    /// Orders refused with a final `4xx`, by status.
    pub refused: BTreeMap<u16, usize>,
    /// Placements given up (no usable answer within the client's patience).
    pub abandoned: usize,
    /// Requests beyond the first (retries with the same key).
    pub retries: usize,
    /// Accepted orders whose final status the client saw.
    pub followed_to_final: usize,
}

impl ClientSummary {
    fn from(records: &[OrderRecord]) -> Self {
        let mut s = ClientSummary {
            placed: records.len(),
            ..ClientSummary::default()
        };
        for r in records {
            if r.accepted_id().is_some() {
                s.accepted += 1;
            }
            if let Some(status) = r.refused {
                *s.refused.entry(status).or_default() += 1;
            }
            s.abandoned += usize::from(r.abandoned);
            s.retries += r.attempts.saturating_sub(1) as usize;
            s.followed_to_final += usize::from(r.final_seen.is_some());
        }
        s
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// The database kind (`sqlite` or `postgres`).
    pub database: &'static str,
    /// Clients.
    pub clients: usize,
    /// How long the fault phase lasted.
    pub fault_phase: Duration,
    /// How long the run took, start to stop.
    pub elapsed: Duration,
    /// What the clients saw.
    pub client_summary: ClientSummary,
    /// Orders in the orders database by state (`CONFIRMED`, `FAILED(reason)`, `PENDING`).
    pub orders_by_state: BTreeMap<String, usize>,
    /// Every fault injected, in order.
    pub faults: Vec<Injected>,
    /// Time from the end of the faults to quiescence (`None`: not reached before the timeout).
    pub quiescent_after: Option<Duration>,
    /// Charges in the provider's ledger, and how many of them are refunded.
    pub charges: (usize, usize),
    /// Dead-lettered messages by queue and reason.
    pub dead_letters: BTreeMap<String, usize>,
    /// The invariants.
    pub invariants: Vec<Invariant>,
    /// Services that did not exit cleanly at the final (graceful) stop.
    pub unclean_stop: Vec<String>,
    /// The clients' records (for tests that look closer).
    pub records: Vec<OrderRecord>,
}

impl Report {
    /// Whether every invariant holds and quiescence was reached.
    pub fn passed(&self) -> bool {
        self.quiescent_after.is_some() && self.invariants.iter().all(Invariant::holds)
    }

    /// Faults injected, by kind.
    pub fn faults_by_kind(&self) -> BTreeMap<String, usize> {
        let mut by = BTreeMap::new();
        for f in &self.faults {
            *by.entry(f.fault.to_string()).or_default() += 1;
        }
        by
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.client_summary;
        writeln!(
            f,
            "shop chaos: seed {}, {} clients, {}, faults for {:.0} s, {:.0} s in all",
            self.seed,
            self.clients,
            self.database,
            self.fault_phase.as_secs_f64(),
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "orders")?;
        writeln!(f, "  placed by clients   {}", c.placed)?;
        writeln!(f, "  accepted (202)      {}", c.accepted)?;
        if !c.refused.is_empty() {
            writeln!(f, "  refused             {:?}", c.refused)?;
        }
        writeln!(f, "  abandoned           {}", c.abandoned)?;
        writeln!(f, "  retried requests    {}", c.retries)?;
        writeln!(f, "  followed to final   {}", c.followed_to_final)?;
        let total: usize = self.orders_by_state.values().sum();
        writeln!(f, "  in the orders db    {total}")?;
        for (state, n) in &self.orders_by_state {
            writeln!(f, "    {state:<34} {n}")?;
        }
        writeln!(
            f,
            "  provider charges    {} ({} refunded)",
            self.charges.0, self.charges.1
        )?;
        writeln!(f, "faults                {}", self.faults.len())?;
        for (kind, n) in self.faults_by_kind() {
            let outages: Vec<f64> = self
                .faults
                .iter()
                .filter(|i| i.fault.to_string() == kind)
                .map(|i| i.outage.as_secs_f64())
                .collect();
            let max = outages.iter().copied().fold(0.0, f64::max);
            writeln!(f, "  {kind:<20} {n}  (longest outage {max:.1} s)")?;
        }
        match self.quiescent_after {
            Some(d) => writeln!(f, "quiescent {:.1} s after the last fault", d.as_secs_f64())?,
            None => writeln!(f, "NOT quiescent before the timeout")?,
        }
        if self.dead_letters.is_empty() {
            writeln!(f, "dead letters          none")?;
        } else {
            writeln!(f, "dead letters")?;
            for (what, n) in &self.dead_letters {
                writeln!(f, "  {n:>5}  {what}")?;
            }
        }
        if !self.unclean_stop.is_empty() {
            writeln!(f, "did not stop cleanly: {:?}", self.unclean_stop)?;
        }
        writeln!(f, "invariants")?;
        for inv in &self.invariants {
            writeln!(
                f,
                "  [{}] {} ({} checks)",
                if inv.holds() { "ok" } else { "BROKEN" },
                inv.name,
                inv.checked
            )?;
            if !inv.holds() {
                f.write_str(&checks::violations_text(inv, 10))?;
            }
        }
        write!(f, "result: {}", if self.passed() { "PASS" } else { "FAIL" })
    }
}

/// Blocking node operations off the runtime's threads.
async fn on_node<T: Send + 'static>(
    node: &Arc<RabbitNode>,
    f: impl FnOnce(&RabbitNode) -> T + Send + 'static,
) -> Result<T, BoxError> {
    let node = node.clone();
    Ok(tokio::task::spawn_blocking(move || f(&node)).await?)
}

/// Runs the chaos (see the [crate docs](crate)) and returns its report; an `Err` when the run
/// itself could not be carried out (the node or a service did not start, a restarted service
/// never got ready), which is a failure too.
pub async fn run(config: ChaosConfig) -> Result<Report, BoxError> {
    let started = Instant::now();
    std::fs::create_dir_all(&config.run_dir)?;
    let node = Arc::new(RabbitNode::new("shop-chaos"));
    on_node(&node, RabbitNode::start).await?;

    let mut system_config = SystemConfig::new(config.bin_dir.clone(), config.run_dir.clone());
    system_config.amqp_url = node.url();
    system_config.database = config.database.clone();
    system_config.inventory_seed = Some(INVENTORY_SEED.into());
    system_config.step_timeout = config.step_timeout;
    system_config.extra_env.push((
        "PROVIDER_LEDGER_FILE".into(),
        config
            .run_dir
            .join("payment-provider-ledger.jsonl")
            .display()
            .to_string(),
    ));
    let mut system = System::start(system_config).await?;
    let namespace = system.namespace().to_owned();
    let dbs: BTreeMap<&'static str, Db> = SERVICES_WITH_DATABASE
        .iter()
        .map(|s| {
            let url = checks::database_url(system.database(), &config.run_dir, s);
            Ok((*s, Db::open(&url)?))
        })
        .collect::<Result<_, BoxError>>()?;

    // The clients, in the background; the faults, here.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = tokio::spawn(clients::run(
        clients::ClientConfig {
            gateway: system.url("gateway").to_owned(),
            api_key: API_KEY.into(),
            clients: config.clients,
            seed: config.seed,
            declined_ratio: config.declined_ratio,
            scarce_ratio: config.scarce_ratio,
            think_time: config.think_time,
        },
        stop.clone(),
    ));
    let mut schedule = Schedule::new(StdRng::seed_from_u64(config.seed), config.fault_interval);
    let phase = Instant::now();
    let mut injected = Vec::new();
    let faulted = async {
        while phase.elapsed() < config.duration || schedule.rounds_done == 0 {
            tokio::time::sleep(schedule.gap()).await;
            let fault = schedule.next_fault();
            let downtime = schedule.downtime(fault);
            let at = phase.elapsed();
            let begun = Instant::now();
            eprintln!("[{:>6.1} s] {fault}", at.as_secs_f64());
            match fault {
                Fault::Kill(service) => {
                    system.kill(service).await?;
                    tokio::time::sleep(downtime).await;
                    system
                        .restart(service)
                        .await
                        .map_err(|e| format!("{service} after its kill: {e}"))?;
                }
                Fault::BrokerRestart => {
                    on_node(&node, RabbitNode::stop).await?;
                    tokio::time::sleep(downtime).await;
                    on_node(&node, RabbitNode::start).await?;
                }
            }
            injected.push(Injected {
                at,
                fault,
                outage: begun.elapsed(),
            });
        }
        Ok::<_, BoxError>(())
    }
    .await;
    let fault_phase = phase.elapsed();
    stop.store(true, Ordering::Relaxed);
    let records = clients.await?;
    faulted?;

    // Quiescence: nothing pending anywhere.
    let quiet_from = Instant::now();
    let mut quiescent_after = None;
    while quiet_from.elapsed() < config.quiescence_timeout {
        if quiescent(&dbs, &node, &namespace).await? {
            quiescent_after = Some(quiet_from.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // The evidence, read while everything still runs (the provider's ledger is served by it).
    let mut evidence = Evidence {
        initial_stock: shop_inventory_seed(),
        ..Evidence::default()
    };
    checks::read_databases(&mut evidence, &dbs).await?;
    evidence.charges = checks::read_ledger(system.url("payment-provider")).await?;
    evidence.queues = on_node(&node, RabbitNode::queue_depths).await?;
    let dlqs: Vec<String> = evidence
        .queues
        .iter()
        .filter(|(q, n)| q.starts_with(&namespace) && q.ends_with(".dlq") && *n > 0)
        .map(|(q, _)| q.clone())
        .collect();
    evidence.dlq =
        checks::read_dead_letters(&node.url(), &namespace, &dlqs, &config.run_dir).await?;
    let invariants = checks::evaluate(&evidence, &records, &namespace);

    for db in dbs.into_values() {
        match db {
            Db::Sqlite(outbox) => outbox.pool().close().await,
            Db::Postgres(outbox) => outbox.pool().close().await,
        }
    }
    let unclean_stop = system.stop().await;
    // Stops the node and removes its files (blocking: off the runtime's threads).
    tokio::task::spawn_blocking(move || drop(node)).await?;

    let mut orders_by_state = BTreeMap::new();
    for o in &evidence.orders {
        *orders_by_state.entry(o.state()).or_default() += 1;
    }
    let mut dead_letters = BTreeMap::new();
    for m in &evidence.dlq {
        let reason = m.reason.clone().or(m.x_death.clone()).unwrap_or_default();
        let queue = m.queue.strip_prefix(&namespace).unwrap_or(&m.queue);
        *dead_letters
            .entry(format!("{queue}: {}", shorten(&reason, 120)))
            .or_default() += 1;
    }
    Ok(Report {
        seed: config.seed,
        database: match config.database {
            Database::Sqlite => "sqlite",
            Database::Postgres { .. } => "postgres",
        },
        clients: config.clients,
        fault_phase,
        elapsed: started.elapsed(),
        client_summary: ClientSummary::from(&records),
        orders_by_state,
        faults: injected,
        quiescent_after,
        charges: (
            evidence.charges.len(),
            evidence
                .charges
                .iter()
                .filter(|c| c.status == "refunded")
                .count(),
        ),
        dead_letters,
        invariants,
        unclean_stop,
        records,
    })
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

/// The stock each SKU starts with ([`INVENTORY_SEED`]).
fn shop_inventory_seed() -> BTreeMap<String, i64> {
    INVENTORY_SEED
        .split(',')
        .filter_map(|entry| {
            let parts: Vec<&str> = entry.trim().split(':').collect();
            Some((parts.first()?.to_string(), parts.get(3)?.parse().ok()?))
        })
        .collect()
}

/// No order pending, no outbox row unsent, no message in a work or retry queue.
async fn quiescent(
    dbs: &BTreeMap<&'static str, Db>,
    node: &Arc<RabbitNode>,
    namespace: &str,
) -> Result<bool, BoxError> {
    if let Some(orders) = dbs.get("orders")
        && checks::pending_orders(orders).await? > 0
    {
        return Ok(false);
    }
    for db in dbs.values() {
        if checks::unsent_outbox_rows(db).await? > 0 {
            return Ok(false);
        }
    }
    let queues = on_node(node, RabbitNode::queue_depths).await?;
    Ok(!queues.is_empty()
        && queues
            .iter()
            .filter(|(q, _)| checks::is_work_queue(q, namespace))
            .all(|(_, n)| *n == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_stock_is_known() {
        let stock = shop_inventory_seed();
        assert_eq!(stock.len(), 4);
        assert_eq!(stock["scarce"], 25);
    }
}
