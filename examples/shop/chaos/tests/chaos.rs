//! A short chaos run of the whole shop (debug binaries, SQLite, a RabbitMQ node of the test's
//! own): orders while one round of faults runs (each of the six services killed and restarted
//! and the broker restarted, in a seeded order, ~3 s apart: about half a minute), then every
//! invariant checked in the services' databases. `SHOP_CHAOS_SEED` replays another schedule; the long run is the binary (see the
//! README).
//!
//! Nothing outlives the test: the run stops the system and the node itself, and on a panic
//! both are dropped on the way out (the services are killed, the node stopped and removed).

use std::time::{Duration, Instant};

use shop_chaos::{ChaosConfig, run};
use shop_launcher::{SERVICES, build_services_for_tests};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_keeps_its_invariants_through_kills_and_a_broker_restart() {
    let bin_dir = build_services_for_tests().expect("cargo build of the services");
    let dir = tempfile::tempdir().unwrap();
    let mut config = ChaosConfig::new(bin_dir, dir.path().to_path_buf());
    config.seed = std::env::var("SHOP_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2026);
    // The run lasts at least one whole round of faults, however short `duration`: one round
    // is what the assertions below need; more rounds are the long run's job.
    config.duration = Duration::from_secs(15);
    config.fault_interval = Duration::from_secs(3);
    config.clients = 4;
    config.quiescence_timeout = Duration::from_secs(90);
    let started = Instant::now();
    let report = run(config).await.expect("the chaos run is carried out");
    println!("{report}");

    let faults = report.faults_by_kind();
    for service in SERVICES {
        assert!(
            faults
                .get(&format!("kill {service}"))
                .is_some_and(|n| *n >= 1),
            "{service} was never killed: {faults:?}"
        );
    }
    assert!(
        faults.get("broker restart").is_some_and(|n| *n >= 1),
        "{faults:?}"
    );
    let accepted = report.client_summary.accepted;
    assert!(accepted >= 50, "only {accepted} orders accepted:\n{report}");
    let in_db: usize = report.orders_by_state.values().sum();
    assert!(
        in_db >= accepted,
        "{in_db} orders stored, {accepted} accepted"
    );
    assert!(report.quiescent_after.is_some(), "{report}");
    for invariant in &report.invariants {
        assert!(invariant.checked > 0, "{} checked nothing", invariant.name);
    }
    assert!(report.passed(), "an invariant is broken:\n{report}");
    assert!(
        started.elapsed() < Duration::from_secs(240),
        "{:?}",
        started.elapsed()
    );
}
