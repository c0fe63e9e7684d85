//! Pacing: when each execution is due under `--rate`, and parsing of `--duration`.

use std::time::Duration;

/// How long after the run's start execution number `index` (0-based) is due at `rate`
/// executions per second. Due times are absolute (start + index / rate) rather than
/// relative to the previous call, so a late call does not shift every later one: the
/// driver catches up and the achieved rate stays the requested one.
pub fn due_offset(index: u64, rate: f64) -> Duration {
    if !(rate.is_finite() && rate > 0.0) {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(index as f64 / rate)
}

/// Parses `300`, `300s`, `5m`, `1h`, `1500ms` into a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 300, 300s, 5m, 1h"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {text:?}: use ms, s, m or h"
            ));
        }
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("duration {text:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_are_due_at_even_absolute_intervals() {
        assert_eq!(due_offset(0, 1000.0), Duration::ZERO);
        assert_eq!(due_offset(1, 1000.0), Duration::from_millis(1));
        assert_eq!(due_offset(10_000, 10_000.0), Duration::from_secs(1));
        assert_eq!(due_offset(3, 2.0), Duration::from_millis(1500));
        // No rate (or a nonsense one): everything is due at once.
        assert_eq!(due_offset(99, 0.0), Duration::ZERO);
        assert_eq!(due_offset(99, f64::NAN), Duration::ZERO);
        // Rates above 1/ns still give increasing offsets.
        assert!(due_offset(2, 20_000.0) > due_offset(1, 20_000.0));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-1").is_err());
    }
}
