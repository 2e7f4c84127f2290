//! Objects in an S3-compatible bucket, through `object_store`.
//!
//! Create-if-absent is a conditional PUT (`If-None-Match: *`): the
//! service, not the client, decides which of two uploads of one key wins,
//! and an existing object is never overwritten. [`S3Storage::open`] checks
//! that the service really honours it (some S3 imitations ignore the
//! header and overwrite): a datastore relies on it, so one that does not
//! is refused unless configured otherwise (docs/storage.md).
//!
//! Requests run on a small runtime owned by this module and shared by
//! every bucket the process opens; the blocking methods wait for them. It
//! is never dropped, so no caller's context decides when it shuts down.

use std::ops::{ControlFlow, Range};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig,
};
use serde::{Deserialize, Serialize};

use crate::{
    Counters, Error, Kind, ObjectInfo, Put, RequestCounts, Result, Storage, check_key, check_prefix,
};

/// How the bucket is named in requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Addressing {
    /// `https://ENDPOINT/BUCKET/KEY`: self-hosted services (SeaweedFS,
    /// MinIO, Ceph RGW) and any endpoint given as an address.
    #[default]
    Path,
    /// `https://BUCKET.ENDPOINT/KEY`: AWS and most hosted services.
    VirtualHost,
}

/// Where a datastore's bucket is. Holds no secret: it is written to the
/// datastore directory, and may be shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// `https://host[:port]` (or `http://` for a service on this machine
    /// or a trusted network).
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Keys of this datastore start with `PREFIX/` (empty: the bucket's
    /// root), so one bucket can hold several datastores.
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub addressing: Addressing,
    /// A file with the access key (AWS `credentials` file format, profile
    /// `default`, or `HOARD_S3_PROFILE`); without it the key comes from
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<std::path::PathBuf>,
    /// The service ignores `If-None-Match` (checked when the datastore is
    /// created): create-if-absent is then a HEAD and a PUT, safe only
    /// because a datastore is used by one server at a time.
    #[serde(default)]
    pub no_conditional_writes: bool,
    /// How long one request may keep being retried (timeouts, 5xx).
    #[serde(default = "default_retry_secs")]
    pub retry_timeout_secs: u64,
}

fn default_retry_secs() -> u64 {
    120
}

impl S3Config {
    pub fn new(endpoint: &str, region: &str, bucket: &str) -> Self {
        S3Config {
            endpoint: endpoint.to_string(),
            region: region.to_string(),
            bucket: bucket.to_string(),
            prefix: String::new(),
            addressing: Addressing::Path,
            credentials_file: None,
            no_conditional_writes: false,
            retry_timeout_secs: default_retry_secs(),
        }
    }

    fn check(&self) -> Result<()> {
        let scheme_ok =
            self.endpoint.starts_with("https://") || self.endpoint.starts_with("http://");
        if !scheme_ok {
            return Err(Error::Config(format!(
                "S3 endpoint {:?} must start with https:// or http://",
                self.endpoint
            )));
        }
        if self.bucket.is_empty() || self.region.is_empty() {
            return Err(Error::Config("S3 bucket and region must be set".into()));
        }
        if !self.prefix.is_empty() {
            check_key(&self.prefix)
                .map_err(|_| Error::Config(format!("invalid S3 key prefix {:?}", self.prefix)))?;
        }
        Ok(())
    }
}

/// An access key.
#[derive(Clone)]
struct Credentials {
    key_id: String,
    secret: String,
    token: Option<String>,
}

impl Credentials {
    fn load(config: &S3Config) -> Result<Credentials> {
        match &config.credentials_file {
            Some(path) => {
                let profile =
                    std::env::var("HOARD_S3_PROFILE").unwrap_or_else(|_| "default".into());
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::Config(format!("reading S3 credentials {}: {e}", path.display()))
                })?;
                parse_credentials(&text, &profile).ok_or_else(|| {
                    Error::Config(format!(
                        "{} has no aws_access_key_id and aws_secret_access_key in profile [{profile}]",
                        path.display()
                    ))
                })
            }
            None => {
                let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
                match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
                    (Some(key_id), Some(secret)) => Ok(Credentials {
                        key_id,
                        secret,
                        token: var("AWS_SESSION_TOKEN"),
                    }),
                    _ => Err(Error::Config(
                        "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
                         or give a credentials file"
                            .into(),
                    )),
                }
            }
        }
    }
}

