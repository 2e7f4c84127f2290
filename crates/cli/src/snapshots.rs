//! `hoard snapshots`: what the server holds.

use anyhow::Result;
use clap::Args;
use hoard_client::requests::{Listed, display_name, list_snapshots};
use hoard_client::seal::SealState;
use hoard_protocol::SnapshotFilter;
use hoard_types::{BackupId, BackupType};
use serde::Serialize;

use crate::backup::{parse_id, parse_type};
use crate::client_args::{ClientArgs, OutputFormat, bytes, print_json, runtime};

#[derive(Args)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Only snapshots of this backup type.
    #[arg(long = "type", value_parser = parse_type)]
    ty: Option<BackupType>,
    /// Only snapshots of this backup id.
    #[arg(long, value_parser = parse_id)]
    id: Option<BackupId>,
}

/// One snapshot as `--output-format json` prints it.
#[derive(Serialize)]
struct SnapshotJson<'a> {
    snapshot: String,
    #[serde(rename = "type")]
    ty: &'a str,
    id: &'a str,
    time: String,
    state: hoard_datastore::SnapshotState,
    #[serde(skip_serializing_if = "Option::is_none")]
    verification: Option<&'a hoard_datastore::Verification>,
    /// Encrypted snapshots: the key's fingerprint, and whether the seal
    /// was checked with the key given (`ok`), could not be (`no key`), or
    /// failed (`broken: …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption: Option<EncryptionJson>,
    files: Vec<FileJson<'a>>,
}

#[derive(Serialize)]
struct EncryptionJson {
    key: String,
    seal: String,
}

fn encryption(s: &Listed) -> Option<EncryptionJson> {
    let seal = s.manifest.seal.as_ref()?;
    let key = hoard_client::seal::peek(seal)
        .map(|b| b.key)
        .unwrap_or_else(|_| "?".into());
    let seal = match &s.seal {
        SealState::Ours => "ok".to_string(),
        SealState::Foreign { .. } => "no key".to_string(),
        SealState::Broken { problem } => format!("broken: {problem}"),
        SealState::Plain => "none".to_string(),
    };
    Some(EncryptionJson { key, seal })
}

#[derive(Serialize)]
struct FileJson<'a> {
    name: &'a str,
    kind: hoard_datastore::FileKind,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    chunk_size: Option<u32>,
    chunks: u64,
}

fn to_json(s: &Listed) -> SnapshotJson<'_> {
    SnapshotJson {
        snapshot: s.path.to_string(),
        ty: s.path.group.ty.as_str(),
        id: s.path.group.id.as_str(),
        time: s.path.time.to_string(),
        state: s.manifest.state,
        verification: s.manifest.verification.as_ref(),
        encryption: encryption(s),
        files: s
            .manifest
            .files
            .iter()
            .map(|f| FileJson {
                name: display_name(f),
                kind: f.kind,
                size: f.file_size,
                chunk_size: f.chunk_size,
                chunks: f.chunk_count,
            })
            .collect(),
    }
}

pub fn run(args: SnapshotsArgs) -> Result<()> {
    // The wire filter scopes an id by its type; an id alone is filtered
    // here.
    let filter = SnapshotFilter {
        ty: args.ty,
        id: args.ty.and(args.id.clone()),
    };
    let list = runtime()?.block_on(async {
        let conn = args.client.connect().await?;
        let list = list_snapshots(&conn, filter).await?;
        conn.close().await?;
        Ok::<_, hoard_client::Error>(list)
    })?;
    let list: Vec<&Listed> = list
        .iter()
        .filter(|s| args.id.as_ref().is_none_or(|id| *id == s.path.group.id))
        .collect();
    if args.client.output_format == OutputFormat::Json {
        let json: Vec<SnapshotJson> = list.iter().map(|s| to_json(s)).collect();
        return print_json(&json);
    }
    if list.is_empty() {
        eprintln!("no snapshots");
        return Ok(());
    }
    let width = list
        .iter()
        .map(|s| s.path.to_string().len())
        .max()
        .unwrap_or(8)
        .max(8);
    outln!(
        "{:width$}  {:10}  {:>11}  FILE",
        "SNAPSHOT",
        "STATE",
        "SIZE"
    )?;
    for s in list {
        let mut state = format!("{:?}", s.manifest.state).to_lowercase();
        if let Some(v) = &s.manifest.verification
            && v.state == hoard_datastore::VerifyState::Failed
        {
            state = "damaged".into();
        }
        if let SealState::Broken { .. } = s.seal {
            state = "altered".into();
        }
        let note = match encryption(s) {
            Some(e) => format!("  [encrypted, key {}]", e.key),
            None => String::new(),
        };
        let mut first = true;
        for f in &s.manifest.files {
            // A tree archive is one line, sized by its data stream.
            let name = match tree_line(&s.manifest, f) {
                Line::Hidden => continue,
                Line::Tree(name) => name,
                Line::File => display_name(f).to_string(),
            };
            let snap = if first {
                s.path.to_string()
            } else {
                String::new()
            };
            let st = if first { state.as_str() } else { "" };
            let note = if first { note.as_str() } else { "" };
            outln!(
                "{snap:width$}  {st:10}  {:>11}  {name}{note}",
                bytes(f.file_size)
            )?;
            first = false;
        }
        if first {
            outln!("{:width$}  {state:10}  {:>11}  -", s.path.to_string(), "")?;
        }
    }
    Ok(())
}

enum Line {
    File,
    /// The data stream of archive NAME, shown as `NAME/ (tree)`.
    Tree(String),
    /// The metadata stream of an archive, folded into its data line.
    Hidden,
}

fn tree_line(m: &hoard_datastore::Manifest, f: &hoard_datastore::ManifestFile) -> Line {
    use hoard_client::tree_backup::{DATA_SUFFIX, META_SUFFIX};
    let pair = |name: &str, other: &str| m.file(&format!("{name}{other}.didx")).is_some();
    if let Some(name) = f.name.strip_suffix(&format!("{DATA_SUFFIX}.didx"))
        && pair(name, META_SUFFIX)
    {
        return Line::Tree(format!("{name}/ (tree)"));
    }
    if let Some(name) = f.name.strip_suffix(&format!("{META_SUFFIX}.didx"))
        && pair(name, DATA_SUFFIX)
    {
        return Line::Hidden;
    }
    Line::File
}
