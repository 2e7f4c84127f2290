//! What the client commands share: where the server is, how results are
//! shown, the progress bar, sizes for humans.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use hoard_client::{ConnectOptions, Connection, Fingerprint, Progress, ServerTrust};
use hoard_codec::{ChunkCodec, Compression};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Args, Clone)]
pub struct ClientArgs {
    /// Server address, HOST:PORT.
    #[arg(long, env = "HOARD_SERVER", default_value = "127.0.0.1:8007")]
    pub server: String,
    /// API token, NAME:SECRET (from `hoard token create` on the server).
    #[arg(long, env = "HOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The server certificate's SHA-256 fingerprint (`hoard cert
    /// fingerprint` on the server); without it, a fingerprint remembered
    /// in ~/.config/hoard/known_servers, or a CA-signed certificate.
    #[arg(long, env = "HOARD_FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// Extra CA certificates (PEM) to trust besides the system's, for a
    /// server whose certificate a private CA signed.
    #[arg(long, env = "HOARD_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// Encryption key file (`hoard key create`): backups are encrypted
    /// with it, encrypted snapshots read with it. Its passphrase comes from
    /// HOARD_KEY_PASSPHRASE or is asked for on the terminal.
    #[arg(long, env = "HOARD_KEY")]
    pub key: Option<std::path::PathBuf>,
    /// No progress bar and no summary line.
    #[arg(long, short)]
    pub quiet: bool,
    /// `json` prints the result as JSON on stdout, for scripts.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output_format: OutputFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

impl ClientArgs {
    /// Connects and authenticates. With no pin anywhere and a
    /// certificate no CA vouches for, a user at a terminal is shown the
    /// fingerprint and asked; a yes is remembered for this server.
    pub async fn connect(&self) -> hoard_client::Result<Connection> {
        self.connect_with(Compression::default()).await
    }

    /// [`ClientArgs::connect`], with the key (if any) unlocked first and
    /// chunks compressed as `compression` says.
    pub async fn connect_with(&self, compression: Compression) -> hoard_client::Result<Connection> {
        let key = match &self.key {
            Some(path) => Some(Arc::new(crate::key::unlock(path)?)),
            None => None,
        };
        let mut conn = self.connect_only(key.is_some()).await?;
        conn.set_codec(ChunkCodec::new(compression, key))?;
        Ok(conn)
    }

    async fn connect_only(&self, encrypt: bool) -> hoard_client::Result<Connection> {
        use hoard_client::Error;
        let Some(token) = self.token.clone() else {
            return Err(Error::Usage(
                "no API token: pass --token NAME:SECRET or set HOARD_TOKEN (`hoard token create` on the server makes one)".into(),
            ));
        };
        let known = crate::known_servers::path();
        let mut opts = ConnectOptions {
            server: self.server.clone(),
            token,
            trust: ServerTrust::Chain {
                extra_ca: self.ca.clone(),
            },
            mismatch_hint: String::new(),
            encrypt,
        };
        if let Some(fp) = &self.fingerprint {
            let fp: Fingerprint = fp.parse().map_err(Error::Usage)?;
            opts.trust = ServerTrust::Pinned(fp);
        } else if let Some(fp) = known
            .as_deref()
            .and_then(|p| crate::known_servers::lookup(p, &self.server))
        {
            opts.trust = ServerTrust::Pinned(fp);
            opts.mismatch_hint = format!(
                "\nThe expected fingerprint was remembered in {}; if the server's certificate was replaced on purpose, remove its line there.",
                known
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
        }
        match Connection::connect(&opts).await {
            Err(Error::Untrusted { fingerprint, .. }) if interactive() => {
                let fp: Fingerprint = fingerprint.parse().map_err(Error::Usage)?;
                if !confirm(&self.server, &fp).await {
                    return Err(Error::Usage(
                        "the server's certificate was not accepted".into(),
                    ));
                }
                if let Some(path) = &known
                    && let Err(e) = crate::known_servers::remember(path, &self.server, &fp)
                {
                    tracing::warn!(
                        "could not remember the fingerprint in {}: {e}",
                        path.display()
                    );
                }
                opts.trust = ServerTrust::Pinned(fp);
                Connection::connect(&opts).await
            }
            other => other,
        }
    }

    /// Prints the closing summary line on stderr, unless quiet.
    pub fn summary(&self, line: &str) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }
}

fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Asks on the terminal whether to trust `fp` for `server`.
async fn confirm(server: &str, fp: &Fingerprint) -> bool {
    eprintln!(
        "The certificate of server {server} is not signed by a trusted CA.\nSHA-256 fingerprint: {fp}\nCompare it with `hoard cert fingerprint` on the server."
    );
    eprint!("Trust it and remember it for {server}? [y/N] ");
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await;
    matches!(answer, Ok(Ok(line)) if matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Chunk buffers in flight: a few per core keep every core hashing while
/// the network and the disk catch up.
pub fn buffers() -> usize {
    2 * std::thread::available_parallelism().map_or(2, |n| n.get()) + 2
}

/// A progress bar on stderr while `progress` advances; only on a terminal
/// and never when quiet.
pub struct ProgressView {
    bar: Option<(ProgressBar, tokio::task::JoinHandle<()>)>,
}

impl ProgressView {
    pub fn start(progress: Arc<Progress>, quiet: bool, verb: &str) -> ProgressView {
        if quiet || !std::io::stderr().is_terminal() {
            return ProgressView { bar: None };
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(verb.to_string());
        let b = bar.clone();
        let ticker = tokio::spawn(async move {
            let mut open_ended = false;
            loop {
                // A tree's size is not known ahead of its walk: show the
                // bytes done and the rate only.
                if progress.total() == 0 && progress.done() > 0 && !open_ended {
                    open_ended = true;
                    b.set_style(
                        ProgressStyle::with_template(
                            "{msg} {spinner} {binary_bytes} {binary_bytes_per_sec} {elapsed}",
                        )
                        .expect("valid template"),
                    );
                }
                b.set_length(progress.total());
                b.set_position(progress.done());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        ProgressView {
            bar: Some((bar, ticker)),
        }
    }

    pub fn finish(self) {
        if let Some((bar, ticker)) = self.bar {
            ticker.abort();
            bar.finish_and_clear();
        }
    }
}

/// `1.50 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// `850 MB/s` (decimal, as disks and networks are rated).
pub fn rate(n: u64, seconds: f64) -> String {
    let per_sec = n as f64 / seconds.max(1e-6);
    if per_sec >= 1e9 {
        format!("{:.2} GB/s", per_sec / 1e9)
    } else {
        format!("{:.0} MB/s", per_sec / 1e6)
    }
}

pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(2 << 30), "2.00 GiB");
        assert_eq!(rate(2_000_000_000, 2.0), "1.00 GB/s");
        assert_eq!(rate(850_000_000, 1.0), "850 MB/s");
    }
}
