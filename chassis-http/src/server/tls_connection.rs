//! The TLS side of one accepted connection: the handshake (in the connection's own task, within
//! the connection's first-request deadline), the client's verified identity, and the answer to
//! a client that speaks plain HTTP to the TLS port.
//!
//! Before the handshake the server peeks at the connection's first byte. A TLS connection
//! starts with a handshake record (content type 22, `0x16`); an HTTP request starts with a
//! method's ASCII letter. For the latter the server reads the request head, answers
//! `400 Bad Request` in plain HTTP/1.1 with the chassis JSON error body saying the port speaks
//! HTTPS (nginx answers the same way), and closes the connection; without this the client
//! would see its connection reset by a failed handshake and no hint why.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::connections::Registration;
use crate::error::ApiError;
use crate::tls::peer::PeerIdentity;
use crate::tls::server::ServerTls;

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;

/// Most bytes of a plain HTTP request read before answering it.
const PLAIN_HEAD_LIMIT: usize = 8 * 1024;

/// How long the answer to a plain HTTP request waits for the client to close after it.
const PLAIN_LINGER: Duration = Duration::from_secs(1);

/// A connection after its handshake, with the verified client identity if the client
/// presented a certificate.
pub(super) struct Accepted {
    pub(super) stream: TlsStream<TcpStream>,
    pub(super) peer: Option<PeerIdentity>,
}

/// Does the handshake of `stream`, or answers a plain HTTP request; `None` if the connection
/// is done (plain HTTP answered, handshake failed, `deadline` passed first, or shutdown began
/// before the handshake completed).
pub(super) async fn accept(
    stream: TcpStream,
    tls: &Arc<ServerTls>,
    deadline: &mut Pin<Box<dyn hyper::rt::Sleep>>,
    tracked: &Registration,
) -> Option<Accepted> {
    let handshake = async {
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(1..) if first[0] == TLS_HANDSHAKE => {}
            Ok(1..) => {
                answer_plain_http(stream).await;
                return None;
            }
            // Closed before sending anything, or failed.
            Ok(0) | Err(_) => return None,
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
        let stream = match acceptor.accept(stream).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(target: "chassis_http::server", %error, "TLS handshake failed");
                return None;
            }
        };
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| match PeerIdentity::from_certificate(leaf.clone().into_owned()) {
                Ok(peer) => Some(peer),
                Err(error) => {
                    tracing::warn!(target: "chassis_http::server", %error, "client certificate verified but its names are unreadable");
                    None
                }
            });
        Some(Accepted { stream, peer })
    };
    tokio::select! {
        accepted = handshake => accepted,
        () = deadline.as_mut() => {
            tracing::debug!(
                target: "chassis_http::server",
                "no TLS handshake within the header read timeout; closing the connection"
            );
            None
        }
        // No request in flight yet: nothing to drain.
        () = tracked.shutting_down() => None,
    }
}

/// The chassis's answer to plain HTTP on the TLS port, as written on the wire.
fn plain_http_answer() -> Vec<u8> {
    let json = ApiError::from_status(
        StatusCode::BAD_REQUEST,
        "this port speaks HTTPS: the request was sent as plain HTTP; use https://",
    )
    .to_json();
    let mut answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        json.len()
    )
    .into_bytes();
    answer.extend_from_slice(&json);
    answer
}

/// Reads the plain request's head (so that closing does not reset the answer away), answers
/// 400 and closes, giving the client a moment to read the answer and close first.
#[cold]
async fn answer_plain_http(mut stream: TcpStream) {
    tracing::debug!(
        target: "chassis_http::server",
        "plain HTTP on the TLS port: answered 400"
    );
    let mut buf = vec![0u8; PLAIN_HEAD_LIMIT];
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
        if buf[..filled].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    if stream.write_all(&plain_http_answer()).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    // Whatever else the client sends (a body) is discarded until it closes.
    let _ = tokio::time::timeout(PLAIN_LINGER, async {
        while let Ok(1..) = stream.read(&mut buf).await {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_http_answer_is_a_400_with_the_json_body() {
        let answer = plain_http_answer();
        let text = std::str::from_utf8(&answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "bad_request");
        assert!(json["error"]["message"].as_str().unwrap().contains("HTTPS"));
    }
}
