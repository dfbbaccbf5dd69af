//! Retention: which backups of one domain to keep, as a pure function from a list of backups
//! and keep options to marks (Proxmox Backup Server's and restic's `forget` model), so every
//! rule is tested on made-up calendars in milliseconds and `prune` only carries marks out.
//!
//! # Rules
//! Backups are considered newest first. Each rule works on its own, as in restic, and a backup
//! kept by several rules lists every reason:
//! - `last N`: the N newest backups.
//! - `hourly`/`daily`/`weekly`/`monthly`/`yearly N`: the newest backup of each of the N most
//!   recent periods that have a backup. Periods are UTC calendar hours, days, ISO 8601 weeks
//!   (ISO week-numbering year and week, so 2027-01-01 is in week 53 of 2026), months and
//!   calendar years.
//! - `within S`: every backup at most S seconds older than the newest backup (relative to the
//!   newest backup, not to the clock, as restic does; the function stays pure).
//!
//! A value of 0 is the same as not giving the option. Giving none at all is refused
//! ([`RetentionError::NoKeepOption`]) rather than read as "remove everything", as restic does.
//!
//! # Chains
//! An incremental backup records its `parent`; it can be restored only if every ancestor
//! exists. So, after the rules:
//! - every ancestor of a kept backup is kept too, with the reason `needed by <id>` (the newest
//!   kept backup that needs it), so a kept backup is always restorable;
//! - a backup with an ancestor missing from the list (or with a parent cycle) is *broken*: it
//!   cannot be restored. Broken backups are always marked `Remove` with the reason
//!   `broken chain (parent X missing)` (or `ancestor X`), even if a rule would have chosen
//!   them, and the rules count only restorable backups, so a broken backup never takes the
//!   place of one that can be restored. Keeping a backup that cannot be restored would only
//!   give false confidence; the report says why it went.
//!
//! # Unreadable backups
//! A backup whose manifest cannot be read (damaged and quarantined by `prune`, written by a
//! newer version, an I/O error) is given with `held`: it is kept whatever the rules say (reason
//! `unreadable`), so is every ancestor it names (`parent` as far as it could be told; `needed
//! by <id>`), and so is every backup whose chain goes through it (`depends on <id>`): once the
//! manifest is repaired or a newer build reads it, the whole chain restores again. None of them
//! counts for the rules, which choose among restorable backups only.
//!
//! # Order
//! "Newest" is by `sequence` (the per-domain counter the manifest records), then by id, not by
//! time: after the wall clock steps back, a newer backup has an earlier time, and the newest
//! is still the one taken last. Backups without a sequence (older versions) come before every
//! backup with one. Periods are still the calendar periods of each backup's time; a period
//! counts once, when its newest backup (in this order) is met.
//!
//! Consequence: when any option is given, the newest restorable backup is always kept (it is
//! the newest of its hour, day, week, month and year, and within any span of itself).

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::naming::{backup_id_from_unix, civil_from_days};

/// How many backups of each kind to keep. `None` and `Some(0)` both mean "this rule keeps
/// nothing".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepOptions {
    /// Keep the N newest backups.
    pub last: Option<u32>,
    /// Keep the newest backup of each of the last N hours that have backups.
    pub hourly: Option<u32>,
    /// Keep the newest backup of each of the last N days that have backups.
    pub daily: Option<u32>,
    /// Keep the newest backup of each of the last N ISO weeks that have backups.
    pub weekly: Option<u32>,
    /// Keep the newest backup of each of the last N months that have backups.
    pub monthly: Option<u32>,
    /// Keep the newest backup of each of the last N years that have backups.
    pub yearly: Option<u32>,
    /// Keep every backup at most this many seconds older than the newest backup.
    pub within_seconds: Option<u64>,
}

impl KeepOptions {
    /// Whether at least one rule keeps something.
    pub fn keeps_something(&self) -> bool {
        [
            self.last,
            self.hourly,
            self.daily,
            self.weekly,
            self.monthly,
            self.yearly,
        ]
        .iter()
        .any(|n| n.unwrap_or(0) > 0)
            || self.within_seconds.unwrap_or(0) > 0
    }

    /// Refuses options that keep nothing.
    pub fn validate(&self) -> Result<(), RetentionError> {
        if self.keeps_something() {
            Ok(())
        } else {
            Err(RetentionError::NoKeepOption)
        }
    }
}

/// One backup of a domain, as retention needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupEntry {
    /// Backup id (unique within the domain).
    pub id: String,
    /// When the backup was taken, Unix seconds (UTC).
    pub time: i64,
    /// Its place in the domain's history (manifest version 2 on); see "Order" above.
    pub sequence: Option<u64>,
    /// The backup this one depends on (incrementals), by id.
    pub parent: Option<String>,
    /// Its manifest cannot be read: kept with its chain, never chosen by a rule.
    pub held: bool,
}