/// Reads `[profile]` of an AWS-style credentials file.
fn parse_credentials(text: &str, profile: &str) -> Option<Credentials> {
    let mut current = String::new();
    let (mut key_id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_string();
            continue;
        }
        if current != profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => key_id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some(Credentials {
        key_id: key_id?,
        secret: secret?,
        token,
    })
}

pub struct S3Storage {
    store: AmazonS3,
    config: S3Config,
    counts: Counters,
}

impl std::fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The runtime every bucket's requests run on.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("hoard-s3")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| Error::Config(format!("starting the S3 client runtime: {e}")))
}

impl S3Storage {
    /// Connects to the bucket. Sends no request.
    pub fn open(config: &S3Config) -> Result<S3Storage> {
        config.check()?;
        let creds = Credentials::load(config)?;
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(15),
                base: 2.0,
            },
            // The time budget decides, not a count: a refused connection
            // fails at once, and ten quick retries would give up on a
            // service that restarts in a few seconds.
            max_retries: 1000,
            retry_timeout: Duration::from_secs(config.retry_timeout_secs),
        };
        let options = ClientOptions::new()
            .with_allow_http(config.endpoint.starts_with("http://"))
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(60))
            .with_pool_max_idle_per_host(64);
        let mut builder = AmazonS3Builder::new()
            .with_endpoint(&config.endpoint)
            .with_region(&config.region)
            .with_bucket_name(&config.bucket)
            .with_access_key_id(creds.key_id)
            .with_secret_access_key(creds.secret)
            .with_virtual_hosted_style_request(config.addressing == Addressing::VirtualHost)
            // Requests are signed, their payloads not hashed for it
            // (UNSIGNED-PAYLOAD): hashing every chunk again cost a tenth
            // of a first backup's time, TLS protects payloads in transit,
            // and every chunk carries its CRC and digest, checked on read.
            .with_unsigned_payload(true)
            .with_retry(retry)
            .with_client_options(options)
            .with_conditional_put(if config.no_conditional_writes {
                S3ConditionalPut::Disabled
            } else {
                S3ConditionalPut::ETagMatch
            });
        if let Some(t) = creds.token {
            builder = builder.with_token(t);
        }
        let store = builder
            .build()
            .map_err(|e| Error::Config(format!("S3 configuration: {e}")))?;
        Ok(S3Storage {
            store,
            config: config.clone(),
            counts: Counters::default(),
        })
    }

    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// Checks that create-if-absent holds on this service: a second
    /// conditional PUT of one key must fail. Leaves no object behind.
    pub fn probe_conditional_writes(&self) -> Result<bool> {
        if self.config.no_conditional_writes {
            return Ok(false);
        }
        crate::keeps_create_if_absent(self)
    }

    fn path(&self, key: &str) -> Result<ObjPath> {
        check_key(key)?;
        Ok(self.full(key))
    }

    fn full(&self, key: &str) -> ObjPath {
        if self.config.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.config.prefix))
        }
    }

    /// The key of a listed object, without the datastore's prefix.
    fn key_of(&self, location: &ObjPath) -> String {
        let full = location.as_ref();
        if self.config.prefix.is_empty() {
            return full.to_string();
        }
        full.strip_prefix(&self.config.prefix)
            .and_then(|k| k.strip_prefix('/'))
            .unwrap_or(full)
            .to_string()
    }

    fn count(&self, kind: Kind) {
        self.counts.count(kind);
    }

    fn fail(&self, op: &'static str, key: &str, e: object_store::Error) -> Error {
        match e {
            object_store::Error::NotFound { .. } => Error::NotFound(key.to_string()),
            e => Error::Request {
                op,
                key: key.to_string(),
                store: self.describe(),
                message: e.to_string(),
            },
        }
    }

    fn block<T>(&self, fut: impl Future<Output = T> + Send) -> Result<T>
    where
        T: Send,
    {
        Ok(runtime()?.block_on(fut))
    }

    fn put_with(&self, key: &str, data: Bytes, mode: PutMode) -> Result<Put> {
        let path = self.path(key)?;
        self.count(Kind::Put);
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let payload = PutPayload::from_bytes(data);
        match self.block(self.store.put_opts(&path, payload, opts))? {
            Ok(_) => Ok(Put::Created),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(Put::Existed),
            Err(e) => Err(self.fail("put", key, e)),
        }
    }
}

