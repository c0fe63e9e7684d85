//! Listing plans: which partition chain and sort-time range serve an execution query, and
//! the filters applied by the client to the rows read.

use fleetcmd_domain::Execution;
use fleetcmd_domain::TimestampMs;
use fleetcmd_domain::ports::{ExecutionQuery, TimeRange};

use super::BucketWidths;
use super::paging::fingerprint;
use super::tables::{ALL_SCOPE, Per, SortBy, bucket_scope, index_table};

/// How one execution query is served.
#[derive(Debug, Clone)]
pub(super) struct ExecutionPlan {
    pub(super) per: Per,
    pub(super) sort: SortBy,
    pub(super) key: String,
    pub(super) width: i64,
    /// The sort-time range, inclusive.
    pub(super) lo: i64,
    pub(super) hi: i64,
    pub(super) ascending: bool,
    pub(super) fingerprint: u64,
}

impl ExecutionPlan {
    pub(super) fn new(q: &ExecutionQuery, widths: &BucketWidths) -> Self {
        let (per, key) = match (&q.target, &q.command_id) {
            (Some(t), _) => (Per::Target, t.resource_name()),
            (None, Some(c)) => (Per::Command, c.as_str().to_owned()),
            (None, None) => (Per::All, ALL_SCOPE.to_owned()),
        };
        let (sort, range) = match q.completed {
            Some(r) => (SortBy::Completed, r),
            None => (SortBy::Started, q.started.unwrap_or_default()),
        };
        let lo = range.after.unwrap_or(i64::MIN);
        let hi = range.before.unwrap_or(i64::MAX);
        let lo_s = lo.to_string();
        let hi_s = hi.to_string();
        let fingerprint = fingerprint(&[
            index_table(per, sort),
            &key,
            if q.ascending { "asc" } else { "desc" },
            &lo_s,
            &hi_s,
        ]);
        Self {
            per,
            sort,
            key,
            width: widths.of(per),
            lo,
            hi,
            ascending: q.ascending,
            fingerprint,
        }
    }

    pub(super) fn scope(&self) -> String {
        bucket_scope(self.per, self.sort, &self.key)
    }
}

fn in_range(r: &Option<TimeRange>, t: TimestampMs) -> bool {
    r.as_ref().is_none_or(|r| r.contains(t))
}

/// Every filter of the query, applied to a row read from a listing table.
pub(super) fn matches(q: &ExecutionQuery, e: &Execution) -> bool {
    q.command_id.as_ref().is_none_or(|c| &e.command_id == c)
        && q.target.as_ref().is_none_or(|t| &e.target == t)
        && (q.statuses.is_empty() || q.statuses.contains(&e.status))
        && in_range(&q.started, e.started_at)
        && q.completed
            .as_ref()
            .is_none_or(|r| e.completed_at.is_some_and(|c| r.contains(c)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetcmd_domain::CommandId;

    #[test]
    fn plans_pick_the_narrowest_partition_chain() {
        let widths = BucketWidths::default();
        let t = fleetcmd_domain::Target::thing("dev").expect("target");
        let c = CommandId::parse("cmd").expect("command");
        let both = ExecutionPlan::new(
            &ExecutionQuery {
                target: Some(t.clone()),
                command_id: Some(c.clone()),
                ..ExecutionQuery::default()
            },
            &widths,
        );
        assert_eq!((both.per, both.sort), (Per::Target, SortBy::Started));
        assert_eq!(both.key, "thing/dev");
        let done = ExecutionPlan::new(
            &ExecutionQuery {
                command_id: Some(c),
                completed: Some(TimeRange {
                    after: Some(5),
                    before: None,
                }),
                ..ExecutionQuery::default()
            },
            &widths,
        );
        assert_eq!((done.per, done.sort), (Per::Command, SortBy::Completed));
        assert_eq!((done.lo, done.hi), (5, i64::MAX));
        let all = ExecutionPlan::new(&ExecutionQuery::default(), &widths);
        assert_eq!((all.per, all.key.as_str()), (Per::All, ALL_SCOPE));
        assert_ne!(all.fingerprint, done.fingerprint);
    }
}
