//! Five-field cron expressions in UTC (`minute hour day-of-month month day-of-week`), the
//! start times of maintenance windows.
//!
//! Written here rather than taken from a crate because the domain needs only "the first
//! matching minute at or after t" over plain epoch milliseconds, without a date-time library
//! or time zones. Fields take `*`, numbers, ranges `a-b`, steps `*/n` / `a-b/n` / `a/n`, and
//! comma lists; months and weekdays also take names (`JAN`, `MON`); weekday 7 is Sunday like
//! 0. As in Vixie cron, when both day fields are restricted (neither starts with `*`) a day
//! matches if either does.

use crate::model::TimestampMs;

const MINUTE_MS: i64 = 60_000;
const DAY_MINUTES: i64 = 1_440;
/// The Gregorian calendar (weekdays included) repeats every 400 years, 146,097 days: an
/// expression with no match within one cycle never matches.
const CYCLE_DAYS: i64 = 146_097;

/// A parsed expression: one bit per allowed value of each field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_restricted: bool,
    weekdays_restricted: bool,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn field(
    text: &str,
    what: &str,
    lo: u32,
    hi: u32,
    names: &[&str],
    name_base: u32,
) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + name_base);
        }
        let v: u32 = s
            .parse()
            .map_err(|_| format!("{what} field: {s:?} is not a number"))?;
        if v < lo || v > hi {
            return Err(format!("{what} field: {v} is outside {lo}–{hi}"));
        }
        Ok(v)
    };
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 =
                    s.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                        format!("{what} field: step {s:?} must be a positive number")
                    })?;
                (r, Some(step))
            }
            None => (item, None),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let a = value(range)?;
            // `a/n` runs from a to the end of the field.
            (a, if step.is_some() { hi } else { a })
        };
        if a > b {
            return Err(format!("{what} field: range {a}-{b} runs backwards"));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step.unwrap_or(1);
        }
    }
    Ok(bits)
}

/// Days since 1970-01-01 → (year, month 1–12, day 1–31) (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl Cron {
    pub(crate) fn parse(expr: &str) -> Result<Cron, String> {
        let parts: Vec<&str> = expr.split_whitespace().collect();
        let [min, hour, dom, month, dow] = parts[..] else {
            return Err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), got {}",
                parts.len()
            ));
        };
        let weekdays = field(dow, "day-of-week", 0, 7, &WEEKDAYS, 0)?;
        let cron = Cron {
            minutes: field(min, "minute", 0, 59, &[], 0)?,
            hours: field(hour, "hour", 0, 23, &[], 0)? as u32,
            days: field(dom, "day-of-month", 1, 31, &[], 0)? as u32,
            months: field(month, "month", 1, 12, &MONTHS, 1)? as u16,
            // Fold 7 onto 0: both are Sunday.
            weekdays: ((weekdays | (weekdays >> 7)) & 0x7f) as u8,
            days_restricted: !dom.starts_with('*'),
            weekdays_restricted: !dow.starts_with('*'),
        };
        if cron.next_at_or_after(0).is_none() {
            return Err(format!("{expr:?} never matches a date"));
        }
        Ok(cron)
    }

    fn matches_day(&self, day: i64) -> bool {
        let (_, m, d) = civil_from_days(day);
        let weekday = (day + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday.
        let dom = self.days & (1 << d) != 0;
        let dow = self.weekdays & (1 << weekday) != 0;
        let day_ok = match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => dom || dow,
            _ => dom && dow,
        };
        self.months & (1 << m) != 0 && day_ok
    }

    /// The first matching minute at or after `t`, if any (None also on arithmetic overflow).
    pub(crate) fn next_at_or_after(&self, t: TimestampMs) -> Option<TimestampMs> {
        let minute = t.checked_add(MINUTE_MS - 1)?.div_euclid(MINUTE_MS);
        let first_day = minute.div_euclid(DAY_MINUTES);
        let mut from = minute.rem_euclid(DAY_MINUTES);
        for day in first_day..first_day.checked_add(CYCLE_DAYS)? {
            if self.matches_day(day) {
                for m in from..DAY_MINUTES {
                    if self.hours & (1 << (m / 60)) != 0 && self.minutes & (1 << (m % 60)) != 0 {
                        return day
                            .checked_mul(DAY_MINUTES)?
                            .checked_add(m)?
                            .checked_mul(MINUTE_MS);
                    }
                }
            }
            from = 0;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2025-01-06 00:00 UTC, a Monday.
    const MONDAY: i64 = 1_736_121_600_000;
    const H: i64 = 3_600_000;

    fn next(expr: &str, t: i64) -> Option<i64> {
        Cron::parse(expr).unwrap().next_at_or_after(t)
    }

    #[test]
    fn civil_dates_and_weekdays() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(MONDAY / 86_400_000), (2025, 1, 6));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn next_start_of_common_expressions() {
        assert_eq!(next("0 2 * * *", MONDAY), Some(MONDAY + 2 * H));
        assert_eq!(
            next("0 2 * * *", MONDAY + 2 * H),
            Some(MONDAY + 2 * H),
            "inclusive"
        );
        assert_eq!(next("0 2 * * *", MONDAY + 2 * H + 1), Some(MONDAY + 26 * H));
        assert_eq!(
            next("*/15 * * * *", MONDAY + 1),
            Some(MONDAY + 15 * MINUTE_MS)
        );
        assert_eq!(
            next("30 22 * * SAT,sun", MONDAY),
            Some(MONDAY + 5 * 24 * H + 22 * H + 30 * MINUTE_MS)
        );
        assert_eq!(
            next("0 0 * * 7", MONDAY),
            Some(MONDAY + 6 * 24 * H),
            "7 is Sunday"
        );
        assert_eq!(
            next("0 9-17/4 * * MON-FRI", MONDAY + 10 * H),
            Some(MONDAY + 13 * H)
        );
        assert_eq!(
            next("0 0 1 MAR *", MONDAY),
            Some(1_740_787_200_000),
            "2025-03-01"
        );
        // Both day fields restricted: either matches (the 13th, or any Friday).
        assert_eq!(next("0 0 13 * 5", MONDAY), Some(MONDAY + 4 * 24 * H));
        assert_eq!(
            next("0 0 29 2 *", MONDAY),
            Some(1_709_164_800_000 + 4 * 365 * 24 * H + 24 * H),
            "2028-02-29"
        );
        assert_eq!(next("5/20 * * * *", MONDAY), Some(MONDAY + 5 * MINUTE_MS));
    }

    #[test]
    fn bad_expressions_say_why() {
        let cases = [
            ("0 2 * *", "expected 5 fields"),
            ("60 * * * *", "minute field: 60 is outside 0–59"),
            ("* 24 * * *", "hour field"),
            ("* * 0 * *", "day-of-month field: 0"),
            ("* * * 13 *", "month field"),
            ("* * * * 8", "day-of-week field"),
            ("*/0 * * * *", "step"),
            ("5-1 * * * *", "backwards"),
            ("x * * * *", "not a number"),
            ("0 0 31 4 *", "never matches"),
            ("0 0 30 2 *", "never matches"),
        ];
        for (expr, want) in cases {
            let err = Cron::parse(expr).unwrap_err();
            assert!(err.contains(want), "{expr}: {err}");
        }
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let c = Cron::parse("* * * * *").unwrap();
        assert_eq!(c.next_at_or_after(i64::MAX), None);
        assert_eq!(c.next_at_or_after(-MINUTE_MS - 1), Some(-MINUTE_MS));
        assert!(c.next_at_or_after(i64::MIN / 2).is_some());
    }
}
