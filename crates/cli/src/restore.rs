//! `hoard restore`: one image of a snapshot to a file, a block device or
//! standard output.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use hoard_client::requests::{Listed, find_file, latest, list_snapshots};
use hoard_client::restore::{RestoreOptions, RestoreReport, Target, restore_image};
use hoard_client::{Connection, Error, Progress};
use hoard_protocol::SnapshotFilter;
use hoard_types::{BackupGroup, SnapshotPath};

use crate::client_args::{
    ClientArgs, OutputFormat, ProgressView, buffers, bytes, print_json, rate, runtime,
};

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// TYPE/ID/TIME, e.g. vm/100/2026-11-24T10:00:00Z; `latest` as TIME
    /// picks the newest complete snapshot that holds FILE.
    snapshot: String,
    /// The image's name in the snapshot, e.g. drive-scsi0.img.
    file: String,
    /// A file (written sparse), a block device, or `-` for stdout.
    target: String,
    /// Replace TARGET if it is an existing file.
    #[arg(long)]
    overwrite: bool,
}

/// `vm/100/latest` or a snapshot path.
enum Wanted {
    Latest(BackupGroup),
    Exact(SnapshotPath),
}

fn parse_wanted(s: &str) -> Result<Wanted, Error> {
    if let Some(group) = s.strip_suffix("/latest") {
        let group: BackupGroup = group
            .parse()
            .map_err(|e| Error::Usage(format!("snapshot {s:?}: {e}")))?;
        return Ok(Wanted::Latest(group));
    }
    s.parse()
        .map(Wanted::Exact)
        .map_err(|e| Error::Usage(format!("snapshot {s:?}: {e}")))
}

async fn pick(conn: &Connection, wanted: &Wanted, file: &str) -> Result<Listed, Error> {
    let group = match wanted {
        Wanted::Latest(g) => g,
        Wanted::Exact(p) => &p.group,
    };
    let filter = SnapshotFilter {
        ty: Some(group.ty),
        id: Some(group.id.clone()),
    };
    let list = list_snapshots(conn, filter).await?;
    let found = match wanted {
        Wanted::Latest(g) => latest(&list, g, file).ok_or_else(|| {
            Error::NotFound(format!(
                "no complete snapshot of {g} holds a file named {file}"
            ))
        })?,
        Wanted::Exact(p) => {
            let s = list
                .iter()
                .find(|s| s.path == *p)
                .ok_or_else(|| Error::NotFound(format!("snapshot {p} not found")))?;
            if find_file(&s.manifest, file).is_none() {
                let names: Vec<&str> = s
                    .manifest
                    .files
                    .iter()
                    .map(hoard_client::requests::display_name)
                    .collect();
                return Err(Error::NotFound(format!(
                    "snapshot {p} has no file named {file} (it has: {})",
                    names.join(", ")
                )));
            }
            s
        }
    };
    Ok(found.clone())
}

pub fn run(args: RestoreArgs) -> Result<()> {
    let wanted = parse_wanted(&args.snapshot)?;
    let target = match args.target.as_str() {
        "-" => Target::Stdout,
        p => Target::Path(PathBuf::from(p)),
    };
    let opts = RestoreOptions {
        overwrite: args.overwrite,
        buffers: buffers(),
    };
    let progress = Arc::new(Progress::default());
    let report = runtime()?.block_on(async {
        let conn = args.client.connect().await?;
        let snap = pick(&conn, &wanted, &args.file).await?;
        let file = find_file(&snap.manifest, &args.file).expect("picked by file");
        let view = ProgressView::start(progress.clone(), args.client.quiet, "restore");
        let result = restore_image(&conn, &snap.path, file, &target, &opts, progress).await;
        view.finish();
        let report = result?;
        conn.close().await?;
        Ok::<_, Error>(report)
    })?;
    if args.client.output_format == OutputFormat::Json {
        if matches!(target, Target::Stdout) {
            // Standard output carries the image.
            eprintln!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_json(&report)?;
        }
    }
    args.client.summary(&summary(&report));
    Ok(())
}

fn summary(r: &RestoreReport) -> String {
    format!(
        "restore {}/{} to {}: {}, downloaded {} in {} chunks, {} zero chunks, {:.2} s, {}",
        r.snapshot,
        r.file,
        r.target,
        bytes(r.size),
        bytes(r.bytes_downloaded),
        r.chunks_downloaded,
        r.chunks_zero,
        r.seconds,
        rate(r.size, r.seconds),
    )
}
