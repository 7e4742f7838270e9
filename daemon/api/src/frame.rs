//! The `tether-session/1` protocol spoken after `POST /v1/session/{host}` upgrades the
//! connection: a sans-IO encoder and decoder of small typed frames (no IO here; the CLI and the
//! daemon each drive it with their own sockets).
//!
//! A frame is a one-byte type, a four-byte big-endian payload length and the payload:
//!
//! | type | name | payload | direction |
//! |---|---|---|---|
//! | 1 | `Stdin` | bytes | client → daemon |
//! | 2 | `Stdout` | bytes (the pty's output when there is one) | daemon → client |
//! | 3 | `Stderr` | bytes | daemon → client |
//! | 4 | `Resize` | `cols: u16`, `rows: u16` (big-endian) | client → daemon |
//! | 5 | `Eof` | empty: no more stdin | client → daemon |
//! | 6 | `Exit` | `0` + `code: i32`, or `1` + the signal's name | daemon → client, last |
//! | 7 | `Error` | UTF-8 message: why the session could not run or ended | daemon → client, last |
//!
//! Payloads are at most [`MAX_PAYLOAD`] bytes; a longer declared length, an unknown type or a
//! malformed fixed payload is a [`FrameError`] and the connection is dropped.

/// Largest payload of one frame (64 KiB).
pub const MAX_PAYLOAD: usize = 64 * 1024;

const HEADER: usize = 5;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Keystrokes or piped input for the remote side.
    Stdin(Vec<u8>),
    /// Remote output (the terminal's, with a pty).
    Stdout(Vec<u8>),
    /// Remote stderr (sessions without a pty).
    Stderr(Vec<u8>),
    /// The local terminal changed size.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// The client's stdin ended.
    Eof,
    /// The remote side ended: its exit code, or the signal that ended it.
    Exit(ExitStatus),
    /// The session could not start or broke; the message says why and what to do.
    Error(String),
}

/// How the remote side ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal (named without `SIG`, e.g. `TERM`) ended it.
    Signal(String),
}

/// Bytes that are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame declared more than [`MAX_PAYLOAD`] bytes.
    #[error(
        "a session frame declared {len} bytes, more than the {MAX_PAYLOAD} allowed; the peer is not speaking tether-session/1"
    )]
    TooLong {
        /// The declared length.
        len: usize,
    },
    /// An unknown frame type.
    #[error("unknown session frame type {0}; check that tether and tetherd are the same version")]
    UnknownType(u8),
    /// A fixed-size payload had the wrong size or content.
    #[error("malformed {what} frame: {why}")]
    Malformed {
        /// The frame type.
        what: &'static str,
        /// What was wrong.
        why: String,
    },
}

impl Frame {
    /// Appends the encoded frame to `out`. Data frames longer than [`MAX_PAYLOAD`] are split
    /// into several frames of the same type.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut put = |ty: u8, payload: &[u8]| {
            out.push(ty);
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            out.extend_from_slice(payload);
        };
        let data = |ty: u8, bytes: &[u8], put: &mut dyn FnMut(u8, &[u8])| {
            if bytes.is_empty() {
                put(ty, bytes);
            }
            for chunk in bytes.chunks(MAX_PAYLOAD) {
                put(ty, chunk);
            }
        };
        match self {
            Frame::Stdin(b) => data(1, b, &mut put),
            Frame::Stdout(b) => data(2, b, &mut put),
            Frame::Stderr(b) => data(3, b, &mut put),
            Frame::Resize { cols, rows } => {
                let mut p = [0u8; 4];
                p[..2].copy_from_slice(&cols.to_be_bytes());
                p[2..].copy_from_slice(&rows.to_be_bytes());
                put(4, &p);
            }
            Frame::Eof => put(5, &[]),
            Frame::Exit(ExitStatus::Code(c)) => {
                let mut p = vec![0u8];
                p.extend_from_slice(&c.to_be_bytes());
                put(6, &p);
            }
            Frame::Exit(ExitStatus::Signal(s)) => {
                let mut p = vec![1u8];
                p.extend_from_slice(&s.as_bytes()[..s.len().min(64)]);
                put(6, &p);
            }
            Frame::Error(m) => {
                let m = &m.as_bytes()[..m.len().min(MAX_PAYLOAD)];
                put(7, m);
            }
        }
    }

    /// The encoded frame.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Reassembles frames from bytes as they arrive. Holds at most one partial frame