/// Why a backup is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepReason {
    /// One of the `last` newest.
    Last,
    /// Newest of its hour.
    Hourly,
    /// Newest of its day.
    Daily,
    /// Newest of its ISO week.
    Weekly,
    /// Newest of its month.
    Monthly,
    /// Newest of its year.
    Yearly,
    /// Within `within_seconds` of the newest backup.
    Within,
    /// An ancestor of a kept backup (the newest kept backup that depends on it).
    NeededBy(String),
    /// Its manifest cannot be read (`BackupEntry::held`).
    Unreadable,
    /// Its chain goes through a backup whose manifest cannot be read.
    DependsOn(String),
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::Last => f.write_str("keep-last"),
            KeepReason::Hourly => f.write_str("keep-hourly"),
            KeepReason::Daily => f.write_str("keep-daily"),
            KeepReason::Weekly => f.write_str("keep-weekly"),
            KeepReason::Monthly => f.write_str("keep-monthly"),
            KeepReason::Yearly => f.write_str("keep-yearly"),
            KeepReason::Within => f.write_str("keep-within"),
            KeepReason::NeededBy(id) => write!(f, "needed by {id}"),
            KeepReason::Unreadable => f.write_str("its manifest cannot be read"),
            KeepReason::DependsOn(id) => {
                write!(f, "depends on {id}, whose manifest cannot be read")
            }
        }
    }
}

/// Why a backup is removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoveReason {
    /// No rule chose it and no kept backup needs it.
    NotSelected,
    /// It cannot be restored: `missing` is not in the list. `direct` when `missing` is its
    /// own parent rather than a further ancestor.
    BrokenChain { missing: String, direct: bool },
    /// It cannot be restored: its ancestry loops back to `at`.
    ParentCycle { at: String },
}

impl fmt::Display for RemoveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoveReason::NotSelected => f.write_str("not selected by any keep option"),
            RemoveReason::BrokenChain {
                missing,
                direct: true,
            } => write!(f, "broken chain (parent {missing} missing)"),
            RemoveReason::BrokenChain {
                missing,
                direct: false,
            } => write!(f, "broken chain (ancestor {missing} missing)"),
            RemoveReason::ParentCycle { at } => {
                write!(f, "broken chain (parent cycle at {at})")
            }
        }
    }
}

/// Keep (with every reason) or remove (with the reason).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PruneMark {
    /// Kept; never empty.
    Keep(Vec<KeepReason>),
    /// Removed.
    Remove(RemoveReason),
}

impl PruneMark {
    /// Whether the backup is kept.
    pub fn is_keep(&self) -> bool {
        matches!(self, PruneMark::Keep(_))
    }
}

/// The mark of one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneDecision {
    /// Backup id.
    pub id: String,
    /// Its mark.
    pub mark: PruneMark,
}

/// Why retention could not decide.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RetentionError {
    /// Every keep option is missing or 0.
    #[error("no keep option given; nothing would be kept (give at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-within)")]
    NoKeepOption,
    /// Two backups share an id, so parents cannot be resolved.
    #[error("two backups have the id {0}; parents cannot be resolved, nothing is decided")]
    DuplicateId(String),
}

