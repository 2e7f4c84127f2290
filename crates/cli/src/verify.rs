//! `hoard verify`: reads and checks every chunk of the chosen snapshots
//! and records the outcome in their manifests.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use hoard_datastore::verify::{VerifyEvent, VerifyOptions, verify};

use crate::admin_args::{AdminArgs, AdminError, Target, ds_error, mib, parse_duration};

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// A snapshot (TYPE/ID/TIME) or a group (TYPE/ID); everything if
    /// left out.
    target: Option<String>,
    /// Skip snapshots whose last verification passed within this long
    /// (e.g. `30d`).
    #[arg(long, value_parser = parse_duration, value_name = "AGE")]
    skip_verified_within: Option<Duration>,
}

pub fn run(args: VerifyArgs) -> Result<()> {
    let target = Target::parse(args.target.as_deref())?;
    let ds = args.admin.open()?;
    let started = Instant::now();
    let bar = args.admin.bar(
        0,
        "verifying {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
    );
    let opts = VerifyOptions {
        skip_verified_within: args.skip_verified_within,
        ..VerifyOptions::default()
    };
    let report = verify(&ds, &|s| target.matches(s), &opts, &|e| match e {
        VerifyEvent::Selected { .. } => {}
        VerifyEvent::Checked { bytes } => bar.inc(*bytes),
    });
    ds.keep_outcome("cli", &report);
    let report = report.map_err(ds_error)?;
    bar.finish_and_clear();
    if report.snapshots.is_empty() && !matches!(target, Target::All) {
        return Err(AdminError::fail(
            4,
            format!("no snapshot matches {}", args.target.unwrap_or_default()),
        ));
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = report.bytes_checked as f64 / 1e6 / secs.max(1e-9);
    let mut json = serde_json::to_value(&report)?;
    json["seconds"] = serde_json::json!(secs);
    json["mb_per_s"] = serde_json::json!(rate);

    let mut text = Vec::new();
    for s in &report.snapshots {
        let reason = s
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        text.push(format!("{:<8} {}{reason}", s.result, s.snapshot));
    }
    for f in &report.findings {
        let file = f
            .file
            .as_deref()
            .map(|f| format!("/{f}"))
            .unwrap_or_default();
        let chunk = f
            .digest
            .as_deref()
            .map(|d| format!(" chunk {d}:"))
            .unwrap_or_default();
        text.push(format!("  {}{file}:{chunk} {}", f.snapshot, f.problem));
    }
    for b in &report.bad_chunks {
        let moved = b
            .moved_to
            .as_deref()
            .map(|p| format!(", moved to {p}"))
            .unwrap_or_default();
        text.push(format!(
            "  bad chunk {} ({}{moved}), used by {}",
            b.digest,
            b.problem,
            b.used_by.join(", ")
        ));
    }
    for n in &report.notes {
        text.push(format!("  note: {n}"));
    }
    if report.chunks_encrypted > 0 {
        text.push(format!(
            "  note: {} of the chunks are encrypted by their clients: checked for structure and CRC only (their digests are keyed; a client with the key checks their content on restore)",
            report.chunks_encrypted
        ));
    }
    let failed = report.failed();
    text.push(format!(
        "verify: {} snapshots, {} chunks, {} in {secs:.2} s ({rate:.0} MB/s); {failed} failed",
        report.snapshots.len(),
        report.chunks_checked,
        mib(report.bytes_checked),
    ));
    args.admin.emit(&json, &text)?;
    if failed > 0 {
        return Err(AdminError::fail(
            8,
            format!("{failed} snapshot(s) failed verification"),
        ));
    }
    Ok(())
}
