//! What the launcher's broker tests share.

#![allow(dead_code, unreachable_pub)]

/// The names of `what` (`queues` or `exchanges`) on the broker's `/` vhost starting with
/// `prefix`, sorted, listed by `rabbitmqctl` independently of the launcher's own code.
pub fn listed(what: &str, prefix: &str) -> Vec<String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([&format!("list_{what}"), "-q", "--no-table-headers", "name"])
        .output()
        .unwrap();
    assert!(out.status.success(), "rabbitmqctl list_{what} failed");
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}
