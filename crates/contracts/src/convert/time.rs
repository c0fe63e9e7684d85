//! Timestamps: domain milliseconds since the epoch to and from `google.protobuf.Timestamp`.

use fleetcmd_domain::error::ValidationError;
use fleetcmd_domain::model::TimestampMs;
use prost_types::Timestamp;

/// Milliseconds since the epoch as a protobuf timestamp (exact for every `i64`; times before
/// the epoch get a negative `seconds` and non-negative `nanos`, as the protobuf spec wants).
pub fn timestamp_from_ms(ms: TimestampMs) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        // rem_euclid is in 0..1000, so this is below 10^9 and fits in an i32.
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A protobuf timestamp as milliseconds since the epoch. Sub-millisecond precision is dropped
/// (rounded down). Errors, naming `field`: `nanos` outside 0–999,999,999, or a time that does
/// not fit in 64-bit milliseconds.
pub fn timestamp_to_ms(field: &str, ts: Timestamp) -> Result<TimestampMs, ValidationError> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(ValidationError::new(
            field,
            format!("nanos must be between 0 and 999999999, got {}", ts.nanos),
        ));
    }
    let ms = i128::from(ts.seconds) * 1000 + i128::from(ts.nanos / 1_000_000);
    TimestampMs::try_from(ms).map_err(|_| {
        ValidationError::new(
            field,
            format!(
                "is out of range: {} seconds since the epoch does not fit in 64-bit milliseconds",
                ts.seconds
            ),
        )
    })
}

/// [`timestamp_from_ms`] for optional times (`None` stays unset).
pub fn opt_timestamp_from_ms(ms: Option<TimestampMs>) -> Option<Timestamp> {
    ms.map(timestamp_from_ms)
}

/// [`timestamp_to_ms`] for optional times (unset stays `None`).
pub fn opt_timestamp_to_ms(
    field: &str,
    ts: Option<Timestamp>,
) -> Result<Option<TimestampMs>, ValidationError> {
    ts.map(|t| timestamp_to_ms(field, t)).transpose()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::convert::test_support::{err_field, ts};

    #[test]
    fn timestamps_round_trip_and_normalise() {
        for ms in [
            0,
            1,
            999,
            1_000,
            1_700_000_000_123,
            -1,
            -1_000,
            -1_001,
            i64::MAX,
            i64::MIN,
        ] {
            let t = timestamp_from_ms(ms);
            assert!(
                (0..1_000_000_000).contains(&t.nanos),
                "nanos of {ms}: {t:?}"
            );
            assert_eq!(timestamp_to_ms("t", t), Ok(ms), "round trip of {ms}");
        }
        assert_eq!(
            timestamp_from_ms(1_700_000_000_123),
            ts(1_700_000_000, 123_000_000)
        );
        assert_eq!(timestamp_from_ms(-1), ts(-1, 999_000_000));
        // Sub-millisecond precision is dropped.
        assert_eq!(timestamp_to_ms("t", ts(2, 1_999_999)), Ok(2_001));
        assert_eq!(opt_timestamp_from_ms(None), None);
        assert_eq!(opt_timestamp_from_ms(Some(1_500)), Some(ts(1, 500_000_000)));
        assert_eq!(opt_timestamp_to_ms("t", None), Ok(None));
        assert_eq!(
            opt_timestamp_to_ms("t", Some(ts(1, 500_000_000))),
            Ok(Some(1_500))
        );
    }

    #[test]
    fn bad_timestamps_name_the_field() {
        let e = timestamp_to_ms("created_at", ts(0, -1)).unwrap_err();
        assert_eq!(e.field, "created_at");
        assert!(e.message.contains("nanos"), "{e}");
        assert_eq!(
            err_field(timestamp_to_ms("x.after", ts(0, 1_000_000_000))),
            "x.after"
        );
        let e = timestamp_to_ms("x.before", ts(i64::MAX, 0)).unwrap_err();
        assert_eq!(e.field, "x.before");
        assert!(e.message.contains("out of range"), "{e}");
        assert_eq!(
            err_field(opt_timestamp_to_ms("y", Some(ts(i64::MIN, 0)))),
            "y"
        );
    }

    proptest! {
        #[test]
        fn timestamp_round_trip_any(ms in any::<i64>()) {
            prop_assert_eq!(timestamp_to_ms("t", timestamp_from_ms(ms)), Ok(ms));
        }
    }
}
