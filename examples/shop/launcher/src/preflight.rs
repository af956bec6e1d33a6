//! Before anything starts: RabbitMQ (and PostgreSQL, for `--database postgres`) must answer.
//!
//! Without this check a stopped broker showed up only after the services' own connection
//! timeouts, as "gateway exited during startup". Now the launcher connects to the server's port
//! first:
//! - it answers: for RabbitMQ, an AMQP login with `AMQP_URL`'s user, password and vhost follows,
//!   so wrong credentials are reported here too;
//! - it does not, and it is the default local server (a loopback address on the default port,
//!   5672 resp. 5432) and that server is installed: the launcher starts it the way the
//!   repository's CI script does (`rabbitmq-server -detached`, then waiting for the port and
//!   `rabbitmqctl await_startup`; `pg_ctlcluster --skip-systemctl-redirect <version> main
//!   start`, then waiting for the port) and goes on;
//! - otherwise: a [`PreflightError`] whose message is one line saying what does not answer and
//!   how to start it. Another address is never started by the launcher, since a server there
//!   is not its business (a second local node on another port, a remote broker).
//!
//! # Example
//! ```
//! use shop_launcher::preflight::Endpoint;
//!
//! let broker = Endpoint::parse("amqp://guest:guest@127.0.0.1:5672/%2f", 5672).unwrap();
//! assert_eq!(broker.address(), "127.0.0.1:5672");
//! assert_eq!(broker.path, "/");
//! assert!(broker.is_local_default(5672));
//! ```

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::{Instant, sleep, timeout};

/// How long a TCP connect may take before the server counts as not answering.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a local RabbitMQ may take to come up after `rabbitmq-server -detached`.
const RABBITMQ_START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a local PostgreSQL may take to come up after `pg_ctlcluster … start`.
const POSTGRES_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the launcher cannot go on: one line saying what does not answer and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreflightError {
    message: String,
}

impl PreflightError {
    fn new(message: impl Into<String>) -> Self {
        // One line whatever a source error contained.
        let message = message.into().replace(['\n', '\r'], " ");
        Self { message }
    }
}

impl fmt::Display for PreflightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PreflightError {}

/// What the check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// The server answered.
    Answering,
    /// The server did not answer; the launcher started the local one, which answers now.
    Started,
}

/// Where a server is, from its URL (`scheme://[user[:password]@]host[:port][/path][?query]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `amqp`, `postgres`, ….
    pub scheme: String,
    /// Host name or IP address (IPv6 without brackets); `localhost` when the URL names none.
    pub host: String,
    /// The URL's port, or the default port given to [`Endpoint::parse`].
    pub port: u16,
    /// The path, percent-decoded, without the leading `/` for a name and `/` when empty (for
    /// AMQP the vhost: `%2f` and no path both mean `/`).
    pub path: String,
}

