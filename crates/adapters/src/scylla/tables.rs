//! The listing tables: which table serves a listing (per target, per command, or all; by
//! start or completion time), its columns, and the time buckets of its partitions.

use fleetcmd_domain::{Execution, TimestampMs};

use super::BucketWidths;

/// The six listing tables: (what the partition is per) × (which time sorts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Per {
    Target,
    Command,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SortBy {
    Started,
    Completed,
}

pub(super) const INDEXES: [(Per, SortBy); 6] = [
    (Per::Target, SortBy::Started),
    (Per::Command, SortBy::Started),
    (Per::All, SortBy::Started),
    (Per::Target, SortBy::Completed),
    (Per::Command, SortBy::Completed),
    (Per::All, SortBy::Completed),
];

pub(super) fn index_slot(per: Per, sort: SortBy) -> usize {
    let p = match per {
        Per::Target => 0,
        Per::Command => 1,
        Per::All => 2,
    };
    match sort {
        SortBy::Started => p,
        SortBy::Completed => 3 + p,
    }
}

pub(super) fn index_table(per: Per, sort: SortBy) -> &'static str {
    match (per, sort) {
        (Per::Target, SortBy::Started) => "executions_by_target",
        (Per::Command, SortBy::Started) => "executions_by_command",
        (Per::All, SortBy::Started) => "executions_by_time",
        (Per::Target, SortBy::Completed) => "completed_by_target",
        (Per::Command, SortBy::Completed) => "completed_by_command",
        (Per::All, SortBy::Completed) => "completed_by_time",
    }
}

pub(super) fn key_column(per: Per) -> &'static str {
    match per {
        Per::Target => "target",
        Per::Command => "command_id",
        Per::All => "scope",
    }
}

pub(super) fn sort_column(sort: SortBy) -> &'static str {
    match sort {
        SortBy::Started => "started_at",
        SortBy::Completed => "completed_at",
    }
}

/// The partition-key value of `e` in a `per` table.
pub(super) fn index_key(per: Per, e: &Execution) -> String {
    match per {
        Per::Target => e.target.resource_name(),
        Per::Command => e.command_id.as_str().to_owned(),
        Per::All => ALL_SCOPE.to_owned(),
    }
}

pub(super) const ALL_SCOPE: &str = "all";

/// The `execution_buckets` scope of one listing partition chain.
pub(super) fn bucket_scope(per: Per, sort: SortBy, key: &str) -> String {
    format!("{}/{key}", index_table(per, sort))
}

/// The start of the bucket holding `t`.
pub(super) fn bucket_start(t: TimestampMs, width: i64) -> i64 {
    t.div_euclid(width).saturating_mul(width)
}

impl BucketWidths {
    pub(super) fn of(&self, per: Per) -> i64 {
        match per {
            Per::Target => self.target_ms,
            Per::Command => self.command_ms,
            Per::All => self.all_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_floor_toward_minus_infinity() {
        assert_eq!(bucket_start(0, 10), 0);
        assert_eq!(bucket_start(19, 10), 10);
        assert_eq!(bucket_start(-1, 10), -10);
        // Open ranges use i64::MIN: the floor saturates instead of overflowing.
        assert_eq!(bucket_start(i64::MIN, 10), i64::MIN);
        assert_eq!(bucket_start(i64::MAX, 1_000), i64::MAX - i64::MAX % 1_000);
    }
}
