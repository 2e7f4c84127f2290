//! Who is calling: an API token in `Authorization`, or a user's session
//! cookie (with its CSRF token on every change); and the login, logout
//! and `me` endpoints.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hoard_auth::users::USER_PREFIX;
use hoard_auth::{AuthError, Principal, Role};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tracing::info;

use super::{ApiError, ApiResult, Peer, parse_body};
use crate::Shared;

/// `__Host-`: browsers take the cookie only from a secure origin, for
/// the whole host, never set by a sibling domain.
pub(crate) const COOKIE: &str = "__Host-hoard_session";
/// Failed logins from one address within [`FAILURE_WINDOW`] before its
/// logins are refused until the window ends.
const MAX_FAILURES: u32 = 5;
/// Failed logins against one user within [`FAILURE_WINDOW`] (from any
/// number of addresses) before that user's logins are refused until the
/// window ends. Higher than per address: it also locks the real user out.
const MAX_USER_FAILURES: u32 = 20;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How long a login waits for a place among the logins being checked.
const LOGIN_QUEUE: Duration = Duration::from_secs(10);
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// The authenticated caller of a request.
pub(crate) struct Caller {
    pub principal: Arc<Principal>,
    /// The session's id and CSRF token, when a user's session called.
    pub session: Option<(String, String)>,
}

impl Caller {
    /// The name shown for the caller: a token's name, or a user's.
    pub fn display_name(&self) -> &str {
        let n = &self.principal.name;
        if self.session.is_some() {
            n.strip_prefix(USER_PREFIX).unwrap_or(n)
        } else {
            n
        }
    }

    pub fn is_admin(&self) -> bool {
        self.principal.role == Role::Admin
    }

    pub fn require_admin(&self, what: &str) -> ApiResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "{} (role {}) may not {what}: it takes the admin role",
                self.display_name(),
                self.principal.role
            )))
        }
    }
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

fn bearer(headers: &HeaderMap) -> Option<Result<&str, ApiError>> {
    let value = headers.get(header::AUTHORIZATION)?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().strip_prefix("Bearer "))
        .map(str::trim);
    Some(token.ok_or_else(|| {
        ApiError::unauthorized("the Authorization header takes `Bearer NAME:SECRET`")
    }))
}

fn auth_failure(e: AuthError, peer: &Peer) -> ApiError {
    ApiError::unauthorized(crate::auth_message(&e, peer.0))
}

impl FromRequestParts<Arc<Shared>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> ApiResult<Caller> {
        let peer = parts
            .extensions
            .get::<Peer>()
            .copied()
            .ok_or_else(|| ApiError::internal("a request", "no peer address"))?;
        if let Some(token) = bearer(&parts.headers) {
            let token = token?.to_string();
            let store = shared.tokens.clone();
            let principal = super::blocking(move || {
                store
                    .authenticate(&token)
                    .map_err(|e| auth_failure(e, &peer))
            })
            .await?;
            return Ok(Caller {
                principal: Arc::new(principal),
                session: None,
            });
        }
        let Some(id) = cookie_value(&parts.headers, COOKIE) else {
            return Err(ApiError::unauthorized(
                "log in, or send an API token (Authorization: Bearer NAME:SECRET)",
            ));
        };
        let ended = || ApiError::unauthorized("your session has ended: log in again");
        let view = shared.web.sessions.get(id).ok_or_else(ended)?;
        // The user as the file says now: removed, or a new password, ends
        // the session; a new role holds at once.
        let users = shared.users.clone();
        let (name, stamp) = (view.user.clone(), view.stamp);
        let current = super::blocking(move || Ok(users.current(&name, &stamp))).await?;
        let user = match current {
            Ok(u) => u,
            Err(AuthError::LoginFailed) => {
                shared.web.sessions.remove(id);
                return Err(ended());
            }
            Err(e) => return Err(auth_failure(e, &peer)),
        };
        if !matches!(parts.method, Method::GET | Method::HEAD) {
            let sent = parts
                .headers
                .get(CSRF_HEADER)
                .map(HeaderValue::as_bytes)
                .unwrap_or_default();
            if !bool::from(sent.ct_eq(view.csrf.as_bytes())) {
                return Err(ApiError::forbidden(
                    "missing or wrong X-CSRF-Token: a change needs the token login and /api/v1/me return",
                ));
            }
        }
        Ok(Caller {
            principal: Arc::new(user.principal),
            session: Some((id.to_string(), view.csrf)),
        })
    }
}

/// Failed logins by address and by user. Every login counts as failed
/// from the moment it is asked (so parallel guesses count at once) and is
/// given back if it succeeds (so a good login does not wipe out bad
/// ones). After [`MAX_FAILURES`] in a minute from one address, or
/// [`MAX_USER_FAILURES`] against one user, further logins are refused
/// until the minute ends: guessing runs at a few passwords a minute, not
/// at Argon2id's speed.
#[derive(Default)]
pub(crate) struct Failures {
    map: Mutex<HashMap<FailureKey, (u32, Instant)>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FailureKey {
    Address(super::slots::AddressKey),
    User(String),
}

impl Failures {
    fn keys(ip: IpAddr, user: &str) -> [(FailureKey, u32); 2] {
        [
            (FailureKey::Address(ip.into()), MAX_FAILURES),
            (FailureKey::User(user.to_string()), MAX_USER_FAILURES),
        ]
    }

