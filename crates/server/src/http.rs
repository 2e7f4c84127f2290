//! HTTP/1.1 on the main TLS port, for clients written from the seed
//! (docs/protocol.md, "Version 1 over TLS"). The prototype ran its packet
//! protocol on the server's HTTPS port after an HTTP upgrade:
//!
//! ```text
//! GET /api2/json/admin/datastore/STORE/test-upload HTTP/1.1
//! Connection: upgrade
//! Upgrade: proxmox-backup-protocol-1
//! Cookie: PBSAuthCookie=TICKET
//! CSRFPreventionToken: TOKEN
//! ```
//!
//! answered `101 Switching Protocols`, then packets. hoard takes an API
//! token (`NAME:SECRET`) where the ticket goes, or in an `Authorization`
//! header (`Bearer NAME:SECRET` or `PBSAPIToken=NAME:SECRET`). The
//! prototype's login, `POST /api2/json/access/ticket` with `username` and
//! `password`, is offered for a token: the username is the token's name,
//! the password its secret, and the ticket handed back is the token.
//! Every other request goes to the HTTP API and web page ([`crate::api`]);
//! the packet protocol never starts without a valid token.

use std::net::SocketAddr;
use std::sync::Arc;

use hoard_auth::Principal;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};
use tracing::info;

use crate::Shared;
use crate::admission::{Pending, Slot};
use crate::connection::{self, Start};

/// Largest request head (and login body) read.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 4 * 1024;
const UPGRADE_PROTOCOL: &str = "proxmox-backup-protocol-1";

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// The version 1 upgrade, with the credential it carried.
    Upgrade {
        token: Option<String>,
    },
    /// The ticket login; the body follows.
    Ticket {
        body_len: usize,
    },
    Other {
        status: u16,
        message: String,
    },
    /// Anything else: served by [`crate::api`].
    Api,
}

struct Head {
    route: Route,
    /// Bytes of the head.
    len: usize,
}

/// Parses a complete request head; `Ok(None)` if more bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed HTTP request: {e}")),
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let method = req.method.unwrap_or("");
    let path = req.path.unwrap_or("");
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let route = match (method, segments.as_slice()) {
        ("GET", ["api2", "json", "admin", "datastore", _store, "test-upload"]) => {
            let upgrade =
                header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case(UPGRADE_PROTOCOL));
            let connection = header("connection").is_some_and(|c| {
                c.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            });
            if upgrade && connection {
                Route::Upgrade {
                    token: credential(header("authorization"), header("cookie")),
                }
            } else {
                Route::Other {
                    status: 400,
                    message: format!(
                        "this endpoint needs `Connection: upgrade` and `Upgrade: {UPGRADE_PROTOCOL}`"
                    ),
                }
            }
        }
        ("POST", ["api2", "json", "access", "ticket"]) => {
            let body_len = header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body_len > MAX_BODY {
                Route::Other {
                    status: 413,
                    message: format!("a login body is at most {MAX_BODY} bytes"),
                }
            } else {
                Route::Ticket { body_len }
            }
        }
        // The API, the web page and /metrics (hyper parses the request
        // again, with the connection's later ones).
        _ => Route::Api,
    };
    Ok(Some(Head { route, len }))
}

/// The token in an `Authorization` header or the `PBSAuthCookie` cookie.
fn credential(authorization: Option<&str>, cookie: Option<&str>) -> Option<String> {
    if let Some(a) = authorization {
        let a = a.trim();
        for prefix in ["Bearer ", "PBSAPIToken=", "PBSAPIToken "] {
            if let Some(t) = a.strip_prefix(prefix) {
                return Some(t.trim().to_string());
            }
        }
    }
    cookie?.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == "PBSAuthCookie").then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// The `username` and `password` of a login form.
fn login_fields(body: &[u8]) -> (String, String) {
    let mut user = String::new();
    let mut pass = String::new();
    for (k, v) in form_urlencoded::parse(body) {
        match &*k {
            "username" => user = v.into_owned(),
            "password" => pass = v.into_owned(),
            _ => {}
        }
    }
    (user, pass)
}

fn json_escape(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

async fn respond<W: AsyncWrite + Unpin>(w: &mut W, status: u16, body: &str) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = w.write_all(response.as_bytes()).await;
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}

async fn refuse<W: AsyncWrite + Unpin>(w: &mut W, peer: SocketAddr, status: u16, message: &str) {
    info!(%peer, "HTTP request refused ({status}): {message}");
    let body = format!("{{\"errors\":{}}}", json_escape(message));
    respond(w, status, &body).await;
}

