//! Test support for fault tests that must never touch the machine's shared services.
//!
//! A fault test restarts a broker or a database, or kills a process, in the middle of its work.
//! Doing that to the RabbitMQ or PostgreSQL every other test uses would break them, so each such
//! test starts a server of its own on free loopback ports, with its own directories, and stops
//! it (and removes its files) when the handle is dropped, whatever happened in the test:
//!
//! - [`RabbitNode`]: a RabbitMQ node with its own node name, AMQP and distribution ports;
//!   `stop`/`start` for a full restart, `stop_app`/`start_app` for the broker application only,
//!   and `close_all_connections` to force every client off at once.
//! - [`PgCluster`]: a PostgreSQL cluster made with `initdb` and run with `pg_ctl` on its own port
//!   (trust auth, database `test`); `restart`, `stop`, `start`, and `kill` for a crash.
//!
//! - [`RedisServer`]: a `redis-server` without persistence on its own port; `kill`/`start`
//!   for a crash and a restart on the same port, `pause`/`resume` for a server that hangs.
//!
//! - [`TestCa`]: a throwaway certificate authority issuing leaf certificates for TLS and mTLS
//!   tests (host names, IPs, SPIFFE-style URIs, expired or not-yet-valid ones).
//!
//! Both run the servers from Debian's packages (`rabbitmq-server`, `postgresql`), as root
//! dropping to the servers' own users, as CI machines of this project run.
//!
//! ```no_run
//! let node = chassis_testkit::RabbitNode::new("example");
//! node.start();
//! let url = node.url(); // amqp://guest:guest@127.0.0.1:<port>/%2f
//! node.stop_app();
//! node.start_app();
//! # let _ = url;
//! ```
//!
//! The crate is not published: it is a dev-dependency of the workspace's own tests.

mod net;
mod pki;
mod postgres;
mod process;
mod rabbit;
mod redis;

pub use net::{free_port, port_open, wait_port};
pub use pki::{Leaf, LeafBuilder, TestCa};
pub use postgres::PgCluster;
pub use process::ChildGuard;
pub use rabbit::RabbitNode;
pub use redis::RedisServer;
