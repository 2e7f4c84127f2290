//! What the client commands share: where the server is, how results are
//! shown, the progress bar, sizes for humans.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use hoard_client::{Connection, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Args, Clone)]
pub struct ClientArgs {
    /// Server address, HOST:PORT.
    #[arg(long, env = "HOARD_SERVER", default_value = "127.0.0.1:8007")]
    pub server: String,
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
    pub async fn connect(&self) -> hoard_client::Result<Connection> {
        Connection::connect(&self.server).await
    }

    /// Prints the closing summary line on stderr, unless quiet.
    pub fn summary(&self, line: &str) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }
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
    println!("{}", serde_json::to_string_pretty(value)?);
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
