//! `hoard backup`: disk images and directory trees into one new snapshot.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use hoard_client::backup::{BackupOptions, BackupReport, ImageSpec, backup};
use hoard_client::tree_backup::{DEFAULT_DATA_AVG_CHUNK, TreeSpec};
use hoard_client::{Error, Progress};
use hoard_codec::Compression;
use hoard_types::{BackupGroup, BackupId, BackupType, FileName, SnapshotPath, SnapshotTime};

use crate::client_args::{
    ClientArgs, OutputFormat, ProgressView, buffers, bytes, print_json, rate, runtime,
};

#[derive(Args)]
pub struct BackupArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Backup type.
    #[arg(long = "type", value_parser = parse_type)]
    ty: BackupType,
    /// Backup id, e.g. the VM number.
    #[arg(long, value_parser = parse_id)]
    id: BackupId,
    /// Snapshot time: `YYYY-MM-DDTHH:MM:SSZ` or seconds since the epoch.
    /// [default: now]
    #[arg(long, value_parser = parse_time)]
    time: Option<SnapshotTime>,
    /// Chunk size, a power of two: for images the fixed size (4K to 8M,
    /// default 4M), for trees the average (16K to 2M, default 1M).
    #[arg(long, value_parser = parse_chunk_size)]
    chunk_size: Option<u32>,
    /// Read every file, even one whose size, mtime, ctime and inode match
    /// the previous snapshot.
    #[arg(long)]
    reread: bool,
    /// Trees: leave out paths matching PATTERN (gitignore syntax, relative
    /// to the tree's root; repeatable), e.g. `*.tmp`, `/var/cache/`.
    #[arg(long = "exclude", value_name = "PATTERN")]
    excludes: Vec<String>,
    /// Trees: enter file systems mounted below the root (by default a
    /// mount point is kept as an empty directory).
    #[arg(long)]
    all_file_systems: bool,
    /// How the client compresses chunks: `zstd` (level 3 by default),
    /// `zstd:LEVEL` (-7..=22), or `none`. A chunk that does not shrink is
    /// sent as it is.
    #[arg(long, env = "HOARD_COMPRESS", value_parser = parse_compression, default_value = "zstd")]
    compress: Compression,
    /// With --key: also encrypt the key to this master public key (`hoard
    /// key create-master`) and store that with the snapshot, so the
    /// master key's holder can recover it (`hoard key recover`).
    #[arg(long, env = "HOARD_MASTER_PUBKEY")]
    master_pubkey: Option<PathBuf>,
    /// What to back up, as NAME=PATH. A directory becomes a file-tree
    /// archive NAME (stored as NAME.hmeta + NAME.hdata); a regular file or
    /// block device an image NAME, e.g. drive-scsi0.img.
    #[arg(required = true, value_parser = parse_image)]
    images: Vec<(FileName, PathBuf)>,
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    s.parse().map_err(|e: hoard_codec::Error| e.to_string())
}

pub fn parse_type(s: &str) -> Result<BackupType, String> {
    s.parse().map_err(|e| format!("{e}"))
}

pub fn parse_id(s: &str) -> Result<BackupId, String> {
    BackupId::new(s).map_err(|e| e.to_string())
}

fn parse_time(s: &str) -> Result<SnapshotTime, String> {
    match s.parse::<u64>() {
        Ok(secs) => SnapshotTime::from_epoch(secs).map_err(|e| e.to_string()),
        Err(_) => s.parse().map_err(|e| format!("{e}")),
    }
}

/// `4M`, `64K`, `4MiB`, `4194304`: a power of two from 4K to 8M (the
/// kind of source narrows it further).
fn parse_chunk_size(s: &str) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    let trimmed = lower.trim_end_matches("ib").trim_end_matches('b');
    let (num, mul) = match trimmed.chars().last() {
        Some('k') => (&trimmed[..trimmed.len() - 1], 1u64 << 10),
        Some('m') => (&trimmed[..trimmed.len() - 1], 1 << 20),
        _ => (trimmed, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 4M or 64K"))?;
    let size = n.saturating_mul(mul);
    if !size.is_power_of_two() || !(4096..=8 << 20).contains(&size) {
        return Err(format!("{s} is not a power of two from 4K to 8M"));
    }
    Ok(size as u32)
}

fn parse_image(s: &str) -> Result<(FileName, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=PATH"))?;
    let name = FileName::new(name).map_err(|e| format!("image name {name:?}: {e}"))?;
    if path.is_empty() {
        return Err(format!("{s:?} names no path"));
    }
    Ok((name, PathBuf::from(path)))
}

pub fn run(args: BackupArgs) -> Result<()> {
    let mut seen = HashSet::new();
    for (name, _) in &args.images {
        if !seen.insert(name.as_str()) {
            return Err(Error::Usage(format!("image name {name} is given twice")).into());
        }
    }
    let time = match args.time {
        Some(t) => t,
        None => SnapshotTime::now(),
    };
    let snapshot = SnapshotPath {
        group: BackupGroup {
            ty: args.ty,
            id: args.id.clone(),
        },
        time,
    };
    let mut images = Vec::new();
    let mut trees = Vec::new();
    for (name, path) in &args.images {
        // A directory is a tree; anything else is opened as an image
        // (which reports a missing or unsuitable source).
        if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            trees.push(TreeSpec {
                name: name.clone(),
                path: path.clone(),
            });
        } else {
            images.push(ImageSpec {
                name: name.clone(),
                path: path.clone(),
            });
        }
    }
    let avg_chunk = match args.chunk_size {
        Some(cs) if !trees.is_empty() && !(16 << 10..=2 << 20).contains(&cs) => {
            return Err(Error::Usage(format!(
                "--chunk-size {cs}: a tree's average chunk size is a power of two from 16K to 2M"
            ))
            .into());
        }
        Some(cs) => cs as usize,
        None => DEFAULT_DATA_AVG_CHUNK,
    };
    let opts = BackupOptions {
        snapshot,
        chunk_size: args.chunk_size.unwrap_or(4 << 20),
        avg_chunk,
        excludes: args.excludes.clone(),
        all_file_systems: args.all_file_systems,
        reuse_unchanged: !args.reread,
        buffers: buffers(),
        recovery: None,
    };
    let mut opts = opts;
    let progress = Arc::new(Progress::default());
    let report = runtime()?.block_on(async {
        let conn = args.client.connect_with(args.compress).await?;
        if let Some(path) = &args.master_pubkey {
            let Some(key) = conn.codec().key() else {
                return Err(Error::Usage("--master-pubkey needs --key".into()));
            };
            opts.recovery = Some(crate::key::recovery_for(path, key)?);
        }
        let conn = Arc::new(conn);
        let view = ProgressView::start(progress.clone(), args.client.quiet, "backup");
        let result = backup(conn.clone(), opts, images, trees, progress).await;
        view.finish();
        let report = result?;
        // Closing waits for the server to mark the snapshot complete. All
        // file tasks have ended, so this is the last reference.
        conn.close_shared().await?;
        Ok::<_, Error>(report)
    })?;
    if args.client.output_format == OutputFormat::Json {
        print_json(&report)?;
    }
    args.client.summary(&summary(&report));
    Ok(())
}

