//! RFC 3339 → Unix milliseconds, without a date library.

use crate::error::SiemError;

fn num(s: &str, err: &impl Fn() -> SiemError) -> Result<i64, SiemError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    s.parse().map_err(|_| err())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp
/// (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`).
pub fn rfc3339_to_unix_ms(ts: &str) -> Result<i64, SiemError> {
    let err = || SiemError::Timestamp(ts.to_owned());
    let b = ts.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(err());
    }
    if b[13] != b':' || b[16] != b':' {
        return Err(err());
    }
    let (y, mo, d) = (
        num(&ts[0..4], &err)?,
        num(&ts[5..7], &err)?,
        num(&ts[8..10], &err)?,
    );
    let (h, mi, s) = (
        num(&ts[11..13], &err)?,
        num(&ts[14..16], &err)?,
        num(&ts[17..19], &err)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return Err(err());
    }
    let mut rest = &ts[19..];
    let mut ms = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return Err(err());
        }
        let digits = &frac[..n];
        let mut v = 0i64;
        for (i, c) in digits.bytes().take(3).enumerate() {
            v += i64::from(c - b'0') * 10i64.pow(2 - i as u32);
        }
        ms = v;
        rest = &frac[n..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            if rest.as_bytes()[3] != b':' {
                return Err(err());
            }
            let m = num(&rest[1..3], &err)? * 60 + num(&rest[4..6], &err)?;
            if rest.starts_with('-') { -m } else { m }
        }
        _ => return Err(err()),
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + s - offset_min * 60;
    Ok(secs * 1000 + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc_offsets_and_fractions() {
        assert_eq!(rfc3339_to_unix_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            rfc3339_to_unix_ms("2026-11-27T16:49:48.123456Z"),
            Ok(1_795_798_188_123)
        );
        assert_eq!(
            rfc3339_to_unix_ms("2026-11-27T17:49:48.1+01:00"),
            Ok(1_795_798_188_100)
        );
        assert_eq!(
            rfc3339_to_unix_ms("2000-02-29T00:00:00Z"),
            Ok(951_782_400_000)
        );
        for bad in [
            "",
            "2026-11-27",
            "2026-13-01T00:00:00Z",
            "2026-11-27T00:00:00",
            "2026-11-27T00:00:00.Z",
            "x026-11-27T00:00:00Z",
        ] {
            assert!(rfc3339_to_unix_ms(bad).is_err(), "{bad}");
        }
    }
}
