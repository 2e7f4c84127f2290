//! `hoard ls`: one directory of a file-tree archive, reading only the
//! chunks of the metadata stream on its path.

use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use hoard_client::Error;
use hoard_client::tree_restore::{Listing, has_archive, list};

use crate::client_args::{ClientArgs, OutputFormat, print_json, runtime};
use crate::restore::{parse_wanted, pick};

#[derive(Args)]
pub struct LsArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// TYPE/ID/TIME, or TYPE/ID/latest.
    snapshot: String,
    /// The archive's name in the snapshot, e.g. root.
    archive: String,
    /// A directory (or file) of the archive; the root by default.
    #[arg(default_value = "")]
    path: String,
}

pub fn run(args: LsArgs) -> Result<()> {
    let wanted = parse_wanted(&args.snapshot)?;
    let listing = runtime()?.block_on(async {
        let conn = args.client.connect().await?;
        let snap = pick(&conn, &wanted, &args.archive).await?;
        if !has_archive(&snap.manifest, &args.archive) {
            return Err(Error::Usage(format!(
                "{} in {} is a disk image, not a file-tree archive",
                args.archive, snap.path
            )));
        }
        let conn = Arc::new(conn);
        let listing = list(conn.clone(), &snap, &args.archive, &args.path).await?;
        conn.close_shared().await?;
        Ok::<_, Error>(listing)
    })?;
    if args.client.output_format == OutputFormat::Json {
        return print_json(&listing);
    }
    print_text(&listing)
}

/// `ls -l` columns: mode, owner/group ids, size, mtime (UTC), name.
fn print_text(l: &Listing) -> anyhow::Result<()> {
    let owner_width = l
        .entries
        .iter()
        .map(|e| format!("{}/{}", e.uid, e.gid).len())
        .max()
        .unwrap_or(3);
    let size_width = l
        .entries
        .iter()
        .map(|e| e.size.to_string().len())
        .max()
        .unwrap_or(1);
    for e in &l.entries {
        let owner = format!("{}/{}", e.uid, e.gid);
        // Seconds are enough here; --output-format json has nanoseconds.
        let when = e.mtime.get(..19).unwrap_or(&e.mtime).replace('T', " ");
        let mut name = e.name.clone();
        match (e.kind, &e.target) {
            ("dir", _) => name.push('/'),
            ("symlink", Some(t)) => name = format!("{name} -> {t}"),
            ("hardlink", Some(t)) => name = format!("{name} => {t}"),
            _ => {}
        }
        outln!(
            "{} {owner:>owner_width$} {:>size_width$} {when} {name}",
            e.mode,
            e.size
        )?;
    }
    Ok(())
}
