//! Prune: which snapshots of a group a retention policy keeps, and the
//! removal of the others. Only snapshots are removed; their chunks come
//! back through GC.
//!
//! # Semantics
//! Snapshots are taken newest first. The options apply in the order last,
//! hourly, daily, weekly, monthly, yearly; each keeps the newest snapshot
//! of each of the last N periods (hour, day, ISO week, month, year, in the
//! given time zone) that no earlier option already keeps a snapshot of.
//! `--keep-last N` keeps the N newest. A snapshot no option keeps is
//! removed, except:
//! - a protected snapshot, which is always kept and uses up no period;
//! - a snapshot a live writer holds ("in progress");
//! - an unfinished snapshot (incomplete, or its writer died) newer than
//!   the group's newest complete one ("partial"), which may be all there
//!   is of a failing backup; older unfinished ones are removed.

use std::collections::HashSet;

use hoard_types::{BackupGroup, SnapshotPath};
use jiff::tz::TimeZone;
use serde::Serialize;

use crate::datastore::{Datastore, Removal};
use crate::error::Result;
use crate::manifest::SnapshotState;

/// How many periods of each kind to keep. All zero keeps nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KeepPolicy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
}

impl KeepPolicy {
    pub fn is_empty(&self) -> bool {
        *self == KeepPolicy::default()
    }
}

/// Why a snapshot is kept or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Protected,
    InProgress,
    Partial,
    KeepLast,
    KeepHourly,
    KeepDaily,
    KeepWeekly,
    KeepMonthly,
    KeepYearly,
    /// Kept because a reader holds it (base of a running backup, restore).
    InUse,
    /// No option keeps it.
    Expired,
    /// Unfinished, and a newer complete snapshot exists.
    Superseded,
}

impl Reason {
    pub fn keeps(self) -> bool {
        !matches!(self, Reason::Expired | Reason::Superseded)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Reason::Protected => "protected",
            Reason::InProgress => "being written",
            Reason::Partial => "unfinished, newer than any complete snapshot",
            Reason::KeepLast => "keep-last",
            Reason::KeepHourly => "keep-hourly",
            Reason::KeepDaily => "keep-daily",
            Reason::KeepWeekly => "keep-weekly",
            Reason::KeepMonthly => "keep-monthly",
            Reason::KeepYearly => "keep-yearly",
            Reason::InUse => "in use (base of a running backup, or being read)",
            Reason::Expired => "not kept by any option",
            Reason::Superseded => "unfinished, a newer complete snapshot exists",
        }
    }
}

/// What the policy needs to know of one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Seconds since the epoch.
    pub time: i64,
    pub protected: bool,
    pub complete: bool,
    /// A live writer holds it.
    pub writing: bool,
}

type PeriodKey = (i64, i64, i64, i64);

