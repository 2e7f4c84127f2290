//! `hoard prune`: removes the snapshots a retention policy does not keep.

use anyhow::Result;
use clap::Args;
use hoard_datastore::prune::{KeepPolicy, prune};
use hoard_datastore::reports::ReportKind;
use jiff::tz::TimeZone;

use crate::admin_args::{AdminArgs, AdminError, Target, ds_error};

#[derive(Args)]
pub struct PruneArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// A group (TYPE/ID) to prune; all groups if left out.
    group: Option<String>,
    /// Keep the N newest snapshots.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_hourly: u32,
    /// Keep the newest snapshot of each of the last N days.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_daily: u32,
    /// Keep the newest snapshot of each of the last N ISO weeks.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_weekly: u32,
    /// Keep the newest snapshot of each of the last N months.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_monthly: u32,
    /// Keep the newest snapshot of each of the last N years.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_yearly: u32,
    /// Show what would be kept and removed, and why; change nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
}

pub fn run(args: PruneArgs) -> Result<()> {
    let policy = KeepPolicy {
        last: args.keep_last,
        hourly: args.keep_hourly,
        daily: args.keep_daily,
        weekly: args.keep_weekly,
        monthly: args.keep_monthly,
        yearly: args.keep_yearly,
    };
    if policy.is_empty() {
        return Err(AdminError::fail(
            2,
            "no retention policy: give at least one --keep-* option (prune would remove \
             every unprotected snapshot)",
        ));
    }
    let target = Target::parse(args.group.as_deref())?;
    if let Target::Snapshot(s) = &target {
        return Err(AdminError::fail(
            2,
            format!("prune works on groups; {s} is a snapshot (use its group, TYPE/ID)"),
        ));
    }
    let ds = args.admin.open()?;
    // Periods are local time (TZ is honoured).
    let tz = TimeZone::system();
    let decisions = prune(
        &ds,
        &policy,
        &|g| target.matches_group(g),
        args.dry_run,
        &tz,
    );
    // A dry run changed nothing: the last prune stays the last one.
    if !args.dry_run {
        ds.keep_report(
            ReportKind::Prune,
            "cli",
            match &decisions {
                Ok(d) => Ok((
                    serde_json::json!({"dry_run": false, "policy": policy, "snapshots": d}),
                    true,
                )),
                Err(e) => Err(e.to_string()),
            },
        );
    }
    let decisions = decisions.map_err(ds_error)?;
    let removed = decisions.iter().filter(|d| d.action == "remove").count();
    let kept = decisions.len() - removed;
    let mut text: Vec<String> = decisions
        .iter()
        .map(|d| {
            let action = match (d.action, args.dry_run) {
                ("remove", true) => "would remove",
                ("remove", false) => "removed",
                _ => "keep",
            };
            format!("{action:<12} {}  {}", d.snapshot, d.reason.describe())
        })
        .collect();
    text.push(format!(
        "prune: {kept} kept, {removed} {}; run `hoard gc` to free their chunks",
        if args.dry_run {
            "would be removed"
        } else {
            "removed"
        }
    ));
    args.admin.emit(
        &serde_json::json!({
            "dry_run": args.dry_run,
            "policy": policy,
            "snapshots": decisions,
        }),
        &text,
    )?;
    Ok(())
}
