//! `hoard protect` / `hoard unprotect`: a protected snapshot is never
//! removed by prune.

use anyhow::Result;
use clap::Args;
use hoard_types::SnapshotPath;

use crate::admin_args::{AdminArgs, AdminError, ds_error};

#[derive(Args)]
pub struct ProtectArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// The snapshot, TYPE/ID/TIME.
    snapshot: String,
}

pub fn run(args: ProtectArgs, protect: bool) -> Result<()> {
    let snap: SnapshotPath = args
        .snapshot
        .trim_end_matches('/')
        .parse()
        .map_err(|e| AdminError::fail(2, format!("{:?}: {e}", args.snapshot)))?;
    let ds = args.admin.open()?;
    let was = ds
        .update_manifest(&snap, |m| std::mem::replace(&mut m.protected, protect))
        .map_err(ds_error)?;
    let word = if protect { "protected" } else { "unprotected" };
    let line = if was == protect {
        format!("{snap} was {word} already")
    } else {
        format!("{snap} is now {word}")
    };
    args.admin.emit(
        &serde_json::json!({ "snapshot": snap.to_string(), "protected": protect, "changed": was != protect }),
        &[line],
    )?;
    Ok(())
}