async fn authenticate(
    shared: &Shared,
    token: String,
    peer: SocketAddr,
) -> Result<Principal, String> {
    let store = shared.tokens.clone();
    tokio::task::spawn_blocking(move || store.authenticate(&token))
        .await
        .map_err(|e| format!("internal error: {e}"))?
        .map_err(|e| crate::auth_message(&e, peer))
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve<R, W>(
    mut reader: BufReader<R>,
    mut w: W,
    peer: SocketAddr,
    mut pending: Pending,
    deadline: Instant,
    slot: Slot,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = Vec::with_capacity(1024);
    let head = loop {
        match parse_head(&buf) {
            Ok(Some(head)) => break head,
            Ok(None) if buf.len() >= MAX_HEAD => {
                return refuse(&mut w, peer, 400, "request head too large").await;
            }
            Ok(None) => {}
            Err(e) => return refuse(&mut w, peer, 400, &e).await,
        }
        let mut more = [0u8; 2048];
        let room = (MAX_HEAD - buf.len()).min(more.len());
        let read = tokio::select! {
            _ = pending.evicted() => {
                info!(%peer, "connection closed: evicted before authenticating by newer connections");
                return;
            }
            r = timeout_at(deadline, reader.read(&mut more[..room])) => r,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => buf.extend_from_slice(&more[..n]),
            Err(_) => {
                return refuse(&mut w, peer, 408, "no complete request within the timeout").await;
            }
        }
    };
    if head.route == Route::Api {
        // Authenticated per request from here on; the connection counts
        // against the HTTP connections (in all and per address), no
        // longer as a handshake.
        let Some(_http_slot) = shared.web.http_connections.take(peer.ip().into()) else {
            return refuse(
                &mut w,
                peer,
                503,
                "too many HTTP connections (from this address, or in all); try again",
            )
            .await;
        };
        drop(pending);
        let reader = std::io::Cursor::new(buf).chain(reader);
        let io = tokio::io::join(reader, w);
        return crate::api::serve(io, peer, shared, stop).await;
    }
    let rest = buf.split_off(head.len);
    match head.route {
        Route::Api => {}
        Route::Other { status, message } => refuse(&mut w, peer, status, &message).await,
        Route::Ticket { body_len } => {
            let mut body = rest;
            body.truncate(body_len);
            if body.len() < body_len {
                let mut tail = vec![0u8; body_len - body.len()];
                if timeout_at(deadline, reader.read_exact(&mut tail))
                    .await
                    .is_err()
                {
                    return refuse(&mut w, peer, 408, "no complete request within the timeout")
                        .await;
                }
                body.extend_from_slice(&tail);
            }
            let (user, pass) = login_fields(&body);
            let token = format!("{user}:{pass}");
            match authenticate(&shared, token.clone(), peer).await {
                Ok(p) => {
                    info!(%peer, principal = %p.name, "ticket login");
                    let body = format!(
                        "{{\"data\":{{\"username\":{},\"ticket\":{},\"CSRFPreventionToken\":\"hoard\"}}}}",
                        json_escape(&p.name),
                        json_escape(&token)
                    );
                    respond(&mut w, 200, &body).await;
                }
                Err(e) => refuse(&mut w, peer, 401, &e).await,
            }
        }
        Route::Upgrade { token } => {
            let Some(token) = token else {
                return refuse(
                    &mut w,
                    peer,
                    401,
                    "the upgrade needs a token (PBSAuthCookie or Authorization)",
                )
                .await;
            };
            let principal = match authenticate(&shared, token, peer).await {
                Ok(p) => Arc::new(p),
                Err(e) => return refuse(&mut w, peer, 401, &e).await,
            };
            let principal_slot = match shared.admission.enter(&principal.name) {
                Ok(s) => s,
                Err(reason) => return refuse(&mut w, peer, 429, &reason).await,
            };
            let switching = format!(
                "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {UPGRADE_PROTOCOL}\r\n\r\n"
            );
            if w.write_all(switching.as_bytes()).await.is_err() || w.flush().await.is_err() {
                return;
            }
            drop(pending);
            info!(%peer, principal = %principal.name, "version 1 session over TLS");
            // Packets the client sent right behind its request come first.
            let reader = std::io::Cursor::new(rest).chain(reader);
            let start = Start::V1 {
                principal,
                slot: principal_slot,
            };
            connection::run(reader, w, peer, start, slot, shared, stop).await;
        }
    }
}

/// Everything [`serve`] parses of a peer's bytes, for the fuzz target.
pub(crate) fn fuzz(data: &[u8]) {
    if let Ok(Some(head)) = parse_head(data) {
        assert!(head.len <= data.len());
    }
    let text = String::from_utf8_lossy(data);
    let _ = credential(Some(&text), Some(&text));
    let _ = login_fields(data);
    crate::api::fuzz(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prototype_upgrade_parses() {
        let req = b"GET /api2/json/admin/datastore/store1/test-upload HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: proxmox-backup-protocol-1\r\ncookie: PBSAuthCookie=ci%3Aabc; other=1\r\nCSRFPreventionToken: t\r\n\r\n\x00\x07";
        let head = parse_head(req).unwrap().unwrap();
        assert_eq!(
            head.route,
            Route::Upgrade {
                token: Some("ci:abc".into())
            }
        );
        assert_eq!(req.len() - head.len, 2, "packets after the head are kept");
        assert!(parse_head(&req[..40]).unwrap().is_none());
    }

    #[test]
    fn other_requests_are_refused() {
        let h = parse_head(b"GET /api2/json/admin/datastore/s/test-upload HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(matches!(h.route, Route::Other { status: 400, .. }));
        let h = parse_head(b"GET /etc/passwd HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.route, Route::Api);
        assert!(parse_head(b"\x16\x03\x01garbage\r\n\r\n").is_err());
        let h =
            parse_head(b"POST /api2/json/access/ticket HTTP/1.1\r\ncontent-length: 99999\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(matches!(h.route, Route::Other { status: 413, .. }));
    }

    #[test]
    fn credentials_and_login_fields() {
        assert_eq!(credential(Some("Bearer a:b"), None).as_deref(), Some("a:b"));
        assert_eq!(
            credential(Some("PBSAPIToken=a:b"), Some("PBSAuthCookie=x:y")).as_deref(),
            Some("a:b")
        );
        assert_eq!(
            credential(None, Some("PBSAuthCookie=x%3Ay")).as_deref(),
            Some("x:y")
        );
        assert_eq!(credential(None, Some("a=b")), None);
        assert_eq!(
            login_fields(b"username=ci&password=s%2Bx&realm=pam"),
            ("ci".to_string(), "s+x".to_string())
        );
    }
}
