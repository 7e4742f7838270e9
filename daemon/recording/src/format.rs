//! The asciicast v2 lines: one header object, then one `[time, code, data]` array per event.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::RecordingError;

/// What Tether adds to the header (under the `tether` key, which players ignore).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TetherMeta {
    /// The recording's id (also its file name without `.cast`).
    pub id: String,
    /// The host the session ran on.
    pub host: String,
    /// Who opened it (user name or `uid:N`).
    pub user: String,
    /// How it arrived: `cli`, `proxy`, `mcp`, `exec`.
    pub via: String,
    /// The command, for a session that runs one (not a shell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

/// The first line of a recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Always 2.
    pub version: u8,
    /// Terminal columns at the start.
    pub width: u16,
    /// Terminal rows at the start.
    pub height: u16,
    /// Start time, unix seconds.
    pub timestamp: u64,
    /// A title for players.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// `TERM` and `SHELL`, as asciicast defines them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Who, where, how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tether: Option<TetherMeta>,
}

impl Header {
    /// A header for a `width`×`height` terminal opened at `timestamp` (unix seconds).
    pub fn new(width: u16, height: u16, timestamp: u64, meta: TetherMeta) -> Header {
        Header {
            version: 2,
            width: width.max(1),
            height: height.max(1),
            timestamp,
            title: Some(format!("{}@{}", meta.user, meta.host)),
            env: BTreeMap::new(),
            tether: Some(meta),
        }
    }

    /// The header line, with its newline.
    pub fn line(&self) -> Vec<u8> {
        // A struct of strings and numbers always serializes.
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Parses a header line.
    pub fn parse(line: &[u8]) -> Result<Header, RecordingError> {
        let h: Header = serde_json::from_slice(trim_newline(line))
            .map_err(|e| RecordingError::Header(e.to_string()))?;
        if h.version != 2 {
            return Err(RecordingError::Header(format!(
                "version {} (only 2 is supported)",
                h.version
            )));
        }
        Ok(h)
    }
}

/// What an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Output to the terminal (`o`); an exec session's stdout.
    Output,
    /// An exec session's stderr: `e`, a code of Tether's own (asciicast v2 players ignore
    /// codes they don't know; `tether sessions play` shows it like output).
    Stderr,
    /// Input from the keyboard (`i`).
    Input,
    /// A terminal resize (`r`, data `COLSxROWS`).
    Resize,
    /// A marker (`m`); Tether's chain links are markers.
    Marker,
}

impl EventKind {
    /// The asciicast code.
    pub fn code(self) -> &'static str {
        match self {
            EventKind::Output => "o",
            EventKind::Stderr => "e",
            EventKind::Input => "i",
            EventKind::Resize => "r",
            EventKind::Marker => "m",
        }
    }

    fn from_code(code: &str) -> Option<EventKind> {
        Some(match code {
            "o" => EventKind::Output,
            "e" => EventKind::Stderr,
            "i" => EventKind::Input,
            "r" => EventKind::Resize,
            "m" => EventKind::Marker,
            _ => return None,
        })
    }
}

/// One event of a recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Seconds since the start.
    pub time: f64,
    /// What it is.
    pub kind: EventKind,
    /// The text (output, input, `COLSxROWS`, a marker label).
    pub data: String,
}

impl Event {
    /// The event's line, with its newline.
    pub fn line(&self) -> Vec<u8> {
        let t = if self.time.is_finite() && self.time >= 0.0 {
            self.time
        } else {
            0.0
        };
        // Microsecond resolution, like asciinema's recorder.
        let v = serde_json::json!([(t * 1e6).round() / 1e6, self.kind.code(), self.data]);
        let mut out = serde_json::to_vec(&v).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// Parses an event line (`line_no` for the error).
pub fn parse_event(line: &[u8], line_no: u64) -> Result<Event, RecordingError> {
    let bad = |why: String| RecordingError::Event { line: line_no, why };
    let (time, code, data): (f64, String, String) =
        serde_json::from_slice(trim_newline(line)).map_err(|e| bad(e.to_string()))?;
    if !time.is_finite() || time < 0.0 {
        return Err(bad(format!("time {time} is not a non-negative number")));
    }
    let kind = EventKind::from_code(&code).ok_or_else(|| bad(format!("unknown code {code:?}")))?;
    Ok(Event { time, kind, data })
}

/// Whether `id` can name a recording file: `a-z 0-9 -`, 1 to 64 characters (so it can never
/// leave the recordings directory).
pub fn valid_id(id: &str) -> Result<(), RecordingError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(RecordingError::BadId(id.chars().take(80).collect()))
    }
}

pub(crate) fn trim_newline(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn events_round_trip_with_escapes() {
        let e = Event {
            time: 1.5,
            kind: EventKind::Output,
            data: "a\"b\\c\r\n\u{1b}[0m€".into(),
        };
        let line = e.line();
        assert!(line.ends_with(b"\n"));
        assert_eq!(parse_event(&line, 2).unwrap(), e);
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        for bad in [
            &b"[1, \"o\"]"[..],
            b"{}",
            b"[-1, \"o\", \"x\"]",
            b"[1, \"z\", \"x\"]",
        ] {
            match parse_event(bad, 7) {
                Err(RecordingError::Event { line: 7, .. }) => {}
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bad)),
            }
        }
        assert!(
            Header::parse(b"{\"version\":1,\"width\":1,\"height\":1,\"timestamp\":0}").is_err()
        );
    }

    #[test]
    fn ids_cannot_leave_the_directory() {
        assert!(valid_id("2026-11-27-web1-3f9a").is_ok());
        for bad in ["", "../x", "a/b", "A", "x.cast", "-x", &"a".repeat(65)] {
            assert!(valid_id(bad).is_err(), "{bad}");
        }
    }
}
