//! Times on the command line: parsing filter bounds and printing protobuf timestamps as
//! RFC 3339 in UTC.

use prost_types::Timestamp;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, PrimitiveDateTime};

const ACCEPTED: &str = "expected RFC 3339 (2024-11-01T03:00:00Z, 2024-11-01T05:00:00+02:00), \
                        or UTC as yyyy-MM-ddTHH:mm[:ss] or yyyy-MM-dd";

/// Parses a time given on the command line. Accepted forms: RFC 3339 with an offset, and,
/// read as UTC, the reference's `yyyy-MM-ddTHH:mm`, the same with seconds, and a bare date
/// (midnight). A space may stand for the `T`.
pub fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    let trimmed = text.trim();
    if let Ok(t) = OffsetDateTime::parse(trimmed, &Rfc3339) {
        return Ok(t.to_offset(time::UtcOffset::UTC));
    }
    let normalized = trimmed.replacen(' ', "T", 1);
    let minutes = format_description!("[year]-[month]-[day]T[hour]:[minute]");
    let seconds = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    if let Ok(t) = PrimitiveDateTime::parse(&normalized, minutes) {
        return Ok(t.assume_utc());
    }
    if let Ok(t) = PrimitiveDateTime::parse(&normalized, seconds) {
        return Ok(t.assume_utc());
    }
    if let Ok(d) = Date::parse(&normalized, format_description!("[year]-[month]-[day]")) {
        return Ok(d.midnight().assume_utc());
    }
    Err(ACCEPTED.to_string())
}

/// A clap value parser: a time flag as a protobuf timestamp.
pub fn parse_time_arg(text: &str) -> Result<Timestamp, String> {
    parse_time(text).map(to_timestamp)
}

pub fn to_timestamp(t: OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: t.unix_timestamp(),
        // Always 0..1e9, so it fits.
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    }
}

/// `None` when the timestamp is outside what `time` represents (or has bad nanos).
pub fn from_timestamp(ts: &Timestamp) -> Option<OffsetDateTime> {
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// Full precision RFC 3339 in UTC (`2024-11-01T03:00:00.123Z`), for JSON and event lines.
pub fn rfc3339(ts: &Timestamp) -> String {
    from_timestamp(ts)
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| invalid(ts))
}

/// RFC 3339 in UTC to the second (`2024-11-01T03:00:00Z`), for tables.
pub fn rfc3339_seconds(ts: &Timestamp) -> String {
    from_timestamp(ts)
        .and_then(|t| t.replace_nanosecond(0).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| invalid(ts))
}

fn invalid(ts: &Timestamp) -> String {
    format!("<invalid time {}s {}ns>", ts.seconds, ts.nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64, nanos: i32) -> Timestamp {
        Timestamp { seconds, nanos }
    }

    #[test]
    fn parses_every_accepted_form() {
        // 2024-11-01T03:00:00Z = 1730430000
        for text in [
            "2024-11-01T03:00:00Z",
            "2024-11-01T05:00:00+02:00",
            "2024-11-01T03:00",
            "2024-11-01 03:00",
            "2024-11-01T03:00:00",
            " 2024-11-01T03:00 ",
        ] {
            assert_eq!(
                parse_time_arg(text).unwrap(),
                ts(1_730_430_000, 0),
                "{text}"
            );
        }
        assert_eq!(
            parse_time_arg("2024-11-01").unwrap(),
            ts(1_730_419_200, 0),
            "a bare date is midnight UTC"
        );
        assert_eq!(
            parse_time_arg("2024-11-01T03:00:00.25Z").unwrap(),
            ts(1_730_430_000, 250_000_000)
        );
    }

    #[test]
    fn rejects_other_forms_with_the_accepted_ones_named() {
        for text in [
            "",
            "yesterday",
            "2024-13-01T00:00",
            "2024-11-01T25:00",
            "1730430000",
        ] {
            let err = parse_time_arg(text).unwrap_err();
            assert!(
                err.contains("RFC 3339") && err.contains("yyyy-MM-ddTHH:mm"),
                "{err}"
            );
        }
    }

    #[test]
    fn formats_in_utc() {
        assert_eq!(rfc3339(&ts(1_730_430_000, 0)), "2024-11-01T03:00:00Z");
        assert_eq!(
            rfc3339(&ts(1_730_430_000, 123_000_000)),
            "2024-11-01T03:00:00.123Z"
        );
        assert_eq!(
            rfc3339_seconds(&ts(1_730_430_000, 999_999_999)),
            "2024-11-01T03:00:00Z"
        );
        assert_eq!(rfc3339(&ts(0, -1)), "<invalid time 0s -1ns>");
        assert!(rfc3339_seconds(&ts(i64::MAX, 0)).starts_with("<invalid"));
        let t = parse_time("2024-11-01T05:00:00+02:00").unwrap();
        assert_eq!(rfc3339(&to_timestamp(t)), "2024-11-01T03:00:00Z");
    }
}