impl Endpoint {
    /// Parses `url`; `default_port` when it names none.
    pub fn parse(url: &str, default_port: u16) -> Result<Endpoint, PreflightError> {
        let invalid = |why: &str| PreflightError::new(format!("{why} in URL {}", redact(url)));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| invalid("no scheme"))?;
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| invalid("unclosed `[`"))?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        let port = match port {
            None | Some("") => default_port,
            Some(p) => p.parse().map_err(|_| invalid("bad port"))?,
        };
        let path = percent_decode(path).ok_or_else(|| invalid("bad percent-encoding"))?;
        Ok(Endpoint {
            scheme: scheme.to_ascii_lowercase(),
            host: if host.is_empty() {
                "localhost".into()
            } else {
                host.to_owned()
            },
            port,
            path: if path.is_empty() { "/".into() } else { path },
        })
    }

    /// `host:port` (`[v6]:port`).
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether the host is this machine over loopback (`localhost`, `127.x.x.x`, `::1`).
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// Whether this is where the locally installed server listens by default: loopback and
    /// `default_port`. Only then may the launcher start that server.
    pub fn is_local_default(&self, default_port: u16) -> bool {
        self.is_loopback() && self.port == default_port
    }

    /// Whether something accepts TCP connections there within a few seconds.
    pub async fn answers(&self) -> bool {
        let target = (self.host.as_str(), self.port);
        matches!(
            timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await,
            Ok(Ok(_))
        )
    }

    async fn wait_answering(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.answers().await {
                return true;
            }
            sleep(Duration::from_millis(500)).await;
        }
        false
    }
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
        }
        None => url.to_owned(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// An installed program: on `PATH`, or in the sbin directories Debian puts server tools in
/// (not on a normal user's `PATH`).
pub fn installed(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Makes sure the broker of `amqp_url` answers and accepts the URL's login; starts the local
/// RabbitMQ if that is the one missing and it is installed (see the [module docs](self)).
pub async fn ensure_rabbitmq(amqp_url: &str) -> Result<Readiness, PreflightError> {
    let broker = Endpoint::parse(amqp_url, 5672)
        .map_err(|e| PreflightError::new(format!("AMQP_URL: {e}")))?;
    if !matches!(broker.scheme.as_str(), "amqp" | "amqps") {
        return Err(PreflightError::new(format!(
            "AMQP_URL {} is not an amqp:// or amqps:// URL",
            redact(amqp_url)
        )));
    }
    let address = broker.address();
    let mut readiness = Readiness::Answering;
    if !broker.answers().await {
        if !(broker.scheme == "amqp" && broker.is_local_default(5672)) {
            return Err(PreflightError::new(format!(
                "RabbitMQ is not answering on {address} (AMQP_URL): start the broker there, or \
                 point AMQP_URL at a running one (a local one: `rabbitmq-server -detached`, \
                 amqp://guest:guest@127.0.0.1:5672/%2f)"
            )));
        }
        let Some(server) = installed("rabbitmq-server") else {
            return Err(PreflightError::new(format!(
                "RabbitMQ is not answering on {address} (AMQP_URL) and rabbitmq-server is not \
                 installed: install it (`apt-get install rabbitmq-server`), or point AMQP_URL at \
                 a running broker"
            )));
        };
        eprintln!("RabbitMQ is not answering on {address}; starting the local broker…");
        start_rabbitmq(&broker, &server).await?;
        readiness = Readiness::Started;
    }
    amqp_login(amqp_url, &broker).await?;
    Ok(readiness)
}

async fn start_rabbitmq(broker: &Endpoint, server: &std::path::Path) -> Result<(), PreflightError> {
    let address = broker.address();
    // Its exit status is not telling (a node already booting makes it fail): the port is.
    let _ = Command::new(server)
        .arg("-detached")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .map_err(|e| {
            PreflightError::new(format!(
                "RabbitMQ is not answering on {address} and `{} -detached` failed: {e}",
                server.display()
            ))
        })?;
    let started = Instant::now();
    if !broker.wait_answering(RABBITMQ_START_TIMEOUT).await {
        return Err(PreflightError::new(format!(
            "started `rabbitmq-server -detached`, but {address} did not answer within {} s; see \
             the broker's log (/var/log/rabbitmq)",
            RABBITMQ_START_TIMEOUT.as_secs()
        )));
    }
    // The port opens before the broker accepts logins: wait for the application itself.
    if let Some(ctl) = installed("rabbitmqctl") {
        let left = RABBITMQ_START_TIMEOUT.saturating_sub(started.elapsed());
        let _ = timeout(
            left.max(Duration::from_secs(10)),
            Command::new(ctl)
                .arg("await_startup")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status(),
        )
        .await;
    }
    eprintln!("RabbitMQ started on {address}");
    Ok(())
}

/// Connects and logs in with the URL's user, password and vhost, then disconnects.
async fn amqp_login(amqp_url: &str, broker: &Endpoint) -> Result<(), PreflightError> {
    let refused = |why: String| {
        PreflightError::new(format!(
            "RabbitMQ on {} answers but the AMQP login (vhost {:?}) failed: {why}; check \
             AMQP_URL's user, password and vhost",
            broker.address(),
            broker.path
        ))
    };
    let props = lapin::ConnectionProperties::default()
        .with_connection_name("shop-launcher-preflight".into());
    match timeout(
        Duration::from_secs(10),
        lapin::Connection::connect(amqp_url, props),
    )
    .await
    {
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "preflight done".into()).await;
            Ok(())
        }
        Ok(Err(e)) => Err(refused(e.to_string())),
        Err(_) => Err(refused("no answer within 10 s".into())),
    }
}

