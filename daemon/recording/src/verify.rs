//! The reading side: check a recording's chain, or play its events, one line at a time.

use sha2::{Digest, Sha256};

use crate::RecordingError;
use crate::format::{Event, EventKind, Header, parse_event};

/// What a recording turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every link checks out and the end marker is there.
    Complete {
        /// Hex SHA-256 of the file (compare with the `session.close` audit record).
        sha256: String,
        /// File size in bytes.
        size: u64,
        /// Events (not counting chain markers).
        events: u64,
        /// Seconds from start to the last event.
        duration: f64,
    },
    /// Cut short: what is there checks out up to the last link, but the end marker is missing
    /// (the session is still running, or the daemon stopped without closing it).
    Truncated {
        /// Hex SHA-256 of the bytes read.
        sha256: String,
        /// Bytes read.
        size: u64,
        /// Events covered by a verified link.
        verified_events: u64,
        /// Bytes after the last verified link (not covered by any link).
        unverified_bytes: u64,
    },
    /// Edited or damaged: a link doesn't match, or a line is not a recording line.
    Corrupt {
        /// 1-based line number where it went wrong.
        line: u64,
        /// What is wrong.
        why: String,
    },
}

/// Checks a recording fed line by line (each line with its newline; the last one may lack it
/// if the file was cut mid-line).
#[derive(Debug)]
pub struct Verifier {
    line: u64,
    header: Option<Header>,
    link: [u8; 32],
    chunk: Sha256,
    file: Sha256,
    size: u64,
    events: u64,
    verified_events: u64,
    links: u64,
    since_link: u64,
    last_time: f64,
    ended: bool,
    cut: bool,
    failed: Option<(u64, String)>,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Verifier {
    /// A verifier expecting the header line first.
    pub fn new() -> Verifier {
        Verifier {
            line: 0,
            header: None,
            link: [0; 32],
            chunk: Sha256::new(),
            file: Sha256::new(),
            size: 0,
            events: 0,
            verified_events: 0,
            links: 0,
            since_link: 0,
            last_time: 0.0,
            ended: false,
            cut: false,
            failed: None,
        }
    }

    /// The header, once the first line was read.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// Feeds one line. After the first failure the rest is only counted.
    pub fn push_line(&mut self, line: &[u8]) {
        self.line += 1;
        self.size += line.len() as u64;
        self.file.update(line);
        if self.failed.is_some() {
            return;
        }
        if let Err(why) = self.check(line) {
            self.failed = Some((self.line, why));
        }
    }

    fn check(&mut self, line: &[u8]) -> Result<(), String> {
        if !line.ends_with(b"\n") {
            // A line cut by a crash: only acceptable as the very last thing in the file, where
            // it makes the recording truncated, not corrupt. `finish` decides.
            self.since_link += line.len() as u64;
            self.cut = true;
            return Ok(());
        }
        if self.cut {
            return Err("a line was cut short before this one".into());
        }
        if self.ended {
            return Err("data after the end marker".into());
        }
        let Some(_) = &self.header else {
            let h = Header::parse(line).map_err(|e| e.to_string())?;
            let mut seed = Sha256::new();
            seed.update(b"tether-recording-v1\n");
            seed.update(line);
            self.link = seed.finalize().into();
            self.chunk = Sha256::new_with_prefix(self.link);
            self.header = Some(h);
            return Ok(());
        };
        let ev = parse_event(line, self.line).map_err(|e| e.to_string())?;
        if ev.time + 1e-6 < self.last_time {
            return Err(format!(
                "time goes backwards ({} after {})",
                ev.time, self.last_time
            ));
        }
        self.last_time = self.last_time.max(ev.time);
        if ev.kind == EventKind::Marker {
            if let Some(rest) = ev.data.strip_prefix("tether:chain:") {
                return self.link_marker(rest);
            }
            if let Some(rest) = ev.data.strip_prefix("tether:end:") {
                return self.end_marker(rest);
            }
        }
        self.chunk.update(line);
        self.since_link += line.len() as u64;
        if ev.kind != EventKind::Marker {
            self.events += 1;
        }
        Ok(())
    }

    fn link_marker(&mut self, rest: &str) -> Result<(), String> {
        let (n, hex) = rest
            .split_once(':')
            .ok_or_else(|| format!("malformed chain marker {rest:?}"))?;
        let want = self.links + 1;
        if n != want.to_string() {
            return Err(format!("chain link {n} where link {want} was due"));
        }
        let digest: [u8; 32] = std::mem::take(&mut self.chunk).finalize().into();
        if hex != self::hex(&digest) {
            return Err(format!(
                "chain link {want} does not match the lines before it (edited or damaged)"
            ));
        }
        self.link = digest;
        self.links = want;
        self.chunk = Sha256::new_with_prefix(self.link);
        self.since_link = 0;
        self.verified_events = self.events;
        Ok(())
    }

    fn end_marker(&mut self, rest: &str) -> Result<(), String> {
        let (n, hex) = rest
            .split_once(':')
            .ok_or_else(|| format!("malformed end marker {rest:?}"))?;
        if n != self.events.to_string() {
            return Err(format!(
                "the end marker counts {n} events, the file holds {}",
                self.events
            ));
        }
        let mut last = std::mem::take(&mut self.chunk);
        last.update(format!("end:{}", self.events).as_bytes());
        let digest: [u8; 32] = last.finalize().into();
        if hex != self::hex(&digest) {
            return Err(
                "the end marker does not match the lines before it (edited or damaged)".into(),
            );
        }
        self.ended = true;
        self.since_link = 0;
        self.verified_events = self.events;
        Ok(())
    }

    /// The verdict on everything fed.
    pub fn finish(self) -> Verdict {
        if let Some((line, why)) = self.failed {
            return Verdict::Corrupt { line, why };
        }
        if self.header.is_none() {
            return Verdict::Corrupt {
                line: 1,
                why: "empty: no header line".into(),
            };
        }
        let sha256 = hex(&self.file.finalize().into());
        if self.ended {
            Verdict::Complete {
                sha256,
                size: self.size,
                events: self.events,
                duration: self.last_time,
            }
        } else {
            Verdict::Truncated {
                sha256,
                size: self.size,
                verified_events: self.verified_events,
                unverified_bytes: self.since_link,
            }
        }
    }
}

fn hex(d: &[u8; 32]) -> String {
    ::hex::encode(d)
}

/// Yields a recording's events for playback (chain markers left out), line by line.
#[derive(Debug, Default)]
pub struct Player {
    line: u64,
    header: Option<Header>,
}

impl Player {
    /// A player expecting the header line first.
    pub fn new() -> Player {
        Player::default()
    }