/// Marks every backup of one domain Keep or Remove. Returns one decision per entry, in the
/// order of `backups`. See the module doc for the rules.
pub fn compute_prune(
    backups: &[BackupEntry],
    keep: &KeepOptions,
) -> Result<Vec<PruneDecision>, RetentionError> {
    keep.validate()?;
    let mut by_id: HashMap<&str, usize> = HashMap::with_capacity(backups.len());
    for (index, entry) in backups.iter().enumerate() {
        if by_id.insert(entry.id.as_str(), index).is_some() {
            return Err(RetentionError::DuplicateId(entry.id.clone()));
        }
    }

    let states: Vec<ChainState> = backups
        .iter()
        .map(|entry| chain_state(entry, backups, &by_id))
        .collect();

    // Restorable backups, newest first (see "Order").
    let mut order: Vec<usize> = (0..backups.len())
        .filter(|&i| matches!(states[i], ChainState::Restorable))
        .collect();
    order.sort_by(|&a, &b| {
        (backups[b].sequence, &backups[b].id).cmp(&(backups[a].sequence, &backups[a].id))
    });

    let mut reasons: Vec<Vec<KeepReason>> = vec![Vec::new(); backups.len()];
    // `None` as period: every backup is a period of its own (`last`).
    let rules: [(Option<u32>, KeepReason, Option<PeriodOf>); 6] = [
        (keep.last, KeepReason::Last, None),
        (keep.hourly, KeepReason::Hourly, Some(hour_period)),
        (keep.daily, KeepReason::Daily, Some(day_period)),
        (keep.weekly, KeepReason::Weekly, Some(week_period)),
        (keep.monthly, KeepReason::Monthly, Some(month_period)),
        (keep.yearly, KeepReason::Yearly, Some(year_period)),
    ];
    for (count, reason, period_of) in rules {
        let mut left = count.unwrap_or(0);
        // A set, not the last period: after a clock step, times along `order` go back and forth.
        let mut seen = HashSet::new();
        for &i in &order {
            if left == 0 {
                break;
            }
            let period = period_of.map(|f| f(backups[i].time));
            if period.is_none_or(|p| seen.insert(p)) {
                reasons[i].push(reason.clone());
                left -= 1;
            }
        }
    }
    if let (Some(span), Some(&newest)) = (keep.within_seconds.filter(|&s| s > 0), order.first()) {
        let limit = backups[newest].time.saturating_sub_unsigned(span);
        for &i in &order {
            if backups[i].time >= limit {
                reasons[i].push(KeepReason::Within);
            }
        }
    }

    // Unreadable backups and those whose chain goes through one: kept, outside the rules.
    for (i, state) in states.iter().enumerate() {
        match state {
            ChainState::Held => reasons[i].push(KeepReason::Unreadable),
            ChainState::DependsOn(held) => {
                reasons[i].push(KeepReason::DependsOn(backups[*held].id.clone()))
            }
            _ => {}
        }
    }

    // Dependency closure, newest first, so each ancestor names the newest kept backup that
    // needs it; then the ancestors of unreadable backups, as far as their parent is known.
    // The walk stops at a missing ancestor, and at one already marked (which also ends a cycle
    // through an unreadable backup, whose parent is only a hint).
    let mut anchors: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| !reasons[i].is_empty())
        .collect();
    let mut held: Vec<usize> = (0..backups.len())
        .filter(|&i| matches!(states[i], ChainState::Held))
        .collect();
    held.sort_by(|&a, &b| {
        (backups[b].sequence, &backups[b].id).cmp(&(backups[a].sequence, &backups[a].id))
    });
    anchors.extend(held);
    let mut needed: HashSet<usize> = HashSet::new();
    for i in anchors {
        let mut cursor = backups[i].parent.as_deref();
        while let Some(&p) = cursor.and_then(|id| by_id.get(id)) {
            if p == i || !needed.insert(p) {
                break; // its ancestors already name a newer dependant
            }
            if !matches!(states[p], ChainState::Held) {
                reasons[p].push(KeepReason::NeededBy(backups[i].id.clone()));
            }
            cursor = backups[p].parent.as_deref();
        }
    }

    Ok(backups
        .iter()
        .zip(states)
        .zip(reasons)
        .map(|((entry, state), reasons)| PruneDecision {
            id: entry.id.clone(),
            mark: match state {
                ChainState::Broken(reason) => PruneMark::Remove(reason),
                _ if reasons.is_empty() => PruneMark::Remove(RemoveReason::NotSelected),
                _ => PruneMark::Keep(reasons),
            },
        })
        .collect())
}

/// What a backup's chain of parents allows.
enum ChainState {
    /// Every ancestor is in the list and readable.
    Restorable,
    /// It cannot be read itself (`held`).
    Held,
    /// Its chain goes through this unreadable backup (index), nearest first.
    DependsOn(usize),
    /// An ancestor is missing, or the parents loop.
    Broken(RemoveReason),
}

/// The state of `entry`'s chain: walks its parents up to a full, an unreadable backup, a
/// missing ancestor or a loop.
fn chain_state(
    entry: &BackupEntry,
    backups: &[BackupEntry],
    by_id: &HashMap<&str, usize>,
) -> ChainState {
    if entry.held {
        return ChainState::Held;
    }
    let mut seen: HashSet<&str> = HashSet::from([entry.id.as_str()]);
    let mut cursor = entry.parent.as_deref();
    while let Some(id) = cursor {
        let Some(&p) = by_id.get(id) else {
            return ChainState::Broken(RemoveReason::BrokenChain {
                missing: id.to_string(),
                direct: entry.parent.as_deref() == Some(id),
            });
        };
        if backups[p].held {
            return ChainState::DependsOn(p);
        }
        if !seen.insert(id) {
            return ChainState::Broken(RemoveReason::ParentCycle { at: id.to_string() });
        }
        cursor = backups[p].parent.as_deref();
    }
    ChainState::Restorable
}

/// The period (hour, day, ...) a time falls in, as a number equal for equal periods.
type PeriodOf = fn(i64) -> i64;

fn hour_period(time: i64) -> i64 {
    time.div_euclid(3600)
}

fn day_period(time: i64) -> i64 {
    time.div_euclid(86_400)
}

fn week_period(time: i64) -> i64 {
    let (year, week) = iso_week(day_period(time));
    year * 100 + i64::from(week)
}

fn month_period(time: i64) -> i64 {
    let (year, month, _) = civil_from_days(day_period(time));
    year * 12 + i64::from(month)
}

fn year_period(time: i64) -> i64 {
    civil_from_days(day_period(time)).0
}

