//! Loopback ports.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Ports [`free_port`] hands out: below Linux's default ephemeral range (32768-60999), from
/// which the kernel picks both `bind(0)` ports and the local ports of outgoing connections.
/// A port found free there and released can be taken by any connection the test (or the
/// broker, or another service) opens before the server binds it; a port below the range can
/// only be taken by a server asking for it by number.
const PORTS: std::ops::Range<u32> = 20_000..32_000;

/// Where the next search starts: a per-process offset (so two processes rarely walk the same
/// ports) plus a counter (so one process never hands out a port twice while it stays free).
static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

/// A free loopback port: one that could be bound just now and that this process has not
/// handed out before, taken below the ephemeral range so no outgoing connection takes it
/// before the server that asked for it binds it.
pub fn free_port() -> u16 {
    let span = PORTS.end - PORTS.start;
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let seed = std::process::id().wrapping_mul(7_919).wrapping_add(nanos) % span;
        let _ = NEXT.compare_exchange(u32::MAX, seed, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..span {
        let port = PORTS.start + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = u16::try_from(port).expect("the range holds ports");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Whether something accepts TCP connections on `127.0.0.1:port`.
pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Waits until `port` is open (`true`) or closed (`false`), for at most `within`; returns
/// whether it got there.
pub fn wait_port(port: u16, open: bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if port_open(port) == open {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_never_handed_out_twice() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            ports.len(),
            "a port handed out twice: {ports:?}"
        );
        assert!(
            ports.iter().all(|p| PORTS.contains(&u32::from(*p))),
            "{ports:?}"
        );
        // Handed out, yet bindable: free_port does not keep them.
        TcpListener::bind(("127.0.0.1", ports[0])).unwrap();
    }
}