/// (header + [`MAX_PAYLOAD`]) beyond what has been taken out.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Adds bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Whether a partial frame is pending (the connection ending now would cut it).
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The next complete frame, `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let ty = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLong { len });
        }
        if !(1..=7).contains(&ty) {
            return Err(FrameError::UnknownType(ty));
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let payload: Vec<u8> = self.buf[HEADER..HEADER + len].to_vec();
        self.buf.drain(..HEADER + len);
        let malformed = |what: &'static str, why: String| FrameError::Malformed { what, why };
        let frame = match ty {
            1 => Frame::Stdin(payload),
            2 => Frame::Stdout(payload),
            3 => Frame::Stderr(payload),
            4 => match payload[..] {
                [a, b, c, d] => Frame::Resize {
                    cols: u16::from_be_bytes([a, b]),
                    rows: u16::from_be_bytes([c, d]),
                },
                _ => return Err(malformed("resize", format!("{len} bytes, expected 4"))),
            },
            5 if payload.is_empty() => Frame::Eof,
            5 => return Err(malformed("eof", format!("{len} bytes, expected none"))),
            6 => match payload.split_first() {
                Some((0, code)) => match <[u8; 4]>::try_from(code) {
                    Ok(c) => Frame::Exit(ExitStatus::Code(i32::from_be_bytes(c))),
                    Err(_) => {
                        return Err(malformed("exit", format!("a code of {} bytes", code.len())));
                    }
                },
                Some((1, name)) => Frame::Exit(ExitStatus::Signal(
                    String::from_utf8_lossy(name).into_owned(),
                )),
                _ => return Err(malformed("exit", "unknown kind".to_owned())),
            },
            _ => Frame::Error(String::from_utf8_lossy(&payload).into_owned()),
        };
        Ok(Some(frame))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn all() -> Vec<Frame> {
        vec![
            Frame::Stdin(b"ls\r".to_vec()),
            Frame::Stdout(b"hi\r\n".to_vec()),
            Frame::Stderr(Vec::new()),
            Frame::Resize {
                cols: 120,
                rows: 40,
            },
            Frame::Eof,
            Frame::Exit(ExitStatus::Code(-3)),
            Frame::Exit(ExitStatus::Signal("TERM".into())),
            Frame::Error("refused by policy".into()),
        ]
    }

    #[test]
    fn every_frame_round_trips_even_one_byte_at_a_time() {
        let mut wire = Vec::new();
        for f in all() {
            f.encode(&mut wire);
        }
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &wire {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, all());
        assert!(!d.has_partial());
    }

    #[test]
    fn long_data_is_split_and_reassembles() {
        let big = vec![7u8; MAX_PAYLOAD * 2 + 5];
        let wire = Frame::Stdout(big.clone()).to_bytes();
        let mut d = Decoder::new();
        d.push(&wire);
        let mut joined = Vec::new();
        let mut n = 0;
        while let Some(Frame::Stdout(b)) = d.next_frame().unwrap() {
            joined.extend(b);
            n += 1;
        }
        assert_eq!((n, joined), (3, big));
    }

    #[test]
    fn bad_input_is_a_precise_error() {
        let mut d = Decoder::new();
        d.push(&[2, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_frame(), Err(FrameError::TooLong { .. })));
        let mut d = Decoder::new();
        d.push(&[9, 0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::UnknownType(9)));
        let mut d = Decoder::new();
        d.push(&[4, 0, 0, 0, 3, 1, 2, 3]);
        assert!(matches!(
            d.next_frame(),
            Err(FrameError::Malformed { what: "resize", .. })
        ));
        let mut d = Decoder::new();
        d.push(&[6, 0, 0, 0, 2, 0, 1]);
        assert!(matches!(
            d.next_frame(),
            Err(FrameError::Malformed { what: "exit", .. })
        ));
        // A partial frame waits for more.
        let mut d = Decoder::new();
        d.push(&[1, 0, 0, 0, 3, b'a']);
        assert_eq!(d.next_frame(), Ok(None));
        assert!(d.has_partial());
    }
}
