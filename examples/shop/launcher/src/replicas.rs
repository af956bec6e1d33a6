//! Replicas of the services, as a deployment runs them (`--replicas orders=3,inventory=2`).
//!
//! Each replica is a process of its own on its own ports (API and admin); the first keeps the
//! service's name (`orders`), the others are `orders-2`, `orders-3`, …. Replicas of a service
//! share its database, so its relays compete for one outbox and its consumers for one queue.
//! Gateway replicas are reached by the caller, round-robin ([`System::gateway_urls`](crate::System::gateway_urls));
//! every other replicated service gets a [`FrontDoor`]: one address (the service's URL, which
//! its callers are given) that spreads connections round-robin over the replicas and skips one
//! that refuses, as a Kubernetes Service spreads them over the ready pods.
//!
//! [`check`] refuses what would not behave as deployed: replicas of a service with a database
//! on SQLite (a file per process, not one shared database), gateway replicas without a shared
//! Redis, replicas of the payment provider (it plays one third party and keeps its state in
//! memory).
//!
//! # Example
//! ```
//! use shop_launcher::Database;
//! use shop_launcher::replicas::{self, ReplicasError};
//!
//! let wanted = replicas::parse("orders=3,inventory=2").unwrap();
//! assert_eq!(wanted["orders"], 3);
//! assert_eq!(
//!     replicas::check(&wanted, false, &Database::Sqlite),
//!     Err(ReplicasError::NeedsPostgres { service: "inventory", replicas: 2 })
//! );
//! let postgres = Database::postgres("postgres://postgres@127.0.0.1:5432/test", "shop");
//! assert_eq!(replicas::check(&wanted, false, &postgres), Ok(()));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::{Database, SERVICES, SERVICES_WITH_DATABASE};

/// Why replicas were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplicasError {
    /// `--replicas` is not a list of `service=N`.
    Syntax(String),
    /// Not one of the shop's services.
    UnknownService(String),
    /// A count of zero: every service needs a process.
    Zero(&'static str),
    /// The payment provider plays one third party, with its charges in memory.
    NotReplicable(&'static str),
    /// Several gateways without a shared Redis.
    NeedsRedis {
        /// The gateways asked for.
        replicas: usize,
    },
    /// Several replicas of a service with a database, on SQLite.
    NeedsPostgres {
        /// The service.
        service: &'static str,
        /// The replicas asked for.
        replicas: usize,
    },
}

impl fmt::Display for ReplicasError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax(s) => write!(f, "replicas {s:?}: expected `service=N,…`"),
            Self::UnknownService(s) => write!(
                f,
                "replicas of {s:?}: not a service (one of {})",
                SERVICES.join(", ")
            ),
            Self::Zero(s) => write!(f, "{s}=0: every service needs at least one process"),
            Self::NotReplicable(s) => write!(
                f,
                "{s} cannot have replicas: it plays one third party and keeps its charges in memory"
            ),
            Self::NeedsRedis { replicas } => write!(
                f,
                "{replicas} gateway replicas need a Redis (--redis URL): each would keep its own \
                 rate limits and idempotency keys, so a client would get {replicas} times its \
                 limit and a retry reaching another replica would place its order again"
            ),
            Self::NeedsPostgres { service, replicas } => write!(
                f,
                "{replicas} replicas of {service} need PostgreSQL (--database postgres): on \
                 SQLite each process would have a database file of its own instead of sharing \
                 one, as the replicas of a deployment share theirs"
            ),
        }
    }
}

impl std::error::Error for ReplicasError {}

/// Parses `service=N,…` (an empty string: no replicas); a service named twice takes the last
/// count.
pub fn parse(s: &str) -> Result<BTreeMap<&'static str, usize>, ReplicasError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, n) = part
            .split_once('=')
            .ok_or_else(|| ReplicasError::Syntax(part.into()))?;
        let service = SERVICES
            .into_iter()
            .find(|s| *s == name.trim())
            .ok_or_else(|| ReplicasError::UnknownService(name.trim().into()))?;
        let n = n
            .trim()
            .parse()
            .map_err(|_| ReplicasError::Syntax(part.into()))?;
        out.insert(service, n);
    }
    Ok(out)
}

/// Whether `replicas` can run: with a shared Redis for the gateways (`redis`), on `database`.
pub fn check(
    replicas: &BTreeMap<&'static str, usize>,
    redis: bool,
    database: &Database,
) -> Result<(), ReplicasError> {
    for (&service, &n) in replicas {
        if !SERVICES.contains(&service) {
            return Err(ReplicasError::UnknownService(service.into()));
        }
        if n == 0 {
            return Err(ReplicasError::Zero(service));
        }
        if n == 1 {
            continue;
        }
        if service == "payment-provider" {
            return Err(ReplicasError::NotReplicable(service));
        }
        if service == "gateway" && !redis {
            return Err(ReplicasError::NeedsRedis { replicas: n });
        }
        if SERVICES_WITH_DATABASE.contains(&service) && *database == Database::Sqlite {
            return Err(ReplicasError::NeedsPostgres {
                service,
                replicas: n,
            });
        }
    }
    Ok(())
}

