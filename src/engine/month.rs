//! Calendar months in UTC: the window of the monthly quota.
//!
//! A month is identified by `year * 12 + (month - 1)`, so consecutive months have consecutive ids
//! and 31 December -> 1 January needs no special case. Conversions use Howard Hinnant's
//! `days_from_civil` / `civil_from_days`, exact for the proleptic Gregorian calendar (leap years
//! included).

/// A calendar month (UTC) as `year * 12 + month0`.
pub type MonthId = u32;

const SECS_PER_DAY: i64 = 86_400;

/// Days since 1970-01-01 for a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil (year, month 1..=12, day) for days since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The month containing `unix_secs`.
pub fn month_of(unix_secs: u64) -> MonthId {
    let (y, m, _) = civil_from_days((unix_secs / SECS_PER_DAY as u64) as i64);
    (y as u32) * 12 + (m - 1)
}

/// The first second of a month, in Unix seconds.
pub fn month_start(id: MonthId) -> u64 {
    let y = i64::from(id / 12);
    let m = id % 12 + 1;
    (days_from_civil(y, m, 1) * SECS_PER_DAY) as u64
}

/// 00:00:00 UTC on the first day of the month after the one containing `unix_secs`.
pub fn next_month_start(unix_secs: u64) -> u64 {
    month_start(month_of(unix_secs) + 1)
}

/// Whole seconds from `unix_ns` until the next month starts, at least 1.
pub fn secs_until_next_month(unix_ns: u64) -> u64 {
    let secs = unix_ns / 1_000_000_000;
    let next_ns = next_month_start(secs).saturating_mul(1_000_000_000);
    next_ns
        .saturating_sub(unix_ns)
        .div_ceil(1_000_000_000)
        .max(1)
}

/// A cached `[start, end)` of the current month so the hot path does no calendar math.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonthWindow {
    /// The month.
    pub id: MonthId,
    /// First nanosecond of the month.
    pub start_ns: u64,
    /// First nanosecond of the next month.
    pub end_ns: u64,
}

impl MonthWindow {
    /// The window containing `unix_ns`.
    pub fn containing(unix_ns: u64) -> Self {
        let id = month_of(unix_ns / 1_000_000_000);
        MonthWindow {
            id,
            start_ns: month_start(id) * 1_000_000_000,
            end_ns: month_start(id + 1) * 1_000_000_000,
        }
    }

    /// Whether `unix_ns` falls in this window.
    #[inline]
    pub fn contains(&self, unix_ns: u64) -> bool {
        (self.start_ns..self.end_ns).contains(&unix_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    fn ts(dt: time::OffsetDateTime) -> u64 {
        dt.unix_timestamp() as u64
    }

    #[test]
    fn new_year_rolls_over_to_january() {
        let dec31 = ts(datetime!(2026-12-31 23:59:59 UTC));
        let jan1 = ts(datetime!(2027-01-01 00:00:00 UTC));
        assert_eq!(month_of(dec31) + 1, month_of(jan1));
        assert_eq!(next_month_start(dec31), jan1);
        assert_eq!(secs_until_next_month(dec31 * 1_000_000_000), 1);
    }

    #[test]
    fn leap_february_has_29_days() {
        let feb29 = ts(datetime!(2028-02-29 12:00:00 UTC));
        assert_eq!(month_of(feb29), 2028 * 12 + 1);
        assert_eq!(
            next_month_start(feb29),
            ts(datetime!(2028-03-01 00:00:00 UTC))
        );
        assert_eq!(secs_until_next_month(feb29 * 1_000_000_000), 12 * 3600);
        // 2100 is not a leap year.
        assert_eq!(
            next_month_start(ts(datetime!(2100-02-28 00:00:00 UTC))),
            ts(datetime!(2100-03-01 00:00:00 UTC))
        );
    }

    #[test]
    fn partial_seconds_round_up() {
        let jan1 = ts(datetime!(2027-01-01 00:00:00 UTC));
        let ns = (jan1 - 10) * 1_000_000_000 + 1;
        assert_eq!(secs_until_next_month(ns), 10);
    }

    proptest! {
        #[test]
        fn agrees_with_the_time_crate(secs in 0u64..8_000_000_000) {
            let dt = time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap();
            prop_assert_eq!(month_of(secs), dt.year() as u32 * 12 + (u8::from(dt.month()) as u32 - 1));
            let start = month_start(month_of(secs));
            let sd = time::OffsetDateTime::from_unix_timestamp(start as i64).unwrap();
            prop_assert_eq!(sd.day(), 1);
            prop_assert_eq!((sd.hour(), sd.minute(), sd.second()), (0, 0, 0));
            prop_assert_eq!(sd.month(), dt.month());
            prop_assert!(start <= secs && secs < next_month_start(secs));
        }
    }
}
