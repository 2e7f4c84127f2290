//! An HTTPS client for the server's API (docs/api.md): requests with a
//! token or a session cookie, answers as status and JSON.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder};
use serde_json::Value;

use super::{Server, state_dir};

/// How a request authenticates.
#[derive(Clone, Debug)]
pub enum Auth {
    None,
    Token(String),
    /// A session cookie value, and the CSRF token to send (if any).
    Session {
        cookie: String,
        csrf: Option<String>,
    },
}

pub struct Api {
    pub base: String,
    client: Client,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error` of a JSON error answer.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error in {}", String::from_utf8_lossy(&self.body)))
            .to_string()
    }

    #[track_caller]
    pub fn expect(&self, status: u16) -> &Answer {
        assert_eq!(
            self.status.as_u16(),
            status,
            "answer: {}",
            String::from_utf8_lossy(&self.body)
        );
        self
    }
}

impl Api {
    pub fn new(server: &Server) -> Api {
        // The test server's certificate is self-signed; the packet tests
        // pin its fingerprint, these only need the API's answers.
        let client = Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Api {
            base: format!("https://{}", server.addr),
            client,
        }
    }

    fn send(&self, req: RequestBuilder, auth: &Auth) -> Answer {
        let req = match auth {
            Auth::None => req,
            Auth::Token(t) => req.bearer_auth(t),
            Auth::Session { cookie, csrf } => {
                let req = req.header("cookie", format!("__Host-hoard_session={cookie}"));
                match csrf {
                    Some(c) => req.header("x-csrf-token", c),
                    None => req,
                }
            }
        };
        let resp = req.send().unwrap();
        Answer {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: resp.bytes().unwrap().to_vec(),
        }
    }

    pub fn get(&self, path: &str, auth: &Auth) -> Answer {
        self.send(self.client.get(format!("{}{path}", self.base)), auth)
    }

    pub fn post(&self, path: &str, auth: &Auth, body: &Value) -> Answer {
        self.post_raw(path, auth, serde_json::to_vec(body).unwrap())
    }

    pub fn post_raw(&self, path: &str, auth: &Auth, body: Vec<u8>) -> Answer {
        self.post_with(path, auth, body, &[("content-type", "application/json")])
    }

    /// A POST with exactly these extra headers.
    pub fn post_with(
        &self,
        path: &str,
        auth: &Auth,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = self.client.post(format!("{}{path}", self.base)).body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req, auth)
    }

    /// Logs in; the session's cookie and CSRF token.
    pub fn login(&self, user: &str, password: &str) -> Auth {
        let a = self.post(
            "/api/v1/login",
            &Auth::None,
            &serde_json::json!({"user": user, "password": password}),
        );
        a.expect(200);
        let cookie = a
            .headers
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let value = cookie
            .strip_prefix("__Host-hoard_session=")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        Auth::Session {
            cookie: value,
            csrf: Some(a.json()["csrf"].as_str().unwrap().to_string()),
        }
    }

    /// Waits until task `id` ends; its final state.
    pub fn wait_task(&self, id: &str, auth: &Auth) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let t = self.get(&format!("/api/v1/tasks/{id}"), auth);
            t.expect(200);
            let t = t.json();
            if t["state"] != "running" {
                return t;
            }
            assert!(Instant::now() < deadline, "task {id} still runs: {t}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Adds a web user to the server whose temp dir is `dir`.
pub fn add_user(dir: &Path, name: &str, role: &str, paths: &[&str], password: &str) {
    let mut args = vec!["add", name, "--role", role];
    for p in paths {
        args.extend(["--path", p]);
    }
    let out = user_command(dir, &args, Some(password));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `hoard user …` on the server whose temp dir is `dir`.
pub fn user_command(dir: &Path, args: &[&str], password: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hoard"));
    cmd.arg("user")
        .args(args)
        .arg("--state-dir")
        .arg(state_dir(dir));
    if let Some(p) = password {
        cmd.env("HOARD_PASSWORD", p);
    }
    cmd.output().unwrap()
}
