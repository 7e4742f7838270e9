//! The writing side: events in, bytes to append out, a chain link after every chunk.

use sha2::{Digest, Sha256};

use crate::format::{Event, EventKind, Header};

/// A chunk is closed (linked and handed out for writing) once it holds this many bytes…
pub const CHUNK_BYTES: usize = 64 * 1024;
/// …or once its first event is this many seconds old.
pub const CHUNK_SECS: f64 = 1.0;

/// The domain separator of the first link.
const SEED: &[u8] = b"tether-recording-v1\n";

/// Bytes to append to the recording file, in order. Write and fsync each before asking the
/// session for more than one further chunk: that bounds what a crash can lose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The bytes (whole lines).
    pub bytes: Vec<u8>,
}

/// What a finished recording is, for the `session.close` audit record.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Hex SHA-256 of the whole file.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Events recorded (output, input, resize; not the chain markers).
    pub events: u64,
    /// Seconds from the first to the last event.
    pub duration: f64,
    /// Whether the size limit cut the recording short (the session went on unrecorded).
    pub truncated: bool,
}

/// A recording being made. See the crate docs for the chain.
#[derive(Debug)]
pub struct Recorder {
    link: [u8; 32],
    chunk: Sha256,
    file: Sha256,
    pending: Vec<u8>,
    chunk_start: Option<f64>,
    written: u64,
    limit: u64,
    events: u64,
    links: u64,
    last_time: f64,
    truncated: bool,
    /// Incomplete UTF-8 sequences at the end of the last output, input and stderr data.
    carry: [Vec<u8>; 3],
}

impl Recorder {
    /// Starts a recording of at most `limit` bytes; the returned chunk (the header line) is
    /// the file's first bytes.
    pub fn new(header: &Header, limit: u64) -> (Recorder, Chunk) {
        let line = header.line();
        let mut seed = Sha256::new();
        seed.update(SEED);
        seed.update(&line);
        let link: [u8; 32] = seed.finalize().into();
        let mut file = Sha256::new();
        file.update(&line);
        let r = Recorder {
            link,
            chunk: Sha256::new_with_prefix(link),
            file,
            pending: Vec::new(),
            chunk_start: None,
            written: line.len() as u64,
            limit,
            events: 0,
            links: 0,
            last_time: 0.0,
            truncated: false,
            carry: [Vec::new(), Vec::new(), Vec::new()],
        };
        (r, Chunk { bytes: line })
    }

    /// Records output (`Output`), stderr (`Stderr`), input (`Input`), a resize (`Resize`, data
    /// `COLSxROWS`) or a marker (`Marker`, not counted as an event) at `time` seconds since the
    /// start. Data that is not UTF-8 is stored with replacement
    /// characters (a sequence split across two calls is joined first). Returns false when the
    /// size limit was reached: from then on nothing more is recorded.
    pub fn record(&mut self, time: f64, kind: EventKind, data: &[u8]) -> bool {
        if self.truncated {
            return false;
        }
        let text = match kind {
            EventKind::Output => self.text(0, data),
            EventKind::Input => self.text(1, data),
            EventKind::Stderr => self.text(2, data),
            _ => String::from_utf8_lossy(data).into_owned(),
        };
        if text.is_empty() {
            return true;
        }
        let time = self.time(time);
        let line = Event {
            time,
            kind,
            data: text,
        }
        .line();
        // Room for this line, the limit marker, and the end marker.
        let used = self.written + self.pending.len() as u64;
        if used + line.len() as u64 + 256 > self.limit {
            self.truncated = true;
            let note = Event {
                time,
                kind: EventKind::Marker,
                data: format!(
                    "tether:truncated: the recording limit of {} bytes was reached",
                    self.limit
                ),
            }
            .line();
            self.push(time, &note);
            return false;
        }
        self.push(time, &line);
        // Markers (such as an exec's exit status) are not events, as the verifier counts.
        if kind != EventKind::Marker {
            self.events += 1;
        }
        true
    }

    /// Whether a chunk should be closed now (`now`: seconds since the start).
    pub fn due(&self, now: f64) -> bool {
        match self.chunk_start {
            Some(start) => self.pending.len() >= CHUNK_BYTES || now - start >= CHUNK_SECS,
            None => false,
        }
    }

    /// When the open chunk must be closed at the latest (seconds since the start), if one is
    /// open.
    pub fn deadline(&self) -> Option<f64> {
        self.chunk_start.map(|s| s + CHUNK_SECS)
    }