/// Decides every candidate of one group; the result is in the order of
/// `candidates`.
pub fn plan(policy: &KeepPolicy, candidates: &[Candidate], tz: &TimeZone) -> Vec<Reason> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(candidates[i].time));
    let mut marks: Vec<Option<Reason>> = vec![None; candidates.len()];

    let newest_complete = candidates
        .iter()
        .filter(|c| c.complete && !c.writing)
        .map(|c| c.time)
        .max();
    for (i, c) in candidates.iter().enumerate() {
        marks[i] = if c.protected {
            Some(Reason::Protected)
        } else if c.writing {
            Some(Reason::InProgress)
        } else if !c.complete {
            Some(if newest_complete.is_some_and(|t| t > c.time) {
                Reason::Superseded
            } else {
                Reason::Partial
            })
        } else {
            None
        };
    }

    let civil = |t: i64| {
        jiff::Timestamp::from_second(t)
            .map(|ts| tz.to_datetime(ts))
            .unwrap_or_default()
    };
    type KeyFn<'a> = Box<dyn Fn(usize, i64) -> PeriodKey + 'a>;
    let rules: [(u32, Reason, KeyFn); 6] = [
        (
            policy.last,
            Reason::KeepLast,
            Box::new(|i, _| (i as i64, 0, 0, 0)),
        ),
        (
            policy.hourly,
            Reason::KeepHourly,
            Box::new(|_, t| {
                let d = civil(t);
                (
                    d.year().into(),
                    d.month().into(),
                    d.day().into(),
                    d.hour().into(),
                )
            }),
        ),
        (
            policy.daily,
            Reason::KeepDaily,
            Box::new(|_, t| {
                let d = civil(t);
                (d.year().into(), d.month().into(), d.day().into(), 0)
            }),
        ),
        (
            policy.weekly,
            Reason::KeepWeekly,
            Box::new(|_, t| {
                let w = civil(t).date().iso_week_date();
                (w.year().into(), w.week().into(), 0, 0)
            }),
        ),
        (
            policy.monthly,
            Reason::KeepMonthly,
            Box::new(|_, t| {
                let d = civil(t);
                (d.year().into(), d.month().into(), 0, 0)
            }),
        ),
        (
            policy.yearly,
            Reason::KeepYearly,
            Box::new(|_, t| (civil(t).year().into(), 0, 0, 0)),
        ),
    ];
    for (n, reason, key) in rules.iter() {
        if *n == 0 {
            continue;
        }
        // Periods an earlier option already keeps a snapshot of.
        let covered: HashSet<PeriodKey> = order
            .iter()
            .filter(|&&i| marks[i].is_some_and(is_rule_keep))
            .map(|&i| key(i, candidates[i].time))
            .collect();
        let mut taken: HashSet<PeriodKey> = HashSet::new();
        for &i in &order {
            if marks[i].is_some() {
                continue;
            }
            let k = key(i, candidates[i].time);
            if covered.contains(&k) || taken.contains(&k) {
                continue;
            }
            if taken.len() >= *n as usize {
                break;
            }
            taken.insert(k);
            marks[i] = Some(*reason);
        }
    }
    marks
        .into_iter()
        .map(|m| m.unwrap_or(Reason::Expired))
        .collect()
}

fn is_rule_keep(r: Reason) -> bool {
    matches!(
        r,
        Reason::KeepLast
            | Reason::KeepHourly
            | Reason::KeepDaily
            | Reason::KeepWeekly
            | Reason::KeepMonthly
            | Reason::KeepYearly
    )
}

/// One snapshot's fate.
#[derive(Debug, Clone, Serialize)]
pub struct PruneDecision {
    pub snapshot: String,
    /// "keep" or "remove".
    pub action: &'static str,
    pub reason: Reason,
    /// Whether it was removed (always false in a dry run).
    pub removed: bool,
}

