//! What a shop service reads from its environment: [`Shop`] (its name, the namespace of its
//! exchanges and queues, its database and broker) and the HTTP address ([`server_config`]).
//!
//! `HTTP_ADDR` (default `127.0.0.1:<the service's port>`), `DATABASE_URL` (default
//! `sqlite://<DATA_DIR or .>/<service>.db`), `AMQP_URL` (default the local broker),
//! `SHOP_NAMESPACE` (a prefix of every exchange and queue name, so several systems share one
//! broker), `CONSUMER_CONCURRENCY` (default 8).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chassis_core::{BoxError, ServiceInfo};
use chassis_http::server::ServerConfig;
use chassis_messaging::{
    Connection, ConnectionConfig, ConsumerConfig, ExchangeConfig, QueueConfig, TopologyConfig,
};

use crate::db::Db;
use crate::events::{COMMANDS_EXCHANGE, EVENTS_EXCHANGE};

/// `key`'s value, or `default` when it is unset or empty.
pub fn env(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.into())
}

/// The HTTP server's configuration: `HTTP_ADDR` or `127.0.0.1:<default_port>`; in-flight
/// requests get 10 s to finish at shutdown.
pub fn server_config(default_port: u16) -> Result<ServerConfig, BoxError> {
    let addr: SocketAddr = env("HTTP_ADDR", &format!("127.0.0.1:{default_port}"))
        .parse()
        .map_err(|e| format!("HTTP_ADDR: {e}"))?;
    Ok(ServerConfig::default()
        .bind(addr)
        .drain_timeout(Duration::from_secs(10)))
}

/// A shop service: its name and the namespace prefixed to its exchange and queue names.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shop {
    service: &'static str,
    namespace: Arc<str>,
}

impl Shop {
    /// The service `service` (`orders`, …) in the namespace `SHOP_NAMESPACE`.
    pub fn from_env(service: &'static str) -> Self {
        Self {
            service,
            namespace: env("SHOP_NAMESPACE", "").into(),
        }
    }

    /// The service name.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// An exchange or queue name with the namespace prefix.
    pub fn name(&self, base: &str) -> String {
        format!("{}{base}", self.namespace)
    }

    /// The queue `<namespace><service>.<suffix>` bound to `bindings` (exchange, routing key);
    /// the broker gives it its retry tiers and dead-letter queue.
    pub fn queue(&self, suffix: &str, bindings: &[(&str, &str)]) -> QueueConfig {
        let queue = QueueConfig::new(self.name(&format!("{}.{suffix}", self.service)));
        bindings.iter().fold(queue, |q, (exchange, key)| {
            q.bind(self.name(exchange), *key)
        })
    }

    /// The shop's topic exchanges, `shop.events` and `shop.commands`; add the service's queues.
    pub fn topology(&self) -> TopologyConfig {
        TopologyConfig::new()
            .exchange(ExchangeConfig::topic(self.name(EVENTS_EXCHANGE)))
            .exchange(ExchangeConfig::topic(self.name(COMMANDS_EXCHANGE)))
    }

    /// The connection to `AMQP_URL`, attaching in the background (see `Connection::start`).
    pub fn connect(&self, info: &ServiceInfo) -> Result<Connection, chassis_messaging::Error> {
        let url = env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
        let name = format!("{}{}-{}", self.namespace, self.service, info.instance_id);
        Connection::start(ConnectionConfig::new(url, name))
    }

    /// Consumers' settings: `CONSUMER_CONCURRENCY` handlers at a time (default 8).
    pub fn consumer_config(&self) -> ConsumerConfig {
        let concurrency = env("CONSUMER_CONCURRENCY", "8").parse().unwrap_or(8);
        ConsumerConfig::default().concurrency(concurrency)
    }

    /// The database `DATABASE_URL`, by default the SQLite file `<DATA_DIR>/<service>.db`.
    pub fn database(&self) -> Result<Db, BoxError> {
        let dir = std::path::PathBuf::from(env("DATA_DIR", "."));
        let file = dir.join(format!("{}.db", self.service));
        Db::open(&env(
            "DATABASE_URL",
            &format!("sqlite://{}", file.display()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_namespace() {
        let shop = Shop {
            service: "orders",
            namespace: "ns.".into(),
        };
        let queue = shop.queue("saga", &[(EVENTS_EXCHANGE, "payment.failed")]);
        assert_eq!(queue.name, "ns.orders.saga");
        assert_eq!(queue.bindings[0].exchange, "ns.shop.events");
        assert_eq!(queue.bindings[0].routing_key, "payment.failed");
        let exchanges = shop.topology().exchanges;
        let names: Vec<_> = exchanges.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["ns.shop.events", "ns.shop.commands"]);
    }
}
