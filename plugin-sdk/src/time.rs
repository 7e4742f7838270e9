//! UTC calendar helpers over the host clock: enough to write time-of-week rules without a
//! date crate (plugins have no time zone database; everything is UTC).

use core::fmt;

/// Day of the week (ISO order: Monday first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Weekday {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

impl Weekday {
    /// All days, Monday first.
    pub const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    /// 0 for Monday … 6 for Sunday.
    pub fn index(self) -> u8 {
        self as u8
    }

    /// The day for an index 0 (Monday) … 6 (Sunday), wrapping modulo 7.
    pub fn from_index(i: u8) -> Weekday {
        Self::ALL[usize::from(i % 7)]
    }

    /// Parses `Mon`, `monday`, `TUE`, … (the first three letters decide, case-insensitive).
    pub fn parse(s: &str) -> Option<Weekday> {
        let s = s.trim();
        let prefix = s.get(..3)?.to_ascii_lowercase();
        let day = match prefix.as_str() {
            "mon" => Weekday::Mon,
            "tue" => Weekday::Tue,
            "wed" => Weekday::Wed,
            "thu" => Weekday::Thu,
            "fri" => Weekday::Fri,
            "sat" => Weekday::Sat,
            "sun" => Weekday::Sun,
            _ => return None,
        };
        let full = [
            "monday",
            "tuesday",
            "wednesday",
            "thursday",
            "friday",
            "saturday",
            "sunday",
        ][usize::from(day.index())];
        let lower = s.to_ascii_lowercase();
        (lower.len() == 3 || full.starts_with(&lower)).then_some(day)
    }
}

impl fmt::Display for Weekday {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
        f.write_str(names[usize::from(self.index())])
    }
}

/// A point in time in UTC, in milliseconds since the Unix epoch (what `host::clock` returns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    unix_ms: u64,
}

const MS_PER_DAY: u64 = 86_400_000;

impl Timestamp {
    /// A timestamp from milliseconds since the Unix epoch.
    pub fn from_unix_ms(unix_ms: u64) -> Self {
        Timestamp { unix_ms }
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_ms(self) -> u64 {
        self.unix_ms
    }

    /// Whole days since 1970-01-01.
    fn days(self) -> u64 {
        self.unix_ms / MS_PER_DAY
    }

    /// The UTC day of the week.
    pub fn weekday(self) -> Weekday {
        // 1970-01-01 was a Thursday (index 3).
        Weekday::from_index(((self.days() + 3) % 7) as u8)
    }

    /// Milliseconds since UTC midnight.
    fn ms_of_day(self) -> u64 {
        self.unix_ms % MS_PER_DAY
    }

    /// The UTC hour, 0–23.
    pub fn hour(self) -> u8 {
        (self.ms_of_day() / 3_600_000) as u8
    }

    /// The UTC minute, 0–59.
    pub fn minute(self) -> u8 {
        (self.ms_of_day() / 60_000 % 60) as u8
    }

    /// Minutes since Monday 00:00 UTC, 0 … 10079: handy for weekly windows.
    pub fn minute_of_week(self) -> u32 {
        u32::from(self.weekday().index()) * 1440
            + u32::from(self.hour()) * 60
            + u32::from(self.minute())
    }

    /// The UTC calendar date as (year, month 1–12, day 1–31).
    pub fn date(self) -> (i64, u8, u8) {
        // Howard Hinnant's civil_from_days.
        let z = self.days() as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = yoe + era * 400 + i64::from(month <= 2);
        (year, month, day)
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 UTC with seconds, e.g. `2026-11-22T14:05:09Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, mo, d) = self.date();
        let secs = self.ms_of_day() / 1000 % 60;
        write!(
            f,
            "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{secs:02}Z",
            self.hour(),
            self.minute()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_is_a_thursday() {
        let t = Timestamp::from_unix_ms(0);
        assert_eq!(t.weekday(), Weekday::Thu);
        assert_eq!(t.date(), (1970, 1, 1));
        assert_eq!(t.to_string(), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn known_dates() {
        // 2026-11-22T14:05:09Z is a Sunday.
        let t = Timestamp::from_unix_ms(1_795_356_309_000);
        assert_eq!(t.to_string(), "2026-11-22T14:05:09Z");
        assert_eq!(t.weekday(), Weekday::Sun);
        assert_eq!(t.minute_of_week(), 6 * 1440 + 14 * 60 + 5);
        // 2000-02-29 (leap day), a Tuesday.
        let t = Timestamp::from_unix_ms(951_782_400_000);
        assert_eq!(t.date(), (2000, 2, 29));
        assert_eq!(t.weekday(), Weekday::Tue);
    }

    #[test]
    fn weekday_parse() {
        assert_eq!(Weekday::parse("Sat"), Some(Weekday::Sat));
        assert_eq!(Weekday::parse("sunday"), Some(Weekday::Sun));
        assert_eq!(Weekday::parse("THU"), Some(Weekday::Thu));
        assert_eq!(Weekday::parse("Satx"), None);
        assert_eq!(Weekday::parse("xyz"), None);
        assert_eq!(Weekday::parse("S"), None);
    }
}
