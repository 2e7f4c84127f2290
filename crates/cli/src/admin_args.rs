//! What the maintenance commands (gc, prune, verify, protect) share: they
//! run on the server's machine, on the datastore directory itself, and
//! coordinate with a running server through the datastore's locks
//! (docs/maintenance.md), so none of them needs the server stopped.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use hoard_datastore::Datastore;
use hoard_types::{BackupGroup, SnapshotPath};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::client_args::OutputFormat;

#[derive(Args, Clone)]
pub struct AdminArgs {
    /// Datastore directory (the one `hoard serve` uses).
    /// [default: $XDG_DATA_HOME/hoard/datastore, i.e. ~/.local/share/hoard/datastore]
    #[arg(long, env = "HOARD_DATASTORE", global = true)]
    pub datastore: Option<PathBuf>,
    /// The server's state directory (certificate, key, tokens), if it is
    /// not the datastore's `.server/` (`hoard serve --state-dir`).
    #[arg(long, env = "HOARD_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// No progress bar and no summary.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// `json` prints the result as JSON on stdout, for scripts.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text, global = true)]
    pub output_format: OutputFormat,
}

/// A maintenance failure with its exit code (README, "Exit codes").
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    pub code: u8,
    pub message: String,
}

impl AdminError {
    /// The error, ready to return from a command.
    pub fn fail(code: u8, message: impl Into<String>) -> anyhow::Error {
        AdminError {
            code,
            message: message.into(),
        }
        .into()
    }
}

/// Maps a datastore error to its exit code: 4 not found, 5 busy or
/// refused, 8 damage, 1 anything else (I/O).
pub fn ds_error(e: hoard_datastore::Error) -> anyhow::Error {
    use hoard_datastore::Error as E;
    let code = match &e {
        E::NotADatastore(_) | E::NoDatastore(_) | E::SnapshotNotFound(_) | E::IndexNotFound(_) => 4,
        E::Busy(_) | E::SnapshotBusy(_) | E::InUse { .. } => 5,
        E::Unsafe(_) | E::IndexCorrupt { .. } | E::Manifest { .. } | E::ChunkCorrupt { .. } => 8,
        _ => 1,
    };
    AdminError::fail(code, e.to_string())
}

impl AdminArgs {
    /// Opens the existing datastore; never creates one.
    pub fn open(&self) -> anyhow::Result<Datastore> {
        let dir = match &self.datastore {
            Some(d) => d.clone(),
            None => crate::serve::default_datastore()?,
        };
        Datastore::open(&dir).map_err(ds_error)
    }

    /// The server's state directory: `--state-dir`, or the datastore's
    /// `.server/`.
    pub fn state(&self) -> anyhow::Result<PathBuf> {
        match &self.state_dir {
            Some(d) => Ok(d.clone()),
            None => Ok(crate::serve::state_dir(self.open()?.root())),
        }
    }

    pub fn json(&self) -> bool {
        self.output_format == OutputFormat::Json
    }

    /// A progress bar on stderr, hidden unless stderr is a terminal and
    /// output is for humans.
    pub fn bar(&self, len: u64, template: &str) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        if self.quiet || !std::io::stderr().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_style(
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    }

    /// Prints a result: JSON on stdout, or the text lines.
    pub fn emit(&self, json: &serde_json::Value, text: &[String]) -> anyhow::Result<()> {
        if self.json() {
            outln!("{json}")?;
        } else if !self.quiet {
            for line in text {
                outln!("{line}")?;
            }
        }
        Ok(())
    }
}

/// What a command-line target names: everything, a group or a snapshot.
#[derive(Debug, Clone)]
pub enum Target {
    All,
    Group(BackupGroup),
    Snapshot(SnapshotPath),
}

impl Target {
    pub fn parse(arg: Option<&str>) -> anyhow::Result<Target> {
        let Some(s) = arg else { return Ok(Target::All) };
        let s = s.trim_end_matches('/');
        if let Ok(snap) = s.parse::<SnapshotPath>() {
            return Ok(Target::Snapshot(snap));
        }
        s.parse::<BackupGroup>().map(Target::Group).map_err(|e| {
            AdminError::fail(
                2,
                format!("{s:?} is neither a group (TYPE/ID) nor a snapshot (TYPE/ID/TIME): {e}"),
            )
        })
    }

    pub fn matches(&self, snap: &SnapshotPath) -> bool {
        match self {
            Target::All => true,
            Target::Group(g) => &snap.group == g,
            Target::Snapshot(s) => s == snap,
        }
    }

    pub fn matches_group(&self, group: &BackupGroup) -> bool {
        match self {
            Target::All => true,
            Target::Group(g) => g == group,
            Target::Snapshot(s) => &s.group == group,
        }
    }
}

/// Parses `90s`, `15m`, `12h`, `30d`, `2w` or `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit (s, m, h, d, w)"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (s, m, h, d, w)")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("1w"), Ok(Duration::from_secs(604_800)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("3y").is_err());
    }

    #[test]
    fn targets() {
        assert!(matches!(Target::parse(None).unwrap(), Target::All));
        assert!(matches!(
            Target::parse(Some("vm/100")).unwrap(),
            Target::Group(_)
        ));
        assert!(matches!(
            Target::parse(Some("vm/100/2021-01-01T00:00:00Z")).unwrap(),
            Target::Snapshot(_)
        ));
        assert!(Target::parse(Some("nonsense")).is_err());
    }
}
