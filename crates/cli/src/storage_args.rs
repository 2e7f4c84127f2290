//! Where `hoard serve` keeps a new datastore's chunks: the directory
//! (default) or an S3-compatible bucket. Credentials never come from the
//! command line: from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, or a
//! credentials file.

use std::path::PathBuf;

use clap::Args;
use hoard_datastore::storage::{Addressing, S3Config};
use hoard_datastore::{Backend, DEFAULT_CACHE_BYTES, ObjectOptions};

#[derive(Args, Debug, Clone)]
pub struct StorageArgs {
    /// Keep the chunks (and a copy of every snapshot's metadata) in this
    /// S3 bucket; the datastore directory then holds the metadata, a
    /// stub per chunk and the chunk cache. A bucket that holds a hoard
    /// datastore already is attached. Needed only when creating the
    /// datastore or changing how to reach the bucket.
    #[arg(long, value_name = "BUCKET", requires = "s3_endpoint")]
    s3_bucket: Option<String>,
    /// The S3 service: https://HOST[:PORT] (http:// only on a trusted
    /// network).
    #[arg(long, value_name = "URL", env = "HOARD_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    #[arg(long, default_value = "us-east-1", requires = "s3_bucket")]
    s3_region: String,
    /// Keep this datastore's objects under PREFIX/ in the bucket.
    #[arg(long, default_value = "", requires = "s3_bucket")]
    s3_prefix: String,
    /// Name the bucket in the host (BUCKET.HOST, AWS style) instead of
    /// the path (HOST/BUCKET, self-hosted services).
    #[arg(long, requires = "s3_bucket")]
    s3_virtual_host: bool,
    /// An AWS-style credentials file (profile `default`, or
    /// $HOARD_S3_PROFILE) instead of the AWS_* environment variables.
    #[arg(long, value_name = "FILE", requires = "s3_bucket")]
    s3_credentials: Option<PathBuf>,
    /// The service ignores conditional writes (If-None-Match); only safe
    /// while this server is the bucket's only user (docs/storage.md).
    #[arg(long, requires = "s3_bucket")]
    s3_no_conditional_writes: bool,
    /// Seconds one S3 request may keep being retried (timeouts, 5xx).
    #[arg(
        long,
        default_value_t = 120,
        value_name = "SECONDS",
        requires = "s3_bucket"
    )]
    s3_retry_timeout: u64,
    /// Size of the local chunk cache of an S3 datastore (4G, 512M, ...).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, requires = "s3_bucket")]
    cache_size: Option<u64>,
    /// Use the bucket although another datastore directory marked it in
    /// use (that server must be gone: two never share a bucket).
    #[arg(long, requires = "s3_bucket")]
    take_over: bool,
}

impl StorageArgs {
    pub fn backend(&self) -> Backend {
        let (Some(bucket), Some(endpoint)) = (&self.s3_bucket, &self.s3_endpoint) else {
            return Backend::Local;
        };
        let mut c = S3Config::new(endpoint, &self.s3_region, bucket);
        c.prefix = self.s3_prefix.clone();
        c.addressing = if self.s3_virtual_host {
            Addressing::VirtualHost
        } else {
            Addressing::Path
        };
        // Absolute, so that maintenance commands run from elsewhere (cron)
        // find it too.
        c.credentials_file = self
            .s3_credentials
            .as_ref()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()));
        c.no_conditional_writes = self.s3_no_conditional_writes;
        c.retry_timeout_secs = self.s3_retry_timeout;
        let mut o = ObjectOptions::new(c);
        o.cache_bytes = self.cache_size.unwrap_or(DEFAULT_CACHE_BYTES);
        o.take_over = self.take_over;
        Backend::S3(o)
    }
}

/// `4G`, `512M`, `64K`, `1048576`.
fn parse_size(s: &str) -> Result<u64, String> {
    let lower = s.to_ascii_lowercase();
    let trimmed = lower.trim_end_matches("ib").trim_end_matches('b');
    let (num, shift) = match trimmed.chars().last() {
        Some('k') => (&trimmed[..trimmed.len() - 1], 10),
        Some('m') => (&trimmed[..trimmed.len() - 1], 20),
        Some('g') => (&trimmed[..trimmed.len() - 1], 30),
        Some('t') => (&trimmed[..trimmed.len() - 1], 40),
        _ => (trimmed, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 4G or 512M"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
