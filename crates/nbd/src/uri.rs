//! NBD URIs, as the NBD project's `doc/uri.md` writes them:
//! `nbd://HOST[:PORT]/EXPORT` and `nbd+unix:///EXPORT?socket=PATH`, with
//! hoard's two extra query parameters: `bitmap=NAME`, a dirty bitmap to
//! read through the `qemu:dirty-bitmap:NAME` meta context (the blocks
//! written since the previous backup), and `new-bitmap=NAME`, the bitmap
//! the operator started at this backup's point in time (which the next
//! backup will read; `docs/vm-backup.md`).

use std::path::PathBuf;

use crate::error::{Error, Result};

/// The port NBD servers listen on unless told otherwise.
pub const DEFAULT_PORT: u16 = 10809;

/// Where an export is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

/// A parsed NBD URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    pub endpoint: Endpoint,
    /// The export name ("" is the server's default export).
    pub export: String,
    pub bitmap: Option<String>,
    pub new_bitmap: Option<String>,
}

/// Whether `s` is meant as an NBD URI (so that a file of that name is
/// never taken for one, nor the other way round).
pub fn is_nbd_uri(s: &str) -> bool {
    ["nbd://", "nbd+unix://", "nbds://", "nbds+unix://"]
        .iter()
        .any(|p| s.starts_with(p))
}

fn bad(uri: &str, why: &str) -> Error {
    Error::Uri(format!("{uri}: {why}"))
}

/// `%XX` escapes decoded; anything else is kept.
fn percent_decode(s: &str, uri: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(uri, "a % not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(uri, "not UTF-8 once decoded"))
}

impl NbdUri {
    pub fn parse(uri: &str) -> Result<NbdUri> {
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| bad(uri, "not an NBD URI"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let export = percent_decode(path, uri)?;
        if export.len() > crate::wire::MAX_STRING {
            return Err(bad(uri, "an export name over 4096 bytes"));
        }
        let mut socket = None;
        let mut bitmap = None;
        let mut new_bitmap = None;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            if pair.is_empty() {
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v, uri)?;
            match k {
                "socket" => socket = Some(PathBuf::from(v)),
                "bitmap" | "new-bitmap" if v.is_empty() || v.len() > 1000 => {
                    return Err(bad(uri, "an empty or overlong bitmap name"));
                }
                "bitmap" => bitmap = Some(v),
                "new-bitmap" => new_bitmap = Some(v),
                other => return Err(bad(uri, &format!("unknown parameter {other:?}"))),
            }
        }
        let endpoint = match scheme {
            "nbd" => {
                if socket.is_some() {
                    return Err(bad(uri, "socket= is for nbd+unix://"));
                }
                let (host, port) = split_host_port(authority, uri)?;
                Endpoint::Tcp { host, port }
            }
            "nbd+unix" => {
                if !authority.is_empty() {
                    return Err(bad(uri, "nbd+unix:// takes no host"));
                }
                Endpoint::Unix(socket.ok_or_else(|| bad(uri, "nbd+unix:// needs ?socket=PATH"))?)
            }
            "nbds" | "nbds+unix" => {
                return Err(bad(
                    uri,
                    "NBD over TLS is not supported; export over a Unix socket or a trusted network",
                ));
            }
            other => return Err(bad(uri, &format!("unknown scheme {other:?}"))),
        };
        Ok(NbdUri {
            endpoint,
            export,
            bitmap,
            new_bitmap,
        })
    }
}

fn split_host_port(authority: &str, uri: &str) -> Result<(String, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| bad(uri, "an IPv6 address without its ]"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad(uri, "no host"));
    }
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| bad(uri, "a port that is not a number"))?,
        None => DEFAULT_PORT,
    };
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_forms() {
        let u = NbdUri::parse("nbd://127.0.0.1:10810/disk0").unwrap();
        assert_eq!(
            u.endpoint,
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 10810
            }
        );
        assert_eq!(u.export, "disk0");
        let u = NbdUri::parse("nbd://[::1]/a%2Fb?bitmap=b1").unwrap();
        assert_eq!(
            u.endpoint,
            Endpoint::Tcp {
                host: "::1".into(),
                port: DEFAULT_PORT
            }
        );
        assert_eq!(
            (u.export.as_str(), u.bitmap.as_deref()),
            ("a/b", Some("b1"))
        );
        let u = NbdUri::parse("nbd+unix:///fleece?socket=/run/n.sock&bitmap=day2&new-bitmap=day3")
            .unwrap();
        assert_eq!(u.endpoint, Endpoint::Unix("/run/n.sock".into()));
        assert_eq!(u.export, "fleece");
        assert_eq!(u.new_bitmap.as_deref(), Some("day3"));
        assert_eq!(NbdUri::parse("nbd://host").unwrap().export, "");
        for bad in [
            "nbd+unix:///x",
            "nbd://:10/x",
            "nbd://h:port/x",
            "nbds://h/x",
            "nbd://h/x?socket=/s",
            "nbd://h/x?frob=1",
            "nbd://h/%zz",
            "nbd://h/x?bitmap=",
        ] {
            assert!(NbdUri::parse(bad).is_err(), "{bad}");
        }
        assert!(is_nbd_uri("nbd://h/x") && !is_nbd_uri("/tmp/nbd://x"));
        assert!(!is_nbd_uri("nbds-disk.img"), "a file name, not a URI");
    }
}
