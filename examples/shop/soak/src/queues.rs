//! Queue depths: the ready and unacknowledged messages of every queue of the run's namespace,
//! as `rabbitmqctl list_queues -p <vhost> -q --no-table-headers name messages` prints them (the
//! broker must be on this machine; the management plugin is not needed).
//!
//! # Example
//! ```
//! use shop_soak::queues::parse;
//!
//! let listing = "shop-1.orders.events\t3\nother.q\t9\nshop-1.inventory.commands\t0\n";
//! assert_eq!(
//!     parse(listing, "shop-1."),
//!     vec![("shop-1.inventory.commands".to_owned(), 0), ("shop-1.orders.events".to_owned(), 3)]
//! );
//! ```

use std::process::Stdio;
use std::time::Duration;

use shop_launcher::BoxError;
use tokio::process::Command;

/// The `(queue, messages)` of `listing` whose name starts with `namespace`, sorted by name.
pub fn parse(listing: &str, namespace: &str) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = listing
        .lines()
        .filter_map(|line| {
            let (name, messages) = line.trim_end().rsplit_once(char::is_whitespace)?;
            let name = name.trim_end();
            if !name.starts_with(namespace) {
                return None;
            }
            Some((name.to_owned(), messages.parse().ok()?))
        })
        .collect();
    out.sort();
    out
}

/// Lists the depths of the namespace's queues on the local broker's `vhost`.
pub async fn depths(vhost: &str, namespace: &str) -> Result<Vec<(String, u64)>, BoxError> {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        Command::new("rabbitmqctl")
            .args(["list_queues", "-p", vhost, "-q", "--no-table-headers"])
            .args(["name", "messages"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| "rabbitmqctl list_queues did not answer within 20 s")??;
    if !out.status.success() {
        return Err(format!(
            "rabbitmqctl list_queues failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(parse(&String::from_utf8_lossy(&out.stdout), namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_lines_that_are_not_name_and_count() {
        let listing = "ns.a\t12\nns.b\tnot-a-number\n\nns.c 4\n";
        assert_eq!(
            parse(listing, "ns."),
            vec![("ns.a".to_owned(), 12), ("ns.c".to_owned(), 4)]
        );
    }
}