/// The newest PostgreSQL cluster version with a `main` cluster (`/etc/postgresql/<v>/main`).
fn local_postgres_version() -> Option<String> {
    let mut versions: Vec<(u32, String)> = std::fs::read_dir("/etc/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.path().join("main").is_dir())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((name.split('.').next()?.parse().ok()?, name))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, name)| name)
}

/// Makes sure the PostgreSQL server of `url` answers; starts the local cluster if that is the
/// one missing and it is installed (see the [module docs](self)).
pub async fn ensure_postgres(url: &str) -> Result<Readiness, PreflightError> {
    let server =
        Endpoint::parse(url, 5432).map_err(|e| PreflightError::new(format!("--database: {e}")))?;
    let address = server.address();
    if server.answers().await {
        return Ok(Readiness::Answering);
    }
    if !server.is_local_default(5432) {
        return Err(PreflightError::new(format!(
            "PostgreSQL is not answering on {address} (--database): start it there, or name a \
             running server with --database postgres=postgres://user@host:port/db"
        )));
    }
    let (Some(ctl), Some(version)) = (installed("pg_ctlcluster"), local_postgres_version()) else {
        return Err(PreflightError::new(format!(
            "PostgreSQL is not answering on {address} (--database) and no local cluster is \
             installed (pg_ctlcluster, /etc/postgresql/<version>/main): install it (`apt-get \
             install postgresql`), or use --database sqlite"
        )));
    };
    eprintln!(
        "PostgreSQL is not answering on {address}; starting the local cluster {version}/main…"
    );
    let start = format!("pg_ctlcluster --skip-systemctl-redirect {version} main start");
    let status = Command::new(ctl)
        .args(["--skip-systemctl-redirect", &version, "main", "start"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .map_err(|e| PreflightError::new(format!("`{start}` failed: {e}")))?;
    if !status.success() {
        return Err(PreflightError::new(format!(
            "PostgreSQL is not answering on {address} and `{start}` failed ({status}); see \
             /var/log/postgresql"
        )));
    }
    if !server.wait_answering(POSTGRES_START_TIMEOUT).await {
        return Err(PreflightError::new(format!(
            "`{start}` ran, but {address} did not answer within {} s; see /var/log/postgresql",
            POSTGRES_START_TIMEOUT.as_secs()
        )));
    }
    eprintln!("PostgreSQL started on {address}");
    Ok(Readiness::Started)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_and_path() {
        let e = Endpoint::parse("amqp://guest:guest@127.0.0.1:5672/%2f", 5672).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("127.0.0.1", 5672, "/")
        );
        let e = Endpoint::parse("amqps://u:p@broker.example:5999/shop?heartbeat=5", 5671).unwrap();
        assert_eq!(
            (e.scheme.as_str(), e.host.as_str(), e.port, e.path.as_str()),
            ("amqps", "broker.example", 5999, "shop")
        );
        let e = Endpoint::parse("amqp://[::1]", 5672).unwrap();
        assert_eq!((e.address().as_str(), e.path.as_str()), ("[::1]:5672", "/"));
        assert!(e.is_local_default(5672));
        let e = Endpoint::parse("postgres://postgres@localhost/test", 5432).unwrap();
        assert_eq!(e.address(), "localhost:5432");
        assert!(e.is_local_default(5432));
        // A password containing `@` and `:`: the host is after the last `@`.
        let e = Endpoint::parse("postgres://u:p@ss:w@db.internal:6543/x", 5432).unwrap();
        assert_eq!(e.address(), "db.internal:6543");
        assert!(!e.is_loopback());
        assert!(Endpoint::parse("127.0.0.1:5672", 5672).is_err());
        assert!(Endpoint::parse("amqp://h:port/", 5672).is_err());
    }

    #[test]
    fn only_the_default_port_on_loopback_is_the_local_default() {
        for (url, local) in [
            ("amqp://g:g@127.0.0.1:5672/%2f", true),
            ("amqp://g:g@127.0.0.2:5672/%2f", true),
            ("amqp://g:g@127.0.0.1:5683/%2f", false),
            ("amqp://g:g@10.0.0.5:5672/%2f", false),
        ] {
            let e = Endpoint::parse(url, 5672).unwrap();
            assert_eq!(e.is_local_default(5672), local, "{url}");
        }
    }

    #[test]
    fn messages_never_show_the_password() {
        assert_eq!(
            redact("amqp://guest:secret@h:5672/%2f"),
            "amqp://guest:***@h:5672/%2f"
        );
        let e = Endpoint::parse("amqp://guest:secret@h:notaport/%2f", 5672).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    /// A loopback port nothing listens on (bound, then released).
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn a_broker_elsewhere_that_does_not_answer_is_one_line_and_quick() {
        let port = closed_port();
        let started = std::time::Instant::now();
        let e = ensure_rabbitmq(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
            .await
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
        assert!(
            e.contains("AMQP_URL") && e.contains("rabbitmq-server -detached"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        let e = ensure_postgres(&format!("postgres://postgres@127.0.0.1:{port}/test"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("127.0.0.1:{port}")) && e.contains("--database"),
            "{e}"
        );
    }

    /// The machine's RabbitMQ and PostgreSQL (`AMQP_URL`, or the local defaults).
    #[tokio::test]
    async fn the_running_servers_pass() {
        assert_eq!(
            ensure_rabbitmq(&crate::default_amqp_url()).await,
            Ok(Readiness::Answering)
        );
        assert_eq!(
            ensure_postgres("postgres://postgres@127.0.0.1:5432/test").await,
            Ok(Readiness::Answering)
        );
    }

    #[tokio::test]
    async fn a_wrong_password_is_reported_before_anything_starts() {
        let broker = Endpoint::parse(&crate::default_amqp_url(), 5672).unwrap();
        let url = format!("amqp://guest:not-the-password@{}/%2f", broker.address());
        let e = ensure_rabbitmq(&url).await.unwrap_err().to_string();
        assert!(e.contains("login") && e.contains("AMQP_URL"), "{e}");
        assert!(!e.contains("not-the-password"), "{e}");
    }
}