/// The name of replica `index` (1-based) of `service`: the service's own for the first.
pub fn process_name(service: &'static str, index: usize) -> &'static str {
    if index <= 1 {
        service
    } else {
        // Process names are `&'static str` like the services'; a launch leaks these few bytes
        // once per replica.
        Box::leak(format!("{service}-{index}").into_boxed_str())
    }
}

/// One address in front of a service's replicas: each connection it accepts goes to the next
/// replica in turn, or to the one after when that one refuses (it is down or restarting).
/// Stops when dropped.
#[derive(Debug)]
pub struct FrontDoor {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

/// How long the front door tries one replica before it moves on to the next.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

impl FrontDoor {
    /// Listens on `addr` (port 0: a free one) for `replicas`.
    pub async fn bind(addr: SocketAddr, replicas: Vec<SocketAddr>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let replicas = Arc::new(replicas);
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let (replicas, next) = (replicas.clone(), next.clone());
                tokio::spawn(async move {
                    let first = next.fetch_add(1, Ordering::Relaxed);
                    let Some(mut outbound) = connect_any(&replicas, first).await else {
                        // Every replica is down: the caller sees the connection close and
                        // retries as it would against a Service without ready pods.
                        return;
                    };
                    let mut inbound = inbound;
                    let _ = inbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        Ok(Self { addr, task })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for FrontDoor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A connection to the first replica from `first` on (round the list) that accepts one.
async fn connect_any(replicas: &[SocketAddr], first: usize) -> Option<TcpStream> {
    for i in 0..replicas.len() {
        let addr = replicas[(first + i) % replicas.len()];
        if let Ok(Ok(stream)) =
            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await
        {
            let _ = stream.set_nodelay(true);
            return Some(stream);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend that answers every connection with its name and closes it.
    async fn backend(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s.write_all(name.as_bytes()).await;
            }
        });
        (addr, task)
    }

    async fn ask(door: &FrontDoor) -> String {
        let mut s = TcpStream::connect(door.local_addr()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn connections_go_round_robin_and_skip_a_replica_that_is_down() {
        let (a, _a) = backend("a").await;
        let (b, b_task) = backend("b").await;
        let door = FrontDoor::bind("127.0.0.1:0".parse().unwrap(), vec![a, b])
            .await
            .unwrap();
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(ask(&door).await);
        }
        seen.sort();
        assert_eq!(seen, ["a", "a", "b", "b"]);
        // `b` goes away (its listener closes): every connection reaches `a`.
        b_task.abort();
        let _ = b_task.await;
        for _ in 0..4 {
            assert_eq!(ask(&door).await, "a");
        }
    }

    #[test]
    fn replicas_parse_and_are_refused_where_they_would_not_behave_as_deployed() {
        let r = parse("orders=3, inventory=2,gateway=1").unwrap();
        assert_eq!((r["orders"], r["inventory"], r["gateway"]), (3, 2, 1));
        assert_eq!(parse("").unwrap(), BTreeMap::new());
        assert_eq!(
            parse("ordres=2"),
            Err(ReplicasError::UnknownService("ordres".into()))
        );
        assert!(matches!(parse("orders"), Err(ReplicasError::Syntax(_))));
        assert!(matches!(parse("orders=x"), Err(ReplicasError::Syntax(_))));

        let pg = Database::postgres("postgres://u@h/db", "shop");
        let sqlite = Database::Sqlite;
        assert_eq!(
            check(&parse("orders=0").unwrap(), true, &pg),
            Err(ReplicasError::Zero("orders"))
        );
        assert_eq!(
            check(&parse("payment-provider=2").unwrap(), true, &pg),
            Err(ReplicasError::NotReplicable("payment-provider"))
        );
        assert_eq!(
            check(&parse("gateway=2").unwrap(), false, &pg),
            Err(ReplicasError::NeedsRedis { replicas: 2 })
        );
        assert_eq!(check(&parse("gateway=2").unwrap(), true, &sqlite), Ok(()));
        let e = check(&parse("notifications=2").unwrap(), true, &sqlite).unwrap_err();
        assert_eq!(
            e,
            ReplicasError::NeedsPostgres {
                service: "notifications",
                replicas: 2
            }
        );
        assert!(e.to_string().contains("need PostgreSQL"), "{e}");
        assert_eq!(check(&parse("orders=1").unwrap(), false, &sqlite), Ok(()));
        assert_eq!(process_name("orders", 1), "orders");
        assert_eq!(process_name("orders", 3), "orders-3");
    }
}
