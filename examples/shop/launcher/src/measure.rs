//! The workload with its costs: [`run`] drives [`workload::run`] and, around it, samples every
//! process's CPU time and context switches ([`cpu`]) and scrapes every service's histograms
//! ([`hops`]), so the summary says how much CPU an order took in each process, how often its
//! threads handed work to each other, and where its time went.
//!
//! Order of the samples: scrape, then CPU, then the workload, then CPU, then scrape, so the
//! scrapes' own cost (rendering `/metrics`) stays outside the CPU figures.
//!
//! On a local PostgreSQL server the summary adds the server's CPU per order on a line of its
//! own ([`cpu::read_tree`]: the postmaster and every backend, those that exited included). It
//! counts whatever else uses that server meanwhile.
//!
//! # Example
//! ```no_run
//! # async fn run(system: &shop_launcher::System) -> Result<(), shop_launcher::BoxError> {
//! use shop_launcher::measure;
//! use shop_launcher::workload::WorkloadConfig;
//!
//! let measured = measure::run(system, &WorkloadConfig::default(), None).await?;
//! println!("{measured}"); // the summary, CPU and switches per order, the per-hop table
//! # Ok(()) }
//! ```

use std::fmt;

use indicatif::ProgressBar;

use crate::cpu::{self, CpuReport, SwitchReport};
use crate::hops::{self, HopReport};
use crate::preflight::Endpoint;
use crate::workload::{self, Summary, WorkloadConfig};
use crate::{BoxError, System};

/// What a measured run found.
#[derive(Debug, Clone)]
pub struct Measured {
    /// The workload's outcome and latencies.
    pub summary: Summary,
    /// CPU per order of each service process and the broker.
    pub cpu: CpuReport,
    /// Context switches per order of each service process and the broker.
    pub switches: SwitchReport,
    /// Whether the broker's CPU is included (a local broker whose pid was found).
    pub broker_measured: bool,
    /// CPU ms per order of the local PostgreSQL server (every process of it), in a PostgreSQL
    /// run: kept out of [`cpu`](Self::cpu), whose total stays the services and the broker in
    /// every run; on SQLite that database work is inside the services' own figures.
    pub database_server_ms: Option<f64>,
    /// Per-hop latencies.
    pub hops: HopReport,
}

impl fmt::Display for Measured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.summary)?;
        write!(f, "{}", self.cpu)?;
        if !self.broker_measured {
            write!(
                f,
                " (RabbitMQ not measured: not local, or its pid not found)"
            )?;
        }
        if let Some(ms) = self.database_server_ms {
            write!(
                f,
                "\nPostgreSQL server  {ms:.2} ms per order (all its processes; not in the total above)"
            )?;
        }
        write!(f, "\n{}\n{}", self.switches, self.hops)
    }
}

/// The name the broker's CPU is reported under.
pub const BROKER: &str = "rabbitmq";

/// Runs the workload against `system` and measures it (see the [module docs](self)).
pub async fn run(
    system: &System,
    config: &WorkloadConfig,
    progress: Option<ProgressBar>,
) -> Result<Measured, BoxError> {
    let mut pids = system.pids();
    let local_broker = Endpoint::parse(system.amqp_url(), 5672).is_ok_and(|e| e.is_loopback());
    let broker = if local_broker {
        cpu::broker_pid().await
    } else {
        None
    };
    if let Some(pid) = broker {
        pids.push((BROKER.to_owned(), pid));
    }
    let endpoints: Vec<(String, String)> = crate::SERVICES
        .iter()
        .map(|s| ((*s).to_owned(), system.admin_url(s).to_owned()))
        .collect();
    let database_server = crate::database_server_pid(system.database()).await;
    let ticks = cpu::ticks_per_second();
    let http = crate::tls::http_client(system.pki())?.build()?;
    let scraped_before = hops::scrape(&http, &endpoints).await;
    let switches_before = cpu::sample_switches(&pids);
    let cpu_before = cpu::sample(&pids);
    let server_before = database_server.and_then(|pid| cpu::read_tree(pid).ok());
    // Round-robin across the gateway replicas, when there are several.
    let summary = workload::run_across(&system.gateway_urls(), config, progress).await?;
    let cpu_after = cpu::sample(&pids);
    let server_after = database_server.and_then(|pid| cpu::read_tree(pid).ok());
    let switches_after = cpu::sample_switches(&pids);
    let scraped_after = hops::scrape(&http, &endpoints).await;
    let database_server_ms = match (server_before, server_after) {
        (Some(before), Some(after)) if summary.finished() > 0 => {
            let ticks_used = after.total().saturating_sub(before.total()) as f64;
            Some(ticks_used * 1000.0 / ticks.max(1) as f64 / summary.finished() as f64)
        }
        _ => None,
    };
    Ok(Measured {
        database_server_ms,
        cpu: CpuReport::between(&cpu_before, &cpu_after, ticks, summary.finished()),
        switches: SwitchReport::between(&switches_before, &switches_after, summary.finished()),
        broker_measured: broker.is_some(),
        hops: HopReport::between(&scraped_before, &scraped_after),
        summary,
    })
}
