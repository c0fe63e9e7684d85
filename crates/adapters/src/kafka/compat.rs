//! [`KafkaCompat`]: the workarounds a Kafka-protocol broker other than Apache Kafka needs,
//! all in one setting so that none of them is on by default.
//!
//! Everything here exists for tansu 0.6, the broker `deploy/engines/kafka.sh` ran as a local
//! stand-in; Apache Kafka needs none of it. A workaround that is right on every broker is not
//! a setting: `end_offset` always confirms the listed end (ListOffsets, exact on Kafka, a lower
//! bound on tansu, which answers "base offset of the newest batch + 1") with a fetch to the
//! end-of-partition event, and librdkafka is always the bundled one (Debian's 2.0 cannot talk
//! to tansu).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Which broker quirks the Kafka adapters work around ([`super::KafkaLogConfig::compat`],
/// [`super::KafkaMembershipConfig::compat`]; `kafka.compat` in the cluster configuration).
/// The default, [`KafkaCompat::None`], is right for Apache Kafka.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum KafkaCompat {
    /// Apache Kafka, or a broker that behaves like it: no workarounds, no polling of group
    /// state, newly assigned shards are handed over at once (Kafka revokes before it
    /// reassigns).
    #[default]
    None,
    /// tansu 0.6:
    /// - **Stale assignments.** tansu notices a dead member and rebalances, but its SyncGroup
    ///   in a formed group returns the previous assignment instead of the leader's, so a
    ///   dead member's shards would stay unowned. Members check every
    ///   [`assignment_check`](Self::assignment_check) that their shards are their range share
    ///   of the group's current members (DescribeGroups) and rejoin when they are not, twice
    ///   in a row: a killed member's shards move within 16–24 s instead of never.
    /// - **Takeover grace.** Until a stale member notices, it still holds shards the group
    ///   gave to another: newly assigned shards are handed to the handler only after
    ///   [`takeover_grace`](Self::takeover_grace), which keeps one owner per shard.
    /// - **Listing groups.** Members commit offset 0 for their (never consumed) partitions:
    ///   tansu only lists groups that committed something, and the check must find its group.
    /// - **Fetches inside a batch.** Kafka serves a fetch from inside a record batch; tansu
    ///   only serves batches that *start* at or after the fetch offset, so a fetch positioned
    ///   inside a batch skips it (or, inside the newest batch, gets nothing). The reader
    ///   restarts such a fetch further back when it brings a gap, or nothing within
    ///   [`seek_retry`](Self::seek_retry).
    Tansu,
}

impl KafkaCompat {
    /// Every value, as written in configuration.
    pub const NAMES: [&'static str; 2] = ["none", "tansu"];

    /// The `fetch.wait.max.ms` to use when none is configured. Apache Kafka answers a held
    /// fetch as soon as records arrive, so a long wait costs no latency and spares the
    /// broker the CPU of answering empty fetches (an idle 16-partition log: ~19 % of a core
    /// at 2 ms, ~4 % at 100 ms); it bounds only how stale an exact `end_offset` (lag
    /// sampling) may wait. tansu holds every fetch for the full wait, so there it is the
    /// wake-up latency of every reader.
    pub fn default_fetch_wait(self) -> Duration {
        match self {
            Self::None => Duration::from_millis(100),
            Self::Tansu => Duration::from_millis(2),
        }
    }

    /// How often a member compares its shards with its range share of the group (`None`:
    /// never; DescribeGroups is then never sent).
    pub fn assignment_check(self) -> Option<Duration> {
        match self {
            Self::None => None,
            Self::Tansu => Some(Duration::from_secs(2)),
        }
    }

    /// How long newly assigned shards wait before they are handed to the handler: at least
    /// the time a stale member needs to notice (twice the assignment check) plus a margin.
    pub fn takeover_grace(self) -> Duration {
        match self {
            Self::None => Duration::ZERO,
            Self::Tansu => Duration::from_secs(5),
        }
    }

    /// The group's assignor. Apache Kafka: `cooperative-sticky`, so a member joining or
    /// leaving moves only the shards that must move (the others keep serving through the
    /// rebalance), and a revoked shard is stopped before it is assigned elsewhere. tansu 0.6
    /// has only the eager protocol: `range`.
    pub fn assignment_strategy(self) -> &'static str {
        match self {
            Self::None => "cooperative-sticky",
            Self::Tansu => "range",
        }
    }

    /// Whether members commit offset 0 for the partitions they are assigned.
    pub fn commits_assignments(self) -> bool {
        matches!(self, Self::Tansu)
    }

    /// How long a fetch that was just positioned may bring neither a record nor the end
    /// before it is restarted further back (`None`: never; a record past the fetch position
    /// is then a gap, reported as corrupt).
    pub fn seek_retry(self) -> Option<Duration> {
        match self {
            Self::None => None,
            Self::Tansu => Some(Duration::from_millis(100)),
        }
    }
}

impl fmt::Display for KafkaCompat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Tansu => "tansu",
        })
    }
}

/// A value that is not one of [`KafkaCompat::NAMES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown Kafka compat mode {0:?} (expected none or tansu)")]
pub struct UnknownCompat(pub String);

impl FromStr for KafkaCompat {
    type Err = UnknownCompat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "tansu" => Ok(Self::Tansu),
            _ => Err(UnknownCompat(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_apache_kafka_with_no_workarounds() {
        let c = KafkaCompat::default();
        assert_eq!(c, KafkaCompat::None);
        assert_eq!(c.assignment_check(), None, "no polling of group state");
        assert_eq!(c.takeover_grace(), Duration::ZERO, "no takeover grace");
        assert!(!c.commits_assignments());
        assert_eq!(c.seek_retry(), None);
        assert_eq!(c.assignment_strategy(), "cooperative-sticky");
    }

    #[test]
    fn tansu_turns_every_workaround_on() {
        let t = KafkaCompat::Tansu;
        let check = t.assignment_check().expect("tansu polls group state");
        assert!(
            t.takeover_grace() > check * 2,
            "the grace outlasts a stale member's two strikes"
        );
        assert!(t.commits_assignments());
        assert!(t.seek_retry().is_some());
        assert_eq!(t.assignment_strategy(), "range");
    }

    #[test]
    fn names_parse_and_print_both_ways() {
        for name in KafkaCompat::NAMES {
            let c: KafkaCompat = name.parse().expect("a known name");
            assert_eq!(c.to_string(), name);
        }
        assert_eq!(" Tansu ".parse(), Ok(KafkaCompat::Tansu));
        assert_eq!(
            "kafka".parse::<KafkaCompat>(),
            Err(UnknownCompat("kafka".into()))
        );
    }
}
