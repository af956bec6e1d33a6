//! Deleting a run's exchanges and queues once its services have stopped.
//!
//! Every name a launched system declares starts with its namespace (`SHOP_NAMESPACE`, e.g.
//! `shop-1a2b3c4d.`): the two topic exchanges, each consumer queue with its dead-letter
//! exchange and queue and one queue per retry tier. Without cleanup ~30 of them stayed in the
//! broker per run.
//!
//! # Where the names come from
//! The launcher cannot compute them: each service builds its queues in its own `main` (its
//! suffixes, its bindings, retry tiers named after their delays), and a copy of that knowledge
//! here would go stale with the next change there. AMQP 0-9-1 has no way to list queues or
//! exchanges, and the management plugin (HTTP API) is not enabled on the broker this was
//! written for. What always works on the broker's machine is `rabbitmqctl list_queues` /
//! `list_exchanges`, which lists exactly what exists, names nobody predicted included. So:
//! - the names are listed with `rabbitmqctl` (only for a broker on a loopback address, and
//!   only when `rabbitmqctl` is installed) and filtered by the namespace prefix;
//! - they are deleted over AMQP (`queue.delete`, `exchange.delete`) with `AMQP_URL`'s
//!   credentials and vhost, the same way the services declared them;
//! - to be sure `rabbitmqctl` talks to the broker of `AMQP_URL` (and not, say, another local
//!   node on another port), the launcher first declares an exclusive probe queue in the
//!   namespace over AMQP and requires the listing to contain it;
//! - for a remote broker, or without `rabbitmqctl`, [`delete_namespace`] deletes nothing and
//!   its error says, in one line, which prefix to delete on the broker's machine.
//!
//! # Example
//! ```
//! use shop_launcher::cleanup::{check_namespace, in_namespace};
//!
//! assert!(check_namespace("shop-1a2b3c4d.").is_ok());
//! assert!(check_namespace("").is_err()); // would match every name
//! let listed = "shop-1a2b3c4d.orders.saga\nshop-1a2b3c4dx.other\namq.topic\n";
//! assert_eq!(in_namespace(listed, "shop-1a2b3c4d."), ["shop-1a2b3c4d.orders.saga"]);
//! ```

use std::fmt;
use std::process::Stdio;
use std::time::Duration;

use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use tokio::process::Command;
use tokio::time::timeout;

use crate::preflight::{Endpoint, installed};

/// How long one broker operation (connect, list, delete) may take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// What [`delete_namespace`] deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    /// The queues (work queues, dead-letter queues, retry tiers).
    pub queues: Vec<String>,
    /// The exchanges (the shop's topic exchanges and the dead-letter exchanges).
    pub exchanges: Vec<String>,
}

/// Why the namespace was not (completely) deleted; its message is one line that says what is
/// left and how to delete it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanupError {
    message: String,
}

impl CleanupError {
    fn new(message: impl Into<String>) -> Self {
        let message = message.into().replace(['\n', '\r'], " ");
        Self { message }
    }
}

impl fmt::Display for CleanupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CleanupError {}

/// Checks that `namespace` is a prefix that is safe to delete by: 2..=64 of `[A-Za-z0-9_.-]`,
/// ending with `.` (so `shop-1.` never matches `shop-10.…`), and not the broker's reserved
/// `amq.` (an empty prefix would match every name on the broker).
pub fn check_namespace(namespace: &str) -> Result<(), CleanupError> {
    let ok = (2..=64).contains(&namespace.len())
        && namespace.ends_with('.')
        && !namespace.starts_with("amq.")
        && namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CleanupError::new(format!(
            "namespace {namespace:?} must be 2..=64 of [A-Za-z0-9_.-], end with `.` and not \
             start with `amq.`"
        )))
    }
}

/// The names (one per line, as `rabbitmqctl -q --no-table-headers` prints them) that start
/// with `namespace`.
pub fn in_namespace<'a>(listing: &'a str, namespace: &str) -> Vec<&'a str> {
    listing
        .lines()
        .map(str::trim_end)
        .filter(|name| name.starts_with(namespace))
        .collect()
}