/// Applies `policy` to every group `filter` accepts. With `dry_run`
/// nothing changes, but every decision (including "in use") is as a real
/// run would make it at this moment.
pub fn prune(
    ds: &Datastore,
    policy: &KeepPolicy,
    filter: &dyn Fn(&BackupGroup) -> bool,
    dry_run: bool,
    tz: &TimeZone,
) -> Result<Vec<PruneDecision>> {
    let mut groups: Vec<BackupGroup> = Vec::new();
    for s in ds.list_snapshots()? {
        if filter(&s.path.group) && groups.last() != Some(&s.path.group) {
            groups.push(s.path.group.clone());
        }
    }
    let mut out = Vec::new();
    for group in groups {
        let _group_lock = ds.lock_group(&group)?;
        // Listed again under the group lock: another prune may have run.
        let snaps: Vec<_> = ds
            .list_snapshots()?
            .into_iter()
            .filter(|s| s.path.group == group)
            .collect();
        let mut candidates = Vec::with_capacity(snaps.len());
        for s in &snaps {
            candidates.push(Candidate {
                time: s.path.time.epoch() as i64,
                protected: s.manifest.protected,
                complete: s.manifest.state == SnapshotState::Complete,
                writing: ds.writer_active(&s.path)?,
            });
        }
        let reasons = plan(policy, &candidates, tz);
        let mut decided: Vec<(SnapshotPath, Reason, bool)> = Vec::new();
        for (s, reason) in snaps.iter().zip(reasons) {
            let (reason, removed) = if reason.keeps() {
                (reason, false)
            } else {
                let removal = if dry_run {
                    ds.removal_blocker(&s.path)?.unwrap_or(Removal::Removed)
                } else {
                    ds.remove_snapshot(&s.path)?
                };
                match removal {
                    Removal::Removed | Removal::Gone => (reason, !dry_run),
                    Removal::InUse => (Reason::InUse, false),
                    Removal::BeingWritten => (Reason::InProgress, false),
                    Removal::Protected => (Reason::Protected, false),
                }
            };
            decided.push((s.path.clone(), reason, removed));
        }
        decided.sort_by(|a, b| b.0.cmp(&a.0));
        out.extend(
            decided
                .into_iter()
                .map(|(p, reason, removed)| PruneDecision {
                    snapshot: p.to_string(),
                    action: if reason.keeps() { "keep" } else { "remove" },
                    reason,
                    removed,
                }),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Reason::*;

    fn t(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().unwrap().as_second()
    }

    fn done(time: &str) -> Candidate {
        Candidate {
            time: t(time),
            protected: false,
            complete: true,
            writing: false,
        }
    }

    /// One hand-worked case: snapshots (in any order) with the reason each
    /// must get.
    fn check(policy: KeepPolicy, tz: &TimeZone, cases: &[(Candidate, Reason)]) {
        let candidates: Vec<Candidate> = cases.iter().map(|c| c.0).collect();
        let got = plan(&policy, &candidates, tz);
        let want: Vec<Reason> = cases.iter().map(|c| c.1).collect();
        assert_eq!(got, want, "policy {policy:?}");
    }

    fn cet() -> TimeZone {
        TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap()
    }

    #[test]
    fn keep_last_keeps_the_newest_n() {
        let p = KeepPolicy {
            last: 3,
            ..Default::default()
        };
        check(
            p,
            &TimeZone::UTC,
            &[
                (done("2021-01-01T00:00:00Z"), Expired),
                (done("2021-01-05T00:00:00Z"), KeepLast),
                (done("2021-01-02T00:00:00Z"), Expired),
                (done("2021-01-04T00:00:00Z"), KeepLast),
                (done("2021-01-03T00:00:00Z"), KeepLast),
            ],
        );
    }

    #[test]
    fn keep_daily_keeps_the_newest_of_each_day() {
        let p = KeepPolicy {
            daily: 2,
            ..Default::default()
        };
        check(
            p,
            &TimeZone::UTC,
            &[
                (done("2021-01-01T10:00:00Z"), Expired),
                (done("2021-01-01T18:00:00Z"), Expired),
                (done("2021-01-02T09:00:00Z"), KeepDaily),
                (done("2021-01-03T08:00:00Z"), Expired),
                (done("2021-01-03T20:00:00Z"), KeepDaily),
            ],
        );
    }

    #[test]
    fn a_period_kept_by_an_earlier_option_does_not_count() {
        // keep-last takes Jan 3 20:00, so keep-daily's two days are Jan 2
        // and Jan 1.
        let p = KeepPolicy {
            last: 1,
            daily: 2,
            ..Default::default()
        };
        check(
            p,
            &TimeZone::UTC,
            &[
                (done("2021-01-01T10:00:00Z"), Expired),
                (done("2021-01-01T18:00:00Z"), KeepDaily),
                (done("2021-01-02T09:00:00Z"), KeepDaily),
                (done("2021-01-03T08:00:00Z"), Expired),
                (done("2021-01-03T20:00:00Z"), KeepLast),
            ],
        );
    }

    #[test]
    fn weeks_are_iso_weeks_across_the_year_boundary() {
        // 2020-12-31 (Thu) and 2021-01-03 (Sun) are both in 2020-W53;
        // 2021-01-04 (Mon) starts 2021-W01.
        let p = KeepPolicy {
            weekly: 2,
            ..Default::default()
        };
        check(
            p,
            &TimeZone::UTC,
            &[
                (done("2020-12-31T12:00:00Z"), Expired),
                (done("2021-01-03T12:00:00Z"), KeepWeekly),
                (done("2021-01-04T12:00:00Z"), KeepWeekly),
            ],
        );
    }

    #[test]
    fn days_are_local_days() {
        // In CEST (UTC+2) 22:30Z is 00:30 the next day; 21:30Z is 23:30.
        let p = KeepPolicy {
            daily: 2,
            ..Default::default()
        };
        let cases = [
            (done("2021-06-01T10:00:00Z"), Expired),
            (done("2021-06-01T21:30:00Z"), KeepDaily),
            (done("2021-06-01T22:30:00Z"), KeepDaily),
        ];
        check(p, &cet(), &cases);
        // The same snapshots in UTC: one day, then the day before has none.
        check(
            p,
            &TimeZone::UTC,
            &[
                (done("2021-06-01T10:00:00Z"), Expired),
                (done("2021-06-01T21:30:00Z"), Expired),
                (done("2021-06-01T22:30:00Z"), KeepDaily),
            ],
        );
    }

    #[test]
    fn a_local_hour_repeated_by_the_dst_change_is_one_period() {
        // 2021-10-31 in CET: 00:30Z is 02:30 CEST, 01:30Z is 02:30 CET.
        let p = KeepPolicy {
            hourly: 3,
            ..Default::default()
        };
        check(
            p,
            &cet(),
            &[
                (done("2021-10-30T23:30:00Z"), KeepHourly), // 01:30 CEST
                (done("2021-10-31T00:30:00Z"), Expired),    // 02:30 CEST
                (done("2021-10-31T01:30:00Z"), KeepHourly), // 02:30 CET
                (done("2021-10-31T02:30:00Z"), KeepHourly), // 03:30 CET
            ],
        );
    }

    #[test]
    fn monthly_then_yearly() {
        let p = KeepPolicy {
            monthly: 2,
            yearly: 2,
            ..Default::default()
        };
        check(
            p,
            &TimeZone::UTC,
            &[
                (done("2019-12-15T00:00:00Z"), KeepYearly),
                (done("2020-11-10T00:00:00Z"), KeepMonthly),
                (done("2020-12-01T00:00:00Z"), Expired),
                (done("2020-12-20T00:00:00Z"), KeepMonthly),
            ],
        );
    }

    #[test]
    fn a_month_split_by_a_kept_week_still_gets_its_newest() {
        // Mar 31 and Apr 1 2021 share ISO week 13. keep-weekly keeps
        // Apr 1; March has no kept snapshot yet, so keep-monthly keeps
        // March's newest, Mar 31.
        let p = KeepPolicy {
            weekly: 1,
            monthly: 2,
            ..Default::default()
        };
        check(
            p,
            &TimeZone::UTC,
            &[
                (done("2021-03-31T12:00:00Z"), KeepMonthly),
                (done("2021-04-01T12:00:00Z"), KeepWeekly),
            ],
        );
    }

    #[test]
    fn protected_in_progress_and_partial_snapshots() {
        let p = KeepPolicy {
            last: 1,
            ..Default::default()
        };
        let mut protected = done("2021-01-05T00:00:00Z");
        protected.protected = true;
        let mut writing = done("2021-01-06T00:00:00Z");
        writing.writing = true;
        writing.complete = false;
        let mut partial_new = done("2021-01-05T12:00:00Z");
        partial_new.complete = false;
        let mut partial_old = done("2021-01-02T00:00:00Z");
        partial_old.complete = false;
        let mut old_protected = done("2020-01-01T00:00:00Z");
        old_protected.protected = true;
        check(
            p,
            &TimeZone::UTC,
            &[
                (writing, InProgress),
                (protected, Protected),
                // Protected snapshots use no slot: keep-last 1 is this one.
                (partial_new, Partial),
                (done("2021-01-04T00:00:00Z"), KeepLast),
                (done("2021-01-03T00:00:00Z"), Expired),
                (partial_old, Superseded),
                (old_protected, Protected),
            ],
        );
    }

    #[test]
    fn an_empty_policy_keeps_nothing_but_the_exceptions() {
        let mut protected = done("2021-01-05T00:00:00Z");
        protected.protected = true;
        check(
            KeepPolicy::default(),
            &TimeZone::UTC,
            &[
                (done("2021-01-04T00:00:00Z"), Expired),
                (protected, Protected),
            ],
        );
    }
}
