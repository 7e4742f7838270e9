//! Printing results: JSON when `--json`, text otherwise.

use serde::Serialize;

/// Prints `value` as one line of JSON on stdout.
pub fn json<T: Serialize>(value: &T) {
    match serde_json::to_string(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("tether: could not encode output: {e}"),
    }
}

/// `3725` → `1h 2m 5s`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m"),
    }
}

/// Seconds since the Unix epoch now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix seconds as RFC 3339 UTC (`2026-11-22T10:00:00Z`).
pub fn rfc3339(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("unix {unix}"))
}

/// `unix` relative to `now`, as people say it: `in 23 h`, `5 min ago`, `now`.
pub fn relative(unix: u64, now: u64) -> String {
    let (secs, future) = if unix >= now {
        (unix - now, true)
    } else {
        (now - unix, false)
    };
    let amount = match secs {
        0..5 => return "now".to_owned(),
        5..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..172_800 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    };
    if future {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// `2026-11-22T10:00:00Z (in 23 h)`: an absolute time people can read, and how far it is.
pub fn when(unix: u64) -> String {
    format!("{} ({})", rfc3339(unix), relative(unix, now_unix()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_read_as_rfc3339_and_relative() {
        assert_eq!(super::rfc3339(1_795_785_010), "2026-11-27T13:10:10Z");
        let now = 1_795_785_010;
        assert_eq!(super::relative(now + 23 * 3600 + 59, now), "in 23 h");
        assert_eq!(super::relative(now - 300, now), "5 min ago");
        assert_eq!(super::relative(now, now), "now");
        assert_eq!(super::relative(now - 3 * 86_400, now), "3 days ago");
        assert_eq!(super::relative(now + 30, now), "in 30 s");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(super::duration(5), "5s");
        assert_eq!(super::duration(3725), "1h 2m 5s");
        assert_eq!(super::duration(90_061), "1d 1h 1m");
    }
}