    /// Closes the open chunk, if it holds anything: its lines and the chain link after them.
    pub fn take(&mut self, now: f64) -> Option<Chunk> {
        if self.pending.is_empty() {
            return None;
        }
        let time = self.time(now);
        let digest: [u8; 32] = std::mem::take(&mut self.chunk).finalize().into();
        self.link = digest;
        self.links += 1;
        let mut bytes = std::mem::take(&mut self.pending);
        bytes.extend_from_slice(
            &Event {
                time,
                kind: EventKind::Marker,
                data: format!("tether:chain:{}:{}", self.links, hex::encode(digest)),
            }
            .line(),
        );
        self.chunk = Sha256::new_with_prefix(self.link);
        self.chunk_start = None;
        Some(self.hand_out(bytes))
    }

    /// Ends the recording at `now`: the last lines and the end marker, and the summary.
    pub fn finish(mut self, now: f64) -> (Chunk, Summary) {
        let time = self.time(now);
        let mut bytes = std::mem::take(&mut self.pending);
        let mut last = std::mem::take(&mut self.chunk);
        last.update(format!("end:{}", self.events).as_bytes());
        let digest: [u8; 32] = last.finalize().into();
        bytes.extend_from_slice(
            &Event {
                time,
                kind: EventKind::Marker,
                data: format!("tether:end:{}:{}", self.events, hex::encode(digest)),
            }
            .line(),
        );
        let chunk = self.hand_out(bytes);
        let summary = Summary {
            sha256: hex::encode(self.file.clone().finalize()),
            size: self.written,
            events: self.events,
            duration: self.last_time,
            truncated: self.truncated,
        };
        (chunk, summary)
    }

    /// Bytes handed out so far (the file's size once they are written).
    pub fn written(&self) -> u64 {
        self.written
    }

    fn hand_out(&mut self, bytes: Vec<u8>) -> Chunk {
        self.file.update(&bytes);
        self.written += bytes.len() as u64;
        Chunk { bytes }
    }

    fn push(&mut self, time: f64, line: &[u8]) {
        if self.chunk_start.is_none() {
            self.chunk_start = Some(time);
        }
        self.chunk.update(line);
        self.pending.extend_from_slice(line);
    }

    /// Times never go backwards (players expect that).
    fn time(&mut self, t: f64) -> f64 {
        if t.is_finite() && t > self.last_time {
            self.last_time = t;
        }
        self.last_time
    }

    /// `data` as text, keeping an incomplete UTF-8 sequence at its end for the next call.
    fn text(&mut self, stream: usize, data: &[u8]) -> String {
        let mut bytes = std::mem::take(&mut self.carry[stream]);
        bytes.extend_from_slice(data);
        let mut out = String::with_capacity(bytes.len());
        let mut rest = &bytes[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    // `good` is valid UTF-8 by construction.
                    out.push_str(&String::from_utf8_lossy(good));
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = &bad[n..];
                        }
                        None => {
                            self.carry[stream] = bad.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::format::TetherMeta;

    pub(crate) fn header() -> Header {
        Header::new(
            80,
            24,
            1_790_000_000,
            TetherMeta {
                id: "r1".into(),
                host: "web1".into(),
                user: "alice".into(),
                via: "cli".into(),
                command: None,
            },
        )
    }

    #[test]
    fn utf8_split_across_reads_is_joined() {
        let (mut r, _) = Recorder::new(&header(), 1 << 20);
        let euro = "€".as_bytes();
        assert!(r.record(0.1, EventKind::Output, &euro[..1]));
        assert!(r.record(0.2, EventKind::Output, &euro[1..]));
        assert!(r.record(0.3, EventKind::Output, b"\xff!"));
        let text = String::from_utf8(r.take(0.4).unwrap().bytes).unwrap();
        assert!(text.contains("\"€\""), "{text}");
        assert!(text.contains("\"\u{FFFD}!\""), "{text}");
    }

    #[test]
    fn chunks_close_by_size_or_age() {
        let (mut r, _) = Recorder::new(&header(), 1 << 30);
        assert!(!r.due(0.0));
        r.record(0.0, EventKind::Output, b"x");
        assert!(!r.due(0.5));
        assert!(r.due(1.0));
        r.take(1.0).unwrap();
        let big = vec![b'y'; CHUNK_BYTES];
        r.record(1.1, EventKind::Output, &big);
        assert!(r.due(1.1));
    }

    #[test]
    fn the_limit_stops_recording_with_a_note() {
        let (mut r, _) = Recorder::new(&header(), 2048);
        let mut n = 0;
        while r.record(n as f64 * 0.01, EventKind::Output, &[b'z'; 100]) {
            n += 1;
        }
        assert!(n > 5 && n < 20, "{n}");
        let (last, s) = r.finish(1.0);
        assert!(s.truncated);
        assert!(s.size <= 2048, "{}", s.size);
        assert!(
            String::from_utf8(last.bytes)
                .unwrap()
                .contains("tether:truncated")
        );
    }
}
