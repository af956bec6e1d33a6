//! A short soak (30 s, a sample every 5 s) against the real shop and the local RabbitMQ: the
//! mechanics, not the memory figures — every service has rows in the CSV, the SVG is a
//! complete SVG document with the three panels, and the summary judged every service.

use std::path::PathBuf;
use std::process::Command;

use shop_launcher::{SERVICES, build_services_for_tests};

#[test]
fn a_short_soak_writes_samples_chart_and_summary() {
    let bins = build_services_for_tests().expect("cargo build of the services");
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(PathBuf::from(env!("CARGO_BIN_EXE_shop-soak")))
        .args(["--rate", "10", "--duration", "30s", "--sample", "5s"])
        .arg("--out")
        .arg(out.path())
        .arg("--bin-dir")
        .arg(&bins)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    // 0: every service within the limit; 1: one grew (a 30 s run is mostly warm-up). Anything
    // else means the soak itself did not work.
    assert!(
        matches!(run.status.code(), Some(0 | 1)),
        "{}\n{stdout}\n{stderr}",
        run.status
    );

    let csv = std::fs::read_to_string(out.path().join("samples.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("elapsed_s,kind,name,pid,rss_kb,fds,db_conns,messages")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    for service in SERVICES {
        let mine: Vec<&Vec<&str>> = rows
            .iter()
            .filter(|r| r[1] == "process" && r[2] == service)
            .collect();
        // Samples at 0, 5, …, 30 s and a last one when the load ends.
        assert!(mine.len() >= 6, "{service}: {} rows\n{stderr}", mine.len());
        for r in &mine {
            let rss: u64 = r[4].parse().unwrap();
            assert!(rss > 1024, "{service} RSS {rss} kB");
            assert!(r[5].parse::<u64>().unwrap() > 3);
        }
        // The services with a database hold their one SQLite connection.
        let conns: u64 = mine.last().unwrap()[6].parse().unwrap();
        let expected = u64::from(shop_launcher::SERVICES_WITH_DATABASE.contains(&service));
        assert_eq!(conns, expected, "{service} database connections");
    }
    let queue_rows = rows.iter().filter(|r| r[1] == "queue").count();
    assert!(queue_rows > 0, "no queue rows\n{stderr}");

    let svg = std::fs::read_to_string(out.path().join("soak.svg")).unwrap();
    assert!(
        svg.trim_start().starts_with("<svg"),
        "{}",
        &svg[..svg.len().min(200)]
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    for caption in ["Resident memory", "Open file descriptors", "Queue depth"] {
        assert!(svg.contains(caption), "{caption} panel missing");
    }
    assert!(svg.matches("<polyline").count() >= SERVICES.len() * 2);

    let summary = std::fs::read_to_string(out.path().join("summary.csv")).unwrap();
    assert_eq!(summary.lines().count(), SERVICES.len() + 1, "{summary}");
    for service in SERVICES {
        let row = summary
            .lines()
            .find(|l| l.starts_with(&format!("{service},")))
            .unwrap_or_else(|| panic!("{service} not in the summary"));
        let pass = row.rsplit(',').next().unwrap();
        assert!(pass == "true" || pass == "false", "{row}");
    }
    assert!(stdout.contains("orders attempted"), "{stdout}");
    assert!(stdout.contains("placement -> final p50"), "{stdout}");
}