fn info(key: String, meta: &object_store::ObjectMeta) -> ObjectInfo {
    ObjectInfo {
        key,
        size: meta.size,
        modified: meta.last_modified.timestamp(),
    }
}

impl Storage for S3Storage {
    fn put_if_absent(&self, key: &str, data: Bytes) -> Result<Put> {
        if self.config.no_conditional_writes {
            match self.head(key) {
                Ok(_) => return Ok(Put::Existed),
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            return self.put_with(key, data, PutMode::Overwrite);
        }
        self.put_with(key, data, PutMode::Create)
    }

    fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.put_with(key, data, PutMode::Overwrite).map(|_| ())
    }

    fn get_bounded(&self, key: &str, max: u64) -> Result<Bytes> {
        let path = self.path(key)?;
        self.count(Kind::Get);
        // The size is known from the response's headers, before its body
        // is read.
        self.block(async {
            let r = self.store.get(&path).await?;
            if r.meta.size > max {
                return Ok(Err(r.meta.size));
            }
            r.bytes().await.map(Ok)
        })?
        .map_err(|e| self.fail("get", key, e))?
        .map_err(|size| Error::TooLarge {
            key: key.to_string(),
            size,
            max,
        })
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let path = self.path(key)?;
        self.count(Kind::Get);
        match self.block(self.store.get_range(&path, range.clone()))? {
            Ok(b) => Ok(b),
            // A range past a short object's end: what there is.
            Err(object_store::Error::Generic { .. }) if range.start > 0 => {
                let all = self.get(key)?;
                let end = (range.end as usize).min(all.len());
                Ok(all.slice((range.start as usize).min(end)..end))
            }
            Err(e) => Err(self.fail("get", key, e)),
        }
    }

    fn head(&self, key: &str) -> Result<ObjectInfo> {
        let path = self.path(key)?;
        self.count(Kind::Head);
        self.block(self.store.head(&path))?
            .map(|m| info(key.to_string(), &m))
            .map_err(|e| self.fail("head", key, e))
    }

    fn list(
        &self,
        prefix: &str,
        each: &mut dyn FnMut(ObjectInfo) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        check_prefix(prefix)?;
        // object_store lists by whole path segments: list the deepest
        // directory the prefix names, filter by the rest.
        let dir = prefix.rfind('/').map(|i| &prefix[..i]);
        let base = match (dir, self.config.prefix.is_empty()) {
            (Some(d), _) => Some(self.full(d)),
            (None, false) => Some(ObjPath::from(self.config.prefix.as_str())),
            (None, true) => None,
        };
        let rt = runtime()?;
        // Each page is one request; the stream fetches the next one only
        // when this one is consumed.
        let mut stream = self.store.list(base.as_ref());
        self.count(Kind::List);
        let mut in_page = 0usize;
        loop {
            let next = rt.block_on(stream.next());
            let Some(item) = next else { return Ok(()) };
            let meta = item.map_err(|e| self.fail("list", prefix, e))?;
            in_page += 1;
            if in_page == 1000 {
                in_page = 0;
                self.count(Kind::List);
            }
            let key = self.key_of(&meta.location);
            if key.starts_with(prefix) && each(info(key, &meta))?.is_break() {
                return Ok(());
            }
        }
    }

