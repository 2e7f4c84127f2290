//! `hoard restore`: one image of a snapshot to a file, a block device or
//! standard output; or a file-tree archive (all of it, a subtree or one
//! file) into a directory.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use hoard_client::requests::{Listed, find_file, latest, list_snapshots};
use hoard_client::restore::{RestoreOptions, RestoreReport, Target, restore_image, restore_stream};
use hoard_client::tree_restore::{TreeRestoreOptions, has_archive, restore_tree};
use hoard_client::{Connection, Error, Progress};
use hoard_datastore::FileKind;
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
    /// The image's or archive's name in the snapshot, e.g.
    /// drive-scsi0.img or root.
    file: String,
    /// Image: a file (written sparse), a block device, or `-` for stdout.
    /// Archive: a directory that does not exist or is empty (or, for a
    /// single file with --path, the file to create).
    target: String,
    /// Replace TARGET if it is an existing file.
    #[arg(long)]
    overwrite: bool,
    /// Archives: restore only this path of the archive (a directory's
    /// contents or one file), e.g. etc/nginx.
    #[arg(long, value_name = "SUBPATH")]
    path: Option<String>,
}

/// `vm/100/latest` or a snapshot path.
pub(crate) enum Wanted {
    Latest(BackupGroup),
    Exact(SnapshotPath),
}

pub(crate) fn parse_wanted(s: &str) -> Result<Wanted, Error> {
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

pub(crate) async fn pick(conn: &Connection, wanted: &Wanted, file: &str) -> Result<Listed, Error> {
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
        Wanted::Latest(g) => {
            let keyed = conn.codec().key().is_some();
            latest(&list, g, file, keyed).ok_or_else(|| {
                Error::NotFound(format!(
                    "no complete snapshot of {g}{} holds a file named {file}",
                    if keyed {
                        " sealed with the key given"
                    } else {
                        ""
                    }
                ))
            })?
        }
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
    let progress = Arc::new(Progress::default());
    let rt = runtime()?;
    let conn = rt.block_on(args.client.connect())?;
    let snap = rt.block_on(pick(&conn, &wanted, &args.file))?;
    if has_archive(&snap.manifest, &args.file) {
        return run_tree(args, rt, conn, snap, progress);
    }
    if args.path.is_some() {
        return Err(Error::Usage(format!(
            "--path applies to file-tree archives; {} is a disk image",
            args.file
        ))
        .into());
    }
    let target = match args.target.as_str() {
        "-" => Target::Stdout,
        p => Target::Path(PathBuf::from(p)),
    };
    let opts = RestoreOptions {
        overwrite: args.overwrite,
        buffers: buffers(),
    };
    let report = rt.block_on(async {
        let file = find_file(&snap.manifest, &args.file).expect("picked by file");
        let view = ProgressView::start(progress.clone(), args.client.quiet, "restore");
        // A fixed index is a disk image; any other file (a stream a
        // version 1 client uploaded) comes back as its bytes.
        let result = match file.kind {
            FileKind::Fixed => restore_image(&conn, &snap, file, &target, &opts, progress).await,
            FileKind::Dynamic => restore_stream(&conn, &snap, file, &target, &opts, progress).await,
        };
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

fn run_tree(
    args: RestoreArgs,
    rt: tokio::runtime::Runtime,
    conn: Connection,
    snap: Listed,
    progress: Arc<Progress>,
) -> Result<()> {
    if args.target == "-" {
        return Err(
            Error::Usage("an archive restores into a directory, not to stdout".into()).into(),
        );
    }
    let opts = TreeRestoreOptions {
        path: args.path.clone().unwrap_or_default(),
        overwrite: args.overwrite,
        buffers: buffers(),
    };
    let target = PathBuf::from(&args.target);
    let report = rt.block_on(async {
        let conn = Arc::new(conn);
        let view = ProgressView::start(progress.clone(), args.client.quiet, "restore");
        let result = restore_tree(conn.clone(), &snap, &args.file, &target, &opts, progress).await;
        view.finish();
        let report = result?;
        conn.close_shared().await?;
        Ok::<_, Error>(report)
    })?;
    if args.client.output_format == OutputFormat::Json {
        print_json(&report)?;
    }
    args.client.summary(&format!(
        "restore {}/{}{} to {}: {} files, {} dirs, {} links, {} other, {}; downloaded {} data chunks ({}) and {} metadata chunks, {:.2} s, {}",
        report.snapshot,
        report.archive,
        if report.path.is_empty() { String::new() } else { format!(":{}", report.path) },
        report.target,
        report.files,
        report.dirs,
        report.links,
        report.others,
        bytes(report.bytes),
        report.data_chunks_downloaded,
        bytes(report.data_bytes_downloaded),
        report.meta_chunks_downloaded,
        report.seconds,
        rate(report.bytes, report.seconds),
    ));
    if report.failed > 0 {
        return Err(Error::Target {
            path: target,
            source: std::io::Error::other(format!(
                "{} entries could not be fully restored (listed above)",
                report.failed
            )),
        }
        .into());
    }
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