    /// The header, once read.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// Feeds one line: `Ok(None)` for the header and Tether's markers, the event otherwise.
    pub fn push_line(&mut self, line: &[u8]) -> Result<Option<Event>, RecordingError> {
        self.line += 1;
        if self.header.is_none() {
            self.header = Some(Header::parse(line)?);
            return Ok(None);
        }
        let ev = parse_event(line, self.line)?;
        if ev.kind == EventKind::Marker && ev.data.starts_with("tether:") {
            return Ok(None);
        }
        Ok(Some(ev))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::format::TetherMeta;
    use crate::recorder::Recorder;

    fn recording(events: &[(f64, &[u8])]) -> (Vec<u8>, crate::Summary) {
        let h = Header::new(80, 24, 1, TetherMeta::default());
        let (mut r, first) = Recorder::new(&h, 1 << 30);
        let mut file = first.bytes;
        for (t, d) in events {
            r.record(*t, EventKind::Output, d);
            if r.due(*t) {
                file.extend(r.take(*t).unwrap().bytes);
            }
        }
        let (last, s) = r.finish(events.last().map_or(0.0, |e| e.0) + 0.1);
        file.extend(last.bytes);
        (file, s)
    }

    #[test]
    fn an_exec_recording_with_stderr_and_an_exit_marker_verifies() {
        let h = Header::new(80, 24, 1, TetherMeta::default());
        let (mut r, first) = Recorder::new(&h, 1 << 20);
        let mut file = first.bytes;
        r.record(0.1, EventKind::Output, b"out\n");
        r.record(0.2, EventKind::Stderr, b"err\n");
        r.record(0.3, EventKind::Marker, b"tether:exit:3");
        let (last, s) = r.finish(0.4);
        file.extend(last.bytes);
        assert_eq!(s.events, 2, "the exit marker is not an event");
        match verdict(&file) {
            Verdict::Complete { events, .. } => assert_eq!(events, 2),
            other => panic!("{other:?}"),
        }
        let text = String::from_utf8(file.clone()).unwrap();
        assert!(text.contains(r#""e","err\n""#), "{text}");
        let mut p = Player::new();
        let evs: Vec<Event> = file
            .split_inclusive(|b| *b == b'\n')
            .filter_map(|l| p.push_line(l).unwrap())
            .collect();
        assert_eq!(evs[1].kind, EventKind::Stderr);
    }

    fn verdict(bytes: &[u8]) -> Verdict {
        let mut v = Verifier::new();
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            v.push_line(line);
        }
        v.finish()
    }

    fn sample() -> (Vec<u8>, crate::Summary) {
        let evs: Vec<(f64, Vec<u8>)> = (0..40)
            .map(|i| (i as f64 * 0.3, format!("line {i}\r\n").into_bytes()))
            .collect();
        let refs: Vec<(f64, &[u8])> = evs.iter().map(|(t, d)| (*t, d.as_slice())).collect();
        recording(&refs)
    }

    #[test]
    fn a_whole_recording_verifies_and_matches_its_summary() {
        let (file, s) = sample();
        assert!(
            file.windows(13).any(|w| w == b"tether:chain:"),
            "several chunks"
        );
        match verdict(&file) {
            Verdict::Complete {
                sha256,
                size,
                events,
                ..
            } => {
                assert_eq!(sha256, s.sha256);
                assert_eq!(size, s.size);
                assert_eq!(size, file.len() as u64);
                assert_eq!(events, 40);
            }
            other => panic!("{other:?}"),
        }
        // Playback yields the 40 events and nothing of Tether's markers.
        let mut p = Player::new();
        let played: Vec<Event> = file
            .split_inclusive(|b| *b == b'\n')
            .filter_map(|l| p.push_line(l).unwrap())
            .collect();
        assert_eq!(played.len(), 40);
        assert_eq!(played[3].data, "line 3\r\n");
    }

    #[test]
    fn every_cut_is_truncated_or_corrupt_never_complete() {
        let (file, _) = sample();
        for cut in 0..file.len() {
            match verdict(&file[..cut]) {
                Verdict::Complete { .. } => panic!("cut at {cut} passed as complete"),
                Verdict::Truncated { size, .. } => assert_eq!(size, cut as u64),
                Verdict::Corrupt { .. } => {}
            }
        }
    }

    #[test]
    fn every_edited_byte_is_detected() {
        let (file, _) = sample();
        for i in 0..file.len() {
            let mut f = file.clone();
            f[i] = if f[i] == b'7' { b'8' } else { b'7' };
            // A changed digit in a marker's time is the only edit the chain does not cover;
            // it can't change what was shown.
            match verdict(&f) {
                Verdict::Complete { .. } => {
                    let line_start = f[..i]
                        .iter()
                        .rposition(|b| *b == b'\n')
                        .map_or(0, |p| p + 1);
                    let line = String::from_utf8_lossy(&f[line_start..]);
                    let line = line.lines().next().unwrap_or("");
                    assert!(
                        line.contains("\"m\",\"tether:"),
                        "edit at {i} undetected: {line}"
                    );
                    let time_end = line.find(',').unwrap();
                    assert!(i - line_start < time_end, "edit at {i} undetected: {line}");
                }
                Verdict::Truncated { .. } | Verdict::Corrupt { .. } => {}
            }
        }
    }

    #[test]
    fn removing_a_chunk_or_reordering_is_detected() {
        let (file, _) = sample();
        let lines: Vec<&[u8]> = file.split_inclusive(|b| *b == b'\n').collect();
        let without: Vec<u8> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 5)
            .flat_map(|(_, l)| l.iter().copied())
            .collect();
        assert!(matches!(verdict(&without), Verdict::Corrupt { .. }));
        let mut swapped = lines.clone();
        swapped.swap(3, 4);
        let swapped: Vec<u8> = swapped.concat();
        assert!(matches!(verdict(&swapped), Verdict::Corrupt { .. }));
    }
}