/// ISO 8601 week-numbering year and week (1..=53) of a day given as days since 1970-01-01.
/// The week belongs to the year that holds its Thursday.
pub fn iso_week(days: i64) -> (i64, u32) {
    // 1970-01-01 was a Thursday; Monday = 0.
    let weekday = (days + 3).rem_euclid(7);
    let thursday = days - weekday + 3;
    let (year, _, _) = civil_from_days(thursday);
    let week = (thursday - days_from_civil(year, 1, 1)) / 7 + 1;
    (year, week as u32)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`,
/// the inverse of `naming::civil_from_days`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The start time (Unix seconds, UTC) a backup id names, or `None` if `id` is not exactly a
/// backup id (`YYYYMMDDTHHMMSS.mmmZ`, a real date and time). Only names this accepts are ever
/// treated as backups by `prune`.
pub fn parse_backup_id(id: &str) -> Option<i64> {
    let b = id.as_bytes();
    if !id.is_ascii() || b.len() != 20 || b[8] != b'T' || b[15] != b'.' || b[19] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = &id[range];
        if digits.bytes().all(|c| c.is_ascii_digit()) {
            digits.parse().ok()
        } else {
            None
        }
    };
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second, millis) = (num(9..11)?, num(11..13)?, num(13..15)?, num(16..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let secs = days_from_civil(year, month as u32, day as u32) * 86_400
        + hour * 3600
        + minute * 60
        + second;
    // Formatting back rejects what does not exist (Feb 30, hour 24, second 60).
    (backup_id_from_unix(secs, millis as u32) == id).then_some(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix seconds of a UTC date and time, for made-up calendars.
    fn at(year: i64, month: u32, day: u32, hour: i64) -> i64 {
        days_from_civil(year, month, day) * 86_400 + hour * 3600
    }

    fn full(time: i64) -> BackupEntry {
        BackupEntry {
            id: backup_id_from_unix(time, 0),
            time,
            ..BackupEntry::default()
        }
    }

    fn incremental(time: i64, parent: &BackupEntry) -> BackupEntry {
        BackupEntry {
            parent: Some(parent.id.clone()),
            ..full(time)
        }
    }

    fn kept_ids(backups: &[BackupEntry], keep: &KeepOptions) -> Vec<String> {
        let mut ids: Vec<String> = compute_prune(backups, keep)
            .unwrap()
            .into_iter()
            .filter(|d| d.mark.is_keep())
            .map(|d| d.id)
            .collect();
        ids.sort();
        ids
    }

    fn mark_of(decisions: &[PruneDecision], id: &str) -> PruneMark {
        decisions.iter().find(|d| d.id == id).unwrap().mark.clone()
    }

    #[test]
    fn iso_weeks_at_year_ends_match_gnu_date() {
        // Expected values from `date -u -d <day> +%G-W%V`.
        let cases = [
            ((2026, 11, 30), (2026, 49)),
            ((2026, 12, 27), (2026, 52)),
            ((2026, 12, 28), (2026, 53)),
            ((2026, 12, 31), (2026, 53)),
            ((2027, 1, 1), (2026, 53)),
            ((2027, 1, 3), (2026, 53)),
            ((2027, 1, 4), (2027, 1)),
            ((2024, 12, 30), (2025, 1)),
            ((2021, 1, 3), (2020, 53)),
            ((1970, 1, 1), (1970, 1)),
        ];
        for ((y, m, d), expected) in cases {
            assert_eq!(iso_week(days_from_civil(y, m, d)), expected, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn days_from_civil_inverts_civil_from_days() {
        for days in (-800_000..800_000).step_by(97) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn backup_ids_parse_to_their_time_and_nothing_else_does() {
        // 2026-11-26 09:52:43 UTC, checked with `date -u -d @1795686763`.
        assert_eq!(parse_backup_id("20261126T095243.007Z"), Some(1_795_686_763));
        assert_eq!(parse_backup_id("20000229T000000.999Z"), Some(951_782_400));
        for bad in [
            "",
            "notes",
            "20261126T095243.007",
            "20261126T095243.007Z/",
            "20261126t095243.007Z",
            "20261130T240000.000Z",
            "20260230T000000.000Z",
            "20261126T095260.000Z",
            "2026112+T095243.007Z",
            "20261326T095243.007Z",
            ".partial-20261126T095243.007Z",
            "20261\u{e9}1T095243.007Z",
        ] {
            assert_eq!(parse_backup_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn no_keep_option_is_refused_rather_than_removing_everything() {
        let backups = [full(at(2026, 11, 1, 2))];
        assert_eq!(
            compute_prune(&backups, &KeepOptions::default()),
            Err(RetentionError::NoKeepOption)
        );
        let zeros = KeepOptions {
            last: Some(0),
            daily: Some(0),
            within_seconds: Some(0),
            ..KeepOptions::default()
        };
        assert_eq!(
            compute_prune(&backups, &zeros),
            Err(RetentionError::NoKeepOption)
        );
        assert!(RetentionError::NoKeepOption
            .to_string()
            .starts_with("no keep option given; nothing would be kept"));
        // Refused even when there is nothing to decide.
        assert_eq!(
            compute_prune(&[], &KeepOptions::default()),
            Err(RetentionError::NoKeepOption)
        );
    }

    #[test]
    fn an_empty_list_gives_no_decisions() {
        let keep = KeepOptions {
            last: Some(3),
            ..KeepOptions::default()
        };
        assert_eq!(compute_prune(&[], &keep), Ok(Vec::new()));
    }

    #[test]
    fn keep_last_keeps_the_newest_in_input_order() {
        // Given oldest last, to show the input order is not assumed.
        let backups: Vec<BackupEntry> = (1..=5).rev().map(|d| full(at(2026, 11, d, 2))).collect();
        let keep = KeepOptions {
            last: Some(2),
            ..KeepOptions::default()
        };
        let decisions = compute_prune(&backups, &keep).unwrap();
        let ids: Vec<&str> = decisions.iter().map(|d| d.id.as_str()).collect();
        let input: Vec<&str> = backups.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, input, "one decision per entry, in input order");
        assert_eq!(
            kept_ids(&backups, &keep),
            ["20261104T020000.000Z", "20261105T020000.000Z"]
        );
        assert_eq!(
            mark_of(&decisions, "20261101T020000.000Z"),
            PruneMark::Remove(RemoveReason::NotSelected)
        );
        // More than there are keeps all.
        let keep = KeepOptions {
            last: Some(9),
            ..KeepOptions::default()
        };
        assert_eq!(kept_ids(&backups, &keep).len(), 5);
    }

    #[test]
    fn three_months_of_dailies_with_daily_7_weekly_4_monthly_3() {
        // A backup at 02:00 UTC every day from 2026-09-01 to 2026-11-30 (a Monday).
        let start = days_from_civil(2026, 9, 1);
        let end = days_from_civil(2026, 11, 30);
        let backups: Vec<BackupEntry> = (start..=end).map(|d| full(d * 86_400 + 7200)).collect();
        assert_eq!(backups.len(), 91);
        let keep = KeepOptions {
            daily: Some(7),
            weekly: Some(4),
            monthly: Some(3),
            ..KeepOptions::default()
        };
        // Worked out by hand with `date +%G-W%V`:
        // daily: Nov 24..30; weekly: W49 Mon Nov 30, W48 Sun Nov 29, W47 Sun Nov 22,
        // W46 Sun Nov 15; monthly: Nov 30, Oct 31, Sep 30.
        let expected = [
            "20260930", "20261031", "20261115", "20261122", "20261124", "20261125", "20261126",
            "20261127", "20261128", "20261129", "20261130",
        ]
        .map(|day| format!("{day}T020000.000Z"));
        assert_eq!(kept_ids(&backups, &keep), expected);

        let decisions = compute_prune(&backups, &keep).unwrap();
        use KeepReason::*;
        let reasons = |day: &str| match mark_of(&decisions, &format!("{day}T020000.000Z")) {
            PruneMark::Keep(r) => r,
            other => panic!("{day}: {other:?}"),
        };
        assert_eq!(reasons("20261130"), [Daily, Weekly, Monthly]);
        assert_eq!(reasons("20261129"), [Daily, Weekly]);
        assert_eq!(reasons("20261122"), [Weekly]);
        assert_eq!(reasons("20261031"), [Monthly]);
    }

    #[test]
    fn the_newest_backup_of_a_day_wins() {
        let early = full(at(2026, 11, 26, 1));
        let late = full(at(2026, 11, 26, 23));
        let before = full(at(2026, 11, 25, 23));
        let keep = KeepOptions {
            daily: Some(1),
            ..KeepOptions::default()
        };
        assert_eq!(
            kept_ids(&[early.clone(), late.clone(), before.clone()], &keep),
            [late.id.as_str()]
        );
        let keep = KeepOptions {
            daily: Some(2),
            ..KeepOptions::default()
        };
        assert_eq!(
            kept_ids(&[early, late.clone(), before.clone()], &keep),
            [before.id, late.id]
        );
    }

    #[test]
    fn weeks_follow_iso_numbering_across_the_year_end_but_years_do_not() {
        let days = [
            (2026, 12, 27), // Sun, 2026-W52
            (2026, 12, 28), // Mon, 2026-W53
            (2026, 12, 31), // Thu, 2026-W53
            (2027, 1, 1),   // Fri, 2026-W53
            (2027, 1, 3),   // Sun, 2026-W53
            (2027, 1, 4),   // Mon, 2027-W01
        ];
        let backups: Vec<BackupEntry> = days
            .iter()
            .map(|&(y, m, d)| full(at(y, m, d, 12)))
            .collect();
        let weekly = KeepOptions {
            weekly: Some(3),
            ..KeepOptions::default()
        };
        assert_eq!(
            kept_ids(&backups, &weekly),
            [
                "20261227T120000.000Z",
                "20270103T120000.000Z",
                "20270104T120000.000Z"
            ]
        );
        let yearly = KeepOptions {
            yearly: Some(2),
            ..KeepOptions::default()
        };
        assert_eq!(
            kept_ids(&backups, &yearly),
            ["20261231T120000.000Z", "20270104T120000.000Z"]
        );
    }

    #[test]
    fn hourly_and_within_count_from_the_newest_backup() {
        let backups: Vec<BackupEntry> = [0, 1800, 3600, 5400, 7200, 86_400]
            .map(|offset| full(at(2026, 11, 26, 0) + offset))
            .to_vec();
        let hourly = KeepOptions {
            hourly: Some(3),
            ..KeepOptions::default()
        };
        // Hours 00 (newest :30), 01 (newest :30), 02, and the next day's 00.
        assert_eq!(
            kept_ids(&backups, &hourly),
            [
                "20261126T013000.000Z",
                "20261126T020000.000Z",
                "20261127T000000.000Z"
            ]
        );
        let within = KeepOptions {
            within_seconds: Some(86_400 - 3600),
            ..KeepOptions::default()
        };
        // Newest is 2026-11-27 00:00; 23 h before is 2026-11-26 01:00, inclusive.
        assert_eq!(
            kept_ids(&backups, &within),
            [
                "20261126T010000.000Z",
                "20261126T013000.000Z",
                "20261126T020000.000Z",
                "20261127T000000.000Z"
            ]
        );
    }

    #[test]
    fn a_kept_incremental_keeps_its_whole_chain() {
        let f = full(at(2026, 11, 1, 2));
        let i1 = incremental(at(2026, 11, 2, 2), &f);
        let i2 = incremental(at(2026, 11, 3, 2), &i1);
        let i3 = incremental(at(2026, 11, 4, 2), &i2);
        let older = full(at(2026, 10, 31, 2));
        let backups = [older.clone(), f.clone(), i1.clone(), i2.clone(), i3.clone()];
        let keep = KeepOptions {
            last: Some(1),
            ..KeepOptions::default()
        };
        let decisions = compute_prune(&backups, &keep).unwrap();
        assert_eq!(
            mark_of(&decisions, &i3.id),
            PruneMark::Keep(vec![KeepReason::Last])
        );
        for ancestor in [&f, &i1, &i2] {
            assert_eq!(
                mark_of(&decisions, &ancestor.id),
                PruneMark::Keep(vec![KeepReason::NeededBy(i3.id.clone())]),
                "{}",
                ancestor.id
            );
        }
        assert_eq!(
            mark_of(&decisions, &older.id),
            PruneMark::Remove(RemoveReason::NotSelected)
        );
        assert_eq!(
            KeepReason::NeededBy(i3.id.clone()).to_string(),
            "needed by 20261104T020000.000Z"
        );
    }

    #[test]
    fn an_ancestor_names_the_newest_kept_backup_that_needs_it_once() {
        let f = full(at(2026, 11, 1, 2));
        let i1 = incremental(at(2026, 11, 2, 2), &f);
        let i2 = incremental(at(2026, 11, 3, 2), &i1);
        let keep = KeepOptions {
            last: Some(2),
            monthly: Some(1),
            ..KeepOptions::default()
        };
        let decisions = compute_prune(&[f.clone(), i1.clone(), i2.clone()], &keep).unwrap();
        assert_eq!(
            mark_of(&decisions, &i1.id),
            PruneMark::Keep(vec![KeepReason::Last, KeepReason::NeededBy(i2.id.clone())])
        );
        assert_eq!(
            mark_of(&decisions, &f.id),
            PruneMark::Keep(vec![KeepReason::NeededBy(i2.id.clone())])
        );
    }

    #[test]
    fn orphans_and_their_descendants_are_removed_and_do_not_take_a_slot() {
        let f = full(at(2026, 11, 1, 2));
        let i1 = incremental(at(2026, 11, 2, 2), &f);
        let orphan = BackupEntry {
            parent: Some("20261102T999999.000Z".into()),
            ..full(at(2026, 11, 3, 2))
        };
        let grandchild = incremental(at(2026, 11, 4, 2), &orphan);
        let backups = [f.clone(), i1.clone(), orphan.clone(), grandchild.clone()];
        let keep = KeepOptions {
            last: Some(1),
            ..KeepOptions::default()
        };
        let decisions = compute_prune(&backups, &keep).unwrap();
        assert_eq!(
            mark_of(&decisions, &orphan.id),
            PruneMark::Remove(RemoveReason::BrokenChain {
                missing: "20261102T999999.000Z".into(),
                direct: true
            })
        );
        assert_eq!(
            mark_of(&decisions, &orphan.id).clone(),
            decisions[2].mark,
            "input order"
        );
        let PruneMark::Remove(reason) = mark_of(&decisions, &grandchild.id) else {
            panic!("grandchild kept");
        };
        assert_eq!(
            reason.to_string(),
            "broken chain (ancestor 20261102T999999.000Z missing)"
        );
        let PruneMark::Remove(reason) = mark_of(&decisions, &orphan.id) else {
            unreachable!()
        };
        assert_eq!(
            reason.to_string(),
            "broken chain (parent 20261102T999999.000Z missing)"
        );
        // keep-last 1 went to the newest restorable backup, which keeps its full.
        assert_eq!(
            mark_of(&decisions, &i1.id),
            PruneMark::Keep(vec![KeepReason::Last])
        );
        assert!(mark_of(&decisions, &f.id).is_keep());
    }

    #[test]
    fn a_parent_cycle_is_a_broken_chain_not_a_hang() {
        let a = BackupEntry {
            id: "20261101T020000.000Z".into(),
            time: at(2026, 11, 1, 2),
            parent: Some("20261102T020000.000Z".into()),
            ..BackupEntry::default()
        };
        let b = BackupEntry {
            id: "20261102T020000.000Z".into(),
            time: at(2026, 11, 2, 2),
            parent: Some(a.id.clone()),
            ..BackupEntry::default()
        };
        let own = BackupEntry {
            parent: Some("20261103T020000.000Z".into()),
            ..full(at(2026, 11, 3, 2))
        };
        let keep = KeepOptions {
            last: Some(5),
            ..KeepOptions::default()
        };
        let decisions = compute_prune(&[a, b, own], &keep).unwrap();
        for d in &decisions {
            assert!(
                matches!(d.mark, PruneMark::Remove(RemoveReason::ParentCycle { .. })),
                "{d:?}"
            );
        }
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let a = full(at(2026, 11, 1, 2));
        let keep = KeepOptions {
            last: Some(1),
            ..KeepOptions::default()
        };
        assert_eq!(
            compute_prune(&[a.clone(), a.clone()], &keep),
            Err(RetentionError::DuplicateId(a.id))
        );
    }

    #[test]
    fn the_newest_restorable_backup_survives_every_option() {
        // Irregular times over two years, with a chain, for every single option.
        let mut backups = Vec::new();
        let mut time = at(2025, 1, 1, 0);
        for n in 0..300i64 {
            time += 3600 * (1 + (n * 7919) % 200);
            let entry = match backups.last() {
                Some(prev) if n % 3 != 0 => incremental(time, prev),
                _ => full(time),
            };
            backups.push(entry);
        }
        let newest = backups.last().unwrap().id.clone();
        for n in 1..4 {
            for keep in [
                KeepOptions {
                    last: Some(n),
                    ..KeepOptions::default()
                },
                KeepOptions {
                    hourly: Some(n),
                    ..KeepOptions::default()
                },
                KeepOptions {
                    daily: Some(n),
                    ..KeepOptions::default()
                },
                KeepOptions {
                    weekly: Some(n),
                    ..KeepOptions::default()
                },
                KeepOptions {
                    monthly: Some(n),
                    ..KeepOptions::default()
                },
                KeepOptions {
                    yearly: Some(n),
                    ..KeepOptions::default()
                },
                KeepOptions {
                    within_seconds: Some(u64::from(n)),
                    ..KeepOptions::default()
                },
            ] {
                let decisions = compute_prune(&backups, &keep).unwrap();
                assert!(mark_of(&decisions, &newest).is_keep(), "{keep:?}");
                // Every kept backup's parent is kept.
                for d in decisions.iter().filter(|d| d.mark.is_keep()) {
                    let entry = backups.iter().find(|b| b.id == d.id).unwrap();
                    if let Some(parent) = &entry.parent {
                        assert!(mark_of(&decisions, parent).is_keep(), "{keep:?} {parent}");
                    }
                }
            }
        }
    }

    fn sequenced(entry: BackupEntry, sequence: u64) -> BackupEntry {
        BackupEntry {
            sequence: Some(sequence),
            ..entry
        }
    }

    #[test]
    fn after_a_clock_step_back_the_newest_is_the_last_in_sequence_not_in_time() {
        // Sequence 1 at 10:00, then the clock stepped back: 2 at 09:00, 3 at 08:00 (a new full).
        let b1 = sequenced(full(at(2026, 11, 26, 10)), 1);
        let b2 = sequenced(incremental(at(2026, 11, 26, 9), &b1), 2);
        let b3 = sequenced(full(at(2026, 11, 26, 8)), 3);
        let backups = [b1.clone(), b2.clone(), b3.clone()];
        let last = |n| KeepOptions {
            last: Some(n),
            ..KeepOptions::default()
        };
        assert_eq!(kept_ids(&backups, &last(1)), std::slice::from_ref(&b3.id));
        assert_eq!(
            kept_ids(&backups, &last(2)),
            [b3.id.clone(), b2.id.clone(), b1.id.clone()]
        );
        // The newest of the day is the last taken, not the latest time.
        let daily = KeepOptions {
            daily: Some(1),
            ..KeepOptions::default()
        };
        assert_eq!(kept_ids(&backups, &daily), std::slice::from_ref(&b3.id));
        // Backups of an older version (no sequence) are older than every sequenced one.
        let legacy = full(at(2026, 11, 27, 0));
        assert_eq!(
            kept_ids(&[legacy, b1.clone(), b3.clone()], &last(1)),
            std::slice::from_ref(&b3.id)
        );
    }

    #[test]
    fn a_period_counts_once_when_times_go_back_and_forth() {
        // Taken in this order (sequence): day 2, day 1, day 2 again.
        let a = sequenced(full(at(2026, 11, 2, 1)), 1);
        let b = sequenced(full(at(2026, 11, 1, 1)), 2);
        let c = sequenced(full(at(2026, 11, 2, 3)), 3);
        let keep = KeepOptions {
            daily: Some(2),
            ..KeepOptions::default()
        };
        // Day 2's newest is c, day 1's is b: a is not a third "day".
        assert_eq!(kept_ids(&[a, b.clone(), c.clone()], &keep), {
            let mut ids = vec![b.id, c.id];
            ids.sort();
            ids
        });
    }

    #[test]
    fn an_unreadable_backup_keeps_its_ancestors_and_dependants_and_takes_no_slot() {
        let older = sequenced(full(at(2026, 11, 1, 2)), 1);
        let f = sequenced(full(at(2026, 11, 2, 2)), 2);
        let i1 = sequenced(incremental(at(2026, 11, 3, 2), &f), 3);
        let damaged = BackupEntry {
            held: true,
            sequence: None,
            ..incremental(at(2026, 11, 4, 2), &i1)
        };
        let i3 = sequenced(incremental(at(2026, 11, 5, 2), &damaged), 5);
        let i4 = sequenced(incremental(at(2026, 11, 6, 2), &i3), 6);
        let newest = sequenced(full(at(2026, 11, 7, 2)), 7);
        let backups = [
            older.clone(),
            f.clone(),
            i1.clone(),
            damaged.clone(),
            i3.clone(),
            i4.clone(),
            newest.clone(),
        ];
        let keep = KeepOptions {
            last: Some(2),
            ..KeepOptions::default()
        };
        let decisions = compute_prune(&backups, &keep).unwrap();
        assert_eq!(
            mark_of(&decisions, &damaged.id),
            PruneMark::Keep(vec![KeepReason::Unreadable])
        );
        for dependant in [&i3, &i4] {
            assert_eq!(
                mark_of(&decisions, &dependant.id),
                PruneMark::Keep(vec![KeepReason::DependsOn(damaged.id.clone())])
            );
        }
        // keep-last 2 went to the restorable ones: newest, then i1 (which the unreadable
        // backup needs too).
        assert_eq!(
            mark_of(&decisions, &newest.id),
            PruneMark::Keep(vec![KeepReason::Last])
        );
        assert_eq!(
            mark_of(&decisions, &i1.id),
            PruneMark::Keep(vec![
                KeepReason::Last,
                KeepReason::NeededBy(damaged.id.clone())
            ])
        );
        assert_eq!(
            mark_of(&decisions, &older.id),
            PruneMark::Remove(RemoveReason::NotSelected)
        );
        // With keep-last 1, i1 and f are kept only because the unreadable backup needs them.
        let one = KeepOptions {
            last: Some(1),
            ..KeepOptions::default()
        };
        let decisions = compute_prune(&backups, &one).unwrap();
        for ancestor in [&f, &i1] {
            assert_eq!(
                mark_of(&decisions, &ancestor.id),
                PruneMark::Keep(vec![KeepReason::NeededBy(damaged.id.clone())])
            );
        }
        assert_eq!(
            KeepReason::DependsOn(damaged.id.clone()).to_string(),
            "depends on 20261104T020000.000Z, whose manifest cannot be read"
        );
        // An unreadable backup whose parent is unknown (a full, or nothing could be told)
        // keeps itself and its dependants only.
        let unknown = BackupEntry {
            parent: None,
            ..damaged.clone()
        };
        let decisions = compute_prune(
            &[f.clone(), i1.clone(), unknown, i3.clone(), newest.clone()],
            &one,
        )
        .unwrap();
        assert!(!mark_of(&decisions, &f.id).is_keep());
        assert!(mark_of(&decisions, &i3.id).is_keep());
    }

    #[test]
    fn unreadable_backups_whose_parent_hints_loop_do_not_hang() {
        let a = BackupEntry {
            held: true,
            parent: Some(backup_id_from_unix(at(2026, 11, 2, 2), 0)),
            ..full(at(2026, 11, 1, 2))
        };
        let b = BackupEntry {
            held: true,
            parent: Some(a.id.clone()),
            ..full(at(2026, 11, 2, 2))
        };
        let keep = KeepOptions {
            last: Some(1),
            ..KeepOptions::default()
        };
        let decisions = compute_prune(&[a, b], &keep).unwrap();
        assert!(decisions.iter().all(|d| d.mark.is_keep()), "{decisions:?}");
    }
}