/// Lists the queues (`"queues"`) or exchanges (`"exchanges"`) of `vhost` with `rabbitmqctl`.
async fn rabbitmqctl_list(what: &str, vhost: &str) -> Result<String, String> {
    let ctl = installed("rabbitmqctl").ok_or("rabbitmqctl is not installed")?;
    let out = timeout(
        OPERATION_TIMEOUT,
        Command::new(ctl)
            .arg(format!("list_{what}"))
            .args(["-p", vhost, "-q", "--no-table-headers", "name"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("rabbitmqctl list_{what} did not finish within 30 s"))?
    .map_err(|e| format!("rabbitmqctl list_{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "rabbitmqctl list_{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes every queue and exchange whose name starts with `namespace` from the broker of
/// `amqp_url` (see the [module docs](self) for how the names are found). Call it once the
/// services that use them have stopped: a running service would declare them again.
///
/// # Errors
/// A [`CleanupError`] when the namespace is not a safe prefix, the names cannot be listed (a
/// remote broker, no `rabbitmqctl`, `rabbitmqctl` seeing another broker), or a delete failed;
/// nothing or only part was deleted then, and the message says which prefix is left where.
pub async fn delete_namespace(amqp_url: &str, namespace: &str) -> Result<Deleted, CleanupError> {
    check_namespace(namespace)?;
    let broker = Endpoint::parse(amqp_url, 5672).map_err(|e| CleanupError::new(e.to_string()))?;
    let left = |why: &str| {
        CleanupError::new(format!(
            "the exchanges and queues of namespace {namespace} stay on {} (vhost {:?}): {why}; \
             delete every name starting with `{namespace}` there (rabbitmqctl list_queues / \
             list_exchanges on the broker's machine lists them)",
            broker.address(),
            broker.path
        ))
    };
    if !broker.is_loopback() {
        return Err(left(
            "the broker is not on this machine, and AMQP cannot list names (rabbitmqctl does, \
             on the broker's machine)",
        ));
    }
    if installed("rabbitmqctl").is_none() {
        return Err(left("rabbitmqctl is not installed here to list them"));
    }
    let props = lapin::ConnectionProperties::default()
        .with_connection_name(format!("{namespace}launcher-cleanup").into());
    let conn = match timeout(
        OPERATION_TIMEOUT,
        lapin::Connection::connect(amqp_url, props),
    )
    .await
    {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(left(&format!("connecting: {e}"))),
        Err(_) => return Err(left("connecting took over 30 s")),
    };
    let result = delete_listed(&conn, &broker, namespace).await;
    let _ = conn.close(200, "cleanup done".into()).await;
    result.map_err(|why| left(&why))
}

async fn delete_listed(
    conn: &lapin::Connection,
    broker: &Endpoint,
    namespace: &str,
) -> Result<Deleted, String> {
    let mut channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    // The probe proves that rabbitmqctl lists the broker and vhost of AMQP_URL. Exclusive: the
    // broker removes it with this connection.
    let probe = format!(
        "{namespace}launcher-probe-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    channel
        .queue_declare(
            probe.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("declaring the probe queue {probe}: {e}"))?;
    let queues = rabbitmqctl_list("queues", &broker.path).await?;
    let exchanges = rabbitmqctl_list("exchanges", &broker.path).await?;
    let queues = in_namespace(&queues, namespace);
    if !queues.contains(&probe.as_str()) {
        return Err(format!(
            "rabbitmqctl on this machine does not list the probe queue {probe} declared through \
             AMQP_URL, so it talks to another broker (or vhost)"
        ));
    }
    let mut deleted = Deleted::default();
    let mut failed = Vec::new();
    for name in queues.into_iter().filter(|q| *q != probe) {
        let done = timeout(
            OPERATION_TIMEOUT,
            channel.queue_delete(name.into(), QueueDeleteOptions::default()),
        )
        .await;
        match done {
            Ok(Ok(_)) => deleted.queues.push(name.to_owned()),
            Ok(Err(e)) => failed.push(format!("queue {name}: {e}")),
            Err(_) => failed.push(format!("queue {name}: no answer within 30 s")),
        }
        // A refused operation closes the channel: go on with a fresh one.
        if !channel.status().connected() {
            channel = conn.create_channel().await.map_err(|e| e.to_string())?;
        }
    }
    for name in in_namespace(&exchanges, namespace) {
        let done = timeout(
            OPERATION_TIMEOUT,
            channel.exchange_delete(name.into(), ExchangeDeleteOptions::default()),
        )
        .await;
        match done {
            Ok(Ok(())) => deleted.exchanges.push(name.to_owned()),
            Ok(Err(e)) => failed.push(format!("exchange {name}: {e}")),
            Err(_) => failed.push(format!("exchange {name}: no answer within 30 s")),
        }
        if !channel.status().connected() {
            channel = conn.create_channel().await.map_err(|e| e.to_string())?;
        }
    }
    if failed.is_empty() {
        Ok(deleted)
    } else {
        Err(format!(
            "deleted {} queues and {} exchanges, but not {}",
            deleted.queues.len(),
            deleted.exchanges.len(),
            failed.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_prefixes_are_namespaces() {
        for ok in ["shop-1a2b3c4d.", "e2e_x.", "a."] {
            assert!(check_namespace(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            ".",
            "shop",
            "amq.x.",
            "shop *.",
            "shop\n.",
            &format!("{}.", "x".repeat(64)),
        ] {
            assert!(check_namespace(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_filter_keeps_exactly_the_namespace() {
        let listing = "shop-1.orders.saga\nshop-1.orders.saga.dlq\nshop-10.orders.saga\n\
                       \nxshop-1.q\nshop-1.shop.events  \n";
        assert_eq!(
            in_namespace(listing, "shop-1."),
            [
                "shop-1.orders.saga",
                "shop-1.orders.saga.dlq",
                "shop-1.shop.events"
            ]
        );
    }

    #[tokio::test]
    async fn a_remote_broker_is_left_alone_with_a_one_line_hint() {
        let e = delete_namespace("amqp://guest:guest@192.0.2.10:5672/%2f", "shop-abc.")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("shop-abc.") && e.contains("192.0.2.10:5672") && !e.contains('\n'),
            "{e}"
        );
    }
}
