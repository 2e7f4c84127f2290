//! `hoard gc`: removes the chunks no snapshot references, while backups
//! keep running.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use hoard_datastore::gc::{GcEvent, GcOptions, collect_garbage};

use crate::admin_args::{AdminArgs, ds_error, mib, parse_duration};

#[derive(Args)]
pub struct GcArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// How much older than the GC's start (and than the oldest running
    /// backup) an unreferenced chunk must be to go: a guard against the
    /// clock being set back. `0` removes every unreferenced chunk that no
    /// running backup may still use.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    grace: Duration,
}

pub fn run(args: GcArgs) -> Result<()> {
    let ds = args.admin.open()?;
    let started = Instant::now();
    let marking = args
        .admin
        .bar(0, "marking {bar:30} {pos}/{len} indexes, {msg} chunks");
    let sweeping = args
        .admin
        .bar(256, "sweeping {bar:30} {pos}/{len} directories");
    let opts = GcOptions {
        grace: args.grace,
        ..GcOptions::default()
    };
    let report = collect_garbage(&ds, &opts, &|e| match e {
        GcEvent::Listed { indexes, .. } => marking.set_length(*indexes),
        GcEvent::Marking {
            indexes_done,
            chunks,
            ..
        } => {
            marking.set_position(*indexes_done);
            marking.set_message(chunks.to_string());
        }
        GcEvent::Marked => marking.finish_and_clear(),
        GcEvent::Sweeping { prefixes_done } => sweeping.set_position(*prefixes_done as u64),
        GcEvent::Swept => sweeping.finish_and_clear(),
        GcEvent::Started { .. } => {}
    });
    ds.keep_outcome("cli", &report);
    let report = report.map_err(ds_error)?;
    let secs = started.elapsed().as_secs_f64();
    let mut json = serde_json::to_value(&report)?;
    json["seconds"] = serde_json::json!(secs);
    let mut text = vec![format!(
        "gc: {} snapshots, {} indexes, {} chunk references marked{}",
        report.snapshots,
        report.indexes,
        report.references,
        if report.vanished_indexes > 0 {
            format!(" ({} indexes pruned meanwhile)", report.vanished_indexes)
        } else {
            String::new()
        }
    )];
    text.push(format!(
        "gc: removed {} chunks ({}), kept {} chunks ({}) in {secs:.2} s",
        report.removed_chunks,
        mib(report.removed_bytes),
        report.kept_chunks,
        mib(report.kept_bytes),
    ));
    if report.missing_chunks > 0 {
        text.push(format!(
            "gc: warning: {} referenced chunks are missing; `hoard verify` names the snapshots",
            report.missing_chunks
        ));
    }
    for snap in &report.snapshots_made_incomplete {
        text.push(format!(
            "gc: {snap} was left unfinished by a dead writer: now incomplete"
        ));
    }
    for snap in &report.snapshots_removed_empty {
        text.push(format!(
            "gc: {snap} was left empty by a dead writer: removed"
        ));
    }
    if report.temp_files_removed > 0 {
        text.push(format!(
            "gc: removed {} temporary files left by a crash",
            report.temp_files_removed
        ));
    }
    args.admin.emit(&json, &text)?;
    Ok(())
}