fn summary(r: &BackupReport) -> String {
    let size = r.total(|i| i.size) + r.trees.iter().map(|t| t.bytes_total).sum::<u64>();
    let read = r.total(|i| i.bytes_read) + r.trees.iter().map(|t| t.bytes_read).sum::<u64>();
    let uploaded =
        r.total(|i| i.bytes_uploaded) + r.trees.iter().map(|t| t.bytes_uploaded()).sum::<u64>();
    let chunks_up =
        r.total(|i| i.chunks_uploaded) + r.trees.iter().map(|t| t.chunks_uploaded()).sum::<u64>();
    let reused =
        r.total(|i| i.chunks_reused) + r.trees.iter().map(|t| t.chunks_reused()).sum::<u64>();
    let chunks = r.total(|i| i.chunks) + r.trees.iter().map(|t| t.chunks()).sum::<u64>();
    let unchanged = r.images.iter().filter(|i| i.unchanged).count();
    let unchanged = match unchanged {
        0 => String::new(),
        1 => ", 1 image unchanged".to_string(),
        n => format!(", {n} images unchanged"),
    };
    let mut trees = String::new();
    for t in &r.trees {
        trees.push_str(&format!(
            "; {}: {} files ({} unchanged, not read), {} dirs",
            t.name, t.files, t.files_unchanged, t.dirs
        ));
        if t.files_reread > 0 {
            trees.push_str(&format!(
                ", {} unchanged read again to drop dead bytes of earlier runs",
                t.files_reread
            ));
        }
        if t.skipped > 0 {
            trees.push_str(&format!(
                ", {} entries skipped (unreadable, see above)",
                t.skipped
            ));
        }
        if t.excluded > 0 {
            trees.push_str(&format!(", {} excluded", t.excluded));
        }
    }
    let sent = r.total(|i| i.bytes_sent)
        + r.trees
            .iter()
            .map(|t| t.meta.bytes_sent + t.data.bytes_sent)
            .sum::<u64>();
    let key = match &r.key {
        Some(k) => format!(", encrypted with key {k}"),
        None => String::new(),
    };
    format!(
        "backup {}{key}: read {}, uploaded {} ({} sent) in {} chunks, reused {} of {} chunks{unchanged}{trees}, {:.2} s, {}",
        r.snapshot,
        bytes(read),
        bytes(uploaded),
        bytes(sent),
        chunks_up,
        reused,
        chunks,
        r.seconds,
        rate(size, r.seconds),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size("4M"), Ok(4 << 20));
        assert_eq!(parse_chunk_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_chunk_size("64k"), Ok(64 << 10));
        assert_eq!(parse_chunk_size("4096"), Ok(4096));
        assert!(parse_chunk_size("3M").is_err());
        assert!(parse_chunk_size("2K").is_err());
        assert!(parse_chunk_size("16M").is_err());
        assert!(parse_chunk_size("x").is_err());
    }

    #[test]
    fn images_and_times() {
        let (n, p) = parse_image("d.img=/dev/sda").unwrap();
        assert_eq!((n.as_str(), p.to_str().unwrap()), ("d.img", "/dev/sda"));
        assert!(parse_image("d.img").is_err());
        assert!(parse_image("a/b=/x").is_err());
        assert!(parse_image("d.img=").is_err());
        assert_eq!(parse_time("0").unwrap().to_string(), "1970-01-01T00:00:00Z");
        assert!(parse_time("2026-11-24T10:00:00Z").is_ok());
        assert!(parse_time("yesterday").is_err());
    }
}