    /// Counts a login of `user` from `ip` as failed, or `Err(wait)` if
    /// either is backing off (nothing counted then).
    fn attempt(&self, ip: IpAddr, user: &str) -> Result<(), Duration> {
        let mut map = self.map.lock().expect("failures lock");
        if map.len() >= 100_000 {
            map.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        let keys = Failures::keys(ip, user);
        for (key, max) in &keys {
            if let Some((n, since)) = map.get(key) {
                let age = since.elapsed();
                if *n >= *max && age < FAILURE_WINDOW {
                    return Err(FAILURE_WINDOW.saturating_sub(age));
                }
            }
        }
        for (key, _) in keys {
            let e = map.entry(key).or_insert((0, Instant::now()));
            if e.1.elapsed() >= FAILURE_WINDOW {
                *e = (0, Instant::now());
            }
            e.0 += 1;
        }
        Ok(())
    }

    /// Gives back what [`Failures::attempt`] counted, for a login that
    /// succeeded.
    fn succeeded(&self, ip: IpAddr, user: &str) {
        let mut map = self.map.lock().expect("failures lock");
        for (key, _) in Failures::keys(ip, user) {
            if let Some(e) = map.get_mut(&key) {
                e.0 = e.0.saturating_sub(1);
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    user: String,
    password: String,
}

fn session_cookie(id: &str, max_age: u64) -> HeaderValue {
    let v = format!("{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}");
    HeaderValue::from_str(&v).expect("a cookie of hex digits is a header value")
}

pub(crate) async fn login(
    State(shared): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let Login { user, password } = parse_body(&body?)?;
    // No user has a name a token could not have: anything else is
    // refused at once (it tells nothing of who exists), and never kept
    // as a key of the backoff.
    if hoard_auth::tokens::check_name(&user).is_err() {
        return Err(auth_failure(AuthError::LoginFailed, &peer));
    }
    let failures = &shared.web.failed_logins;
    if let Err(wait) = failures.attempt(peer.0.ip(), &user) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many failed logins from your address or for this user: try again in {} s",
                wait.as_secs() + 1
            ),
        ));
    }
    let permit = tokio::time::timeout(LOGIN_QUEUE, shared.web.logins.clone().acquire_owned()).await;
    let Ok(Ok(permit)) = permit else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many logins at once: try again in a moment",
        ));
    };
    let users = shared.users.clone();
    let name = user.clone();
    // The place among the logins goes with the work: a client that hangs
    // up drops this handler, never the Argon2id it started.
    let checked = super::blocking(move || {
        let _permit = permit;
        Ok(users.login(&name, &password))
    })
    .await?;
    let session = match checked {
        Ok(s) => s,
        Err(e) => {
            info!(peer = %peer.0, user = ?user, "login refused: {e}");
            return Err(auth_failure(e, &peer));
        }
    };
    failures.succeeded(peer.0.ip(), &user);
    info!(peer = %peer.0, user = ?user, "logged in");
    let (id, view) = shared.web.sessions.create(&user, session.stamp);
    let body = serde_json::json!({
        "user": user,
        "role": session.principal.role.as_str(),
        "csrf": view.csrf,
    });
    let mut response = axum::Json(body).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&id, super::sessions::LIFETIME.as_secs()),
    );
    Ok(response)
}

pub(crate) async fn logout(State(shared): State<Arc<Shared>>, caller: Caller) -> Response {
    if let Some((id, _)) = &caller.session {
        shared.web.sessions.remove(id);
    }
    let mut response = axum::Json(serde_json::json!({})).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session_cookie("", 0));
    response
}

pub(crate) async fn me(caller: Caller) -> Response {
    let p = &caller.principal;
    let body = serde_json::json!({
        "name": caller.display_name(),
        "kind": if caller.session.is_some() { "user" } else { "token" },
        "role": p.role.as_str(),
        "paths": p.scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "csrf": caller.session.as_ref().map(|(_, csrf)| csrf),
        "may": {
            "maintain": p.role != Role::Reader,
            "admin": p.role == Role::Admin,
            "server": super::sees_server_wide(p),
        },
    });
    axum::Json(body).into_response()
}

/// The cookie, Authorization and login-body parsing, for the fuzz target.
pub(crate) fn fuzz(data: &[u8]) {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(data) {
        h.insert(header::COOKIE, v.clone());
        h.insert(header::AUTHORIZATION, v);
    }
    let _ = cookie_value(&h, COOKIE);
    let _ = bearer(&h);
    let _ = parse_body::<Login>(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_logins_back_off_per_address_and_user() {
        let f = Failures::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        // A good login in between gives back only its own count.
        for _ in 0..MAX_FAILURES {
            assert!(f.attempt(a, "mallory").is_ok());
            f.succeeded(a, "mallory");
            assert!(f.attempt(a, "alice").is_ok());
        }
        assert!(f.attempt(a, "mallory").is_err(), "a backs off");
        assert!(f.attempt(b, "bob").is_ok(), "b does not");
        // Many addresses against one user.
        let g = Failures::default();
        for i in 0..MAX_USER_FAILURES {
            let ip: IpAddr = format!("10.1.0.{i}").parse().unwrap();
            assert!(g.attempt(ip, "admin").is_ok());
        }
        assert!(g.attempt("10.2.0.1".parse().unwrap(), "admin").is_err());
        assert!(g.attempt("10.2.0.1".parse().unwrap(), "other").is_ok());
    }

    #[test]
    fn cookies_and_bearer_tokens_parse() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-hoard_session=abc; b=2"),
        );
        assert_eq!(cookie_value(&h, COOKIE), Some("abc"));
        assert_eq!(cookie_value(&h, "hoard_session"), None);
        assert_eq!(cookie_value(&h, "c"), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer ci:secret"),
        );
        assert_eq!(bearer(&h).unwrap().unwrap(), "ci:secret");
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic x"));
        assert!(bearer(&h).unwrap().is_err());
        let c = session_cookie("abc", 60);
        let c = c.to_str().unwrap();
        for part in ["__Host-", "Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(c.contains(part), "{c}");
        }
    }
}