    fn delete(&self, keys: &[String]) -> Result<()> {
        let mut paths = Vec::with_capacity(keys.len());
        for k in keys {
            paths.push(self.path(k)?);
        }
        // DeleteObjects takes up to 1000 keys a request.
        for batch in paths.chunks(1000) {
            self.count(Kind::Delete);
            let input = futures::stream::iter(batch.iter().cloned().map(Ok)).boxed();
            let results: Vec<_> =
                self.block(self.store.delete_stream(input).collect::<Vec<_>>())?;
            for r in results {
                match r {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    // The service's message names the key that failed.
                    Err(e) => return Err(self.fail("delete", "a batch of objects", e)),
                }
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let c = &self.config;
        if c.prefix.is_empty() {
            format!("s3://{} at {}", c.bucket, c.endpoint)
        } else {
            format!("s3://{}/{} at {}", c.bucket, c.prefix, c.endpoint)
        }
    }

    fn requests(&self) -> RequestCounts {
        self.counts.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file_profiles() {
        let text = "# comment\n[other]\naws_access_key_id = A\n\
                    [default]\naws_access_key_id = KEY\naws_secret_access_key=SECRET\n";
        let c = parse_credentials(text, "default").unwrap();
        assert_eq!((c.key_id.as_str(), c.secret.as_str()), ("KEY", "SECRET"));
        assert!(parse_credentials(text, "other").is_none());
        assert!(parse_credentials(text, "missing").is_none());
    }

    #[test]
    fn config_is_checked_and_holds_no_secret() {
        let mut c = S3Config::new("ftp://x", "r", "b");
        assert!(c.check().is_err());
        c.endpoint = "http://127.0.0.1:1".into();
        c.check().unwrap();
        c.prefix = "../x".into();
        assert!(c.check().is_err());
        let json = serde_json::to_string(&S3Config::new("http://h", "r", "b")).unwrap();
        assert!(!json.contains("secret"), "{json}");
    }

    /// Against a real service: SeaweedFS, started for the test.
    #[test]
    fn meets_the_contract_on_a_real_service() {
        let weed = crate::seaweedfs::shared();
        let s = S3Storage::open(&weed.config(&format!("contract-{:08x}", rand::random::<u32>())))
            .unwrap();
        assert!(s.probe_conditional_writes().unwrap());
        crate::contract::run(&s);
        // A prefix keeps datastores in one bucket apart.
        let other = S3Storage::open(&weed.config("contract-other")).unwrap();
        assert!(matches!(other.get("a/y"), Err(Error::NotFound(_))));
    }

    #[test]
    fn a_request_outlives_a_short_outage() {
        let mut weed = crate::seaweedfs::SeaweedFs::start();
        let mut c = weed.config("blip");
        c.retry_timeout_secs = 60;
        let s = S3Storage::open(&c).unwrap();
        s.put("k", Bytes::from_static(b"v")).unwrap();
        weed.stop();
        // The service comes back while the request is being retried.
        let back = std::thread::scope(|scope| {
            let r = scope.spawn(|| s.get("k"));
            std::thread::sleep(std::time::Duration::from_millis(1500));
            weed.restart();
            r.join().unwrap()
        });
        assert_eq!(back.unwrap(), Bytes::from_static(b"v"));
    }

    #[test]
    fn a_stopped_service_fails_requests_with_a_clear_error() {
        let mut weed = crate::seaweedfs::SeaweedFs::start();
        let mut c = weed.config("stopped");
        c.retry_timeout_secs = 2;
        let s = S3Storage::open(&c).unwrap();
        s.put("k", Bytes::from_static(b"v")).unwrap();
        weed.stop();
        let e = s.get("k").unwrap_err().to_string();
        assert!(e.contains("get of k on s3://"), "{e}");
        weed.restart();
        assert_eq!(s.get("k").unwrap(), Bytes::from_static(b"v"));
    }
}
