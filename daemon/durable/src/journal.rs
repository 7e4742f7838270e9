//! An append-only journal of self-checking lines, replayed over a snapshot.
//!
//! A store that used to rewrite its whole state file on every change (O(state) bytes per
//! operation) appends one line per change instead and rewrites the snapshot only now and then
//! (compaction). Each line is
//!
//! ```text
//! CHECKSUM SEQ PAYLOAD\n
//! ```
//!
//! `CHECKSUM` is the first 8 bytes of SHA-256 over `SEQ PAYLOAD`, in hex; `SEQ` a decimal
//! sequence number, one more than the previous line's; `PAYLOAD` the caller's bytes (one line of
//! JSON, no newline). [`Journal::append`] writes a batch of lines and `fdatasync`s the file
//! before it returns; on failure it cuts the file back to where it was, so nothing of a failed
//! batch stays.
//!
//! Replay ([`Journal::open`], [`read`]) is idempotent across compaction: the snapshot records the
//! last sequence number it contains, and lines at or below it are skipped, so a crash after the
//! new snapshot is in place but before the journal is truncated applies nothing twice. A torn
//! tail (a crash in the middle of an append: an incomplete or unverifiable last line, or
//! trailing garbage with no valid line after it) is reported in [`Replay::torn`] and cut off;
//! an unverifiable line *followed by* valid lines, or a gap in the sequence, is corruption and
//! an error naming the file and line — state is never dropped silently.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::{Error, Result, err, parent, sync_dir};

/// Longest payload accepted by [`Journal::append`] (a line is read whole at replay).
pub const MAX_PAYLOAD: usize = 1 << 20;

/// One replayed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its sequence number.
    pub seq: u64,
    /// Its line number in the file (1-based), for error messages.
    pub line: usize,
    /// The caller's payload.
    pub payload: Vec<u8>,
}

/// A torn tail found at replay: what was discarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Torn {
    /// The first discarded line (1-based).
    pub line: usize,
    /// Bytes discarded.
    pub bytes: u64,
}

/// What a journal holds beyond a snapshot.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Lines with a sequence number above the snapshot's, in order.
    pub entries: Vec<Entry>,
    /// Lines at or below the snapshot's sequence number (already in it; skipped).
    pub stale: usize,
    /// A torn tail, if the last append was interrupted.
    pub torn: Option<Torn>,
    /// Length of the valid prefix of the file (everything before the torn tail).
    pub valid_len: u64,
    /// The highest sequence number seen (the snapshot's if there is none above it).
    pub last_seq: u64,
}

fn corrupt(path: &Path, line: usize, what: String) -> Error {
    Error {
        step: "replay journal",
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("line {line}: {what}"),
        ),
    }
}

fn checksum(body: &[u8]) -> String {
    let d = Sha256::digest(body);
    let mut s = String::with_capacity(16);
    for b in &d[..8] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Encodes one line (with its newline).
fn encode(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    let mut body = format!("{seq} ").into_bytes();
    body.extend_from_slice(payload);
    out.extend_from_slice(checksum(&body).as_bytes());
    out.push(b' ');
    out.extend_from_slice(&body);
    out.push(b'\n');
}

/// Decodes one line (without its newline): `(seq, payload)`, or why it does not verify.
fn decode(line: &[u8]) -> std::result::Result<(u64, &[u8]), &'static str> {
    if line.len() < 18 || line[16] != b' ' {
        return Err("it is not `CHECKSUM SEQ PAYLOAD`");
    }
    let (sum, body) = (&line[..16], &line[17..]);
    if sum != checksum(body).as_bytes() {
        return Err("its checksum does not match its content");
    }
    let sp = body
        .iter()
        .position(|&b| b == b' ')
        .ok_or("it has no sequence number")?;
    let seq = std::str::from_utf8(&body[..sp])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or("its sequence number is not a number")?;
    Ok((seq, &body[sp + 1..]))
}

/// Reads the journal at `path` over a snapshot holding everything up to `after_seq` (0: no
/// snapshot, or one from before journals). A missing file is an empty journal. Nothing is
/// written.
pub fn read(path: &Path, after_seq: u64) -> Result<Replay> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Replay {
                last_seq: after_seq,
                ..Replay::default()
            });
        }
        Err(e) => return Err(err("read", path)(e)),
    };
    parse(path, &bytes, after_seq)
}

fn parse(path: &Path, bytes: &[u8], after_seq: u64) -> Result<Replay> {
    let mut out = Replay {
        last_seq: after_seq,
        ..Replay::default()
    };
    // The first unverifiable line, if any: fine if nothing valid follows (a torn tail).
    let mut bad: Option<(usize, u64, &'static str)> = None;
    let mut prev: Option<u64> = None;
    let mut pos = 0usize;
    let mut lineno = 0usize;
    while pos < bytes.len() {
        lineno += 1;
        let rest = &bytes[pos..];
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], pos + i + 1),
            None => (rest, bytes.len()),
        };
        let complete = next <= bytes.len() && bytes.get(next - 1) == Some(&b'\n');
        let decoded = if complete {
            decode(line)
        } else {
            Err("it is incomplete (no newline)")
        };
        match decoded {
            Err(why) => {
                if bad.is_none() {
                    bad = Some((lineno, pos as u64, why));
                }
            }
            Ok((seq, payload)) => {
                if let Some((bline, _, why)) = bad {
                    return Err(corrupt(
                        path,
                        bline,
                        format!("{why}, and valid lines follow it"),
                    ));
                }
                if let Some(p) = prev
                    && seq != p + 1
                {
                    return Err(corrupt(
                        path,
                        lineno,
                        format!(
                            "sequence number {seq} follows {p} (lines are missing or out of order)"
                        ),
                    ));
                }
                if seq <= after_seq {
                    out.stale += 1;
                } else {
                    if prev.is_none_or(|p| p <= after_seq) && seq != after_seq + 1 {
                        return Err(corrupt(
                            path,
                            lineno,
                            format!(
                                "sequence number {seq} but the snapshot ends at {after_seq} \
                                 (lines are missing)"
                            ),
                        ));
                    }
                    out.entries.push(Entry {
                        seq,
                        line: lineno,
                        payload: payload.to_vec(),
                    });
                    out.last_seq = seq;
                }
                prev = Some(seq);
                out.valid_len = next as u64;
            }
        }
        pos = next;
    }
    if let Some((line, start, _)) = bad {
        out.torn = Some(Torn {
            line,
            bytes: bytes.len() as u64 - start,
        });
    }
    Ok(out)
}

/// An open journal: appends durable lines after the replayed ones.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    mode: u32,
    /// Opened for appending at the first append (a store from before journals stays untouched
    /// until its first change).
    file: Option<File>,
    /// Length of the valid content.
    len: u64,
    /// The next sequence number.
    next_seq: u64,
    /// A failed append could not be cut back: retry the cut before the next append.
    dirty: bool,
}

impl Journal {
    /// Opens the journal at `path` (mode `mode` if it has to be created at the first append)
    /// over a snapshot holding everything up to `after_seq`, and returns what to replay. A torn
    /// tail is cut off the file (durably) before this returns; corruption is an error and
    /// changes nothing.
    pub fn open(path: &Path, mode: u32, after_seq: u64) -> Result<(Journal, Replay)> {
        let replay = read(path, after_seq)?;
        let mut j = Journal {
            path: path.to_path_buf(),
            mode,
            file: None,
            len: replay.valid_len,
            next_seq: replay.last_seq + 1,
            dirty: false,
        };
        if replay.torn.is_some() {
            let f = j.file()?;
            f.set_len(replay.valid_len)
                .and_then(|()| f.sync_data())
                .map_err(err("cut the torn tail of", path))?;
        }
        Ok((j, replay))
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of valid content.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds no lines.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sequence number of the last line written (or of the snapshot it continues).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    fn file(&mut self) -> Result<&mut File> {
        let f = match self.file.take() {
            Some(f) => f,
            None => {
                let existed = self.path.exists();
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(self.mode)
                    .open(&self.path)
                    .map_err(err("open", &self.path))?;
                if !existed {
                    f.set_permissions(std::fs::Permissions::from_mode(self.mode))
                        .map_err(err("chmod", &self.path))?;
                    f.sync_all().map_err(err("fsync", &self.path))?;
                    sync_dir(parent(&self.path))?;
                }
                f
            }
        };
        Ok(self.file.insert(f))
    }

    /// Appends one line per payload and `fdatasync`s; returns the last sequence number written.
    /// On error nothing of the batch remains in the file (it is cut back to its previous
    /// length), and the sequence numbers are not used up.
    pub fn append(&mut self, payloads: &[&[u8]]) -> Result<u64> {
        let mut buf = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            if p.contains(&b'\n') || p.len() > MAX_PAYLOAD {
                return Err(err("append to", &self.path)(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a journal payload must be one line of at most 1 MiB",
                )));
            }
            encode(self.next_seq + i as u64, p, &mut buf);
        }
        let len = self.len;
        let path = self.path.clone();
        let dirty = self.dirty;
        let f = self.file()?;
        if dirty {
            f.set_len(len)
                .and_then(|()| f.sync_data())
                .map_err(err("cut back a failed append to", &path))?;
        }
        let wrote = (|| {
            use std::io::Seek as _;
            f.seek(std::io::SeekFrom::Start(len))?;
            f.write_all(&buf)?;
            f.sync_data()
        })();
        if let Err(e) = wrote {
            // Cut the partial batch off so a later append does not land after garbage (which a
            // replay would report as corruption in the middle).
            let cut = f.set_len(len).and_then(|()| f.sync_data());
            self.dirty = cut.is_err();
            return Err(err("append to", &path)(e));
        }
        self.dirty = false;
        self.len += buf.len() as u64;
        self.next_seq += payloads.len() as u64;
        Ok(self.next_seq - 1)
    }

    /// Empties the journal (durably) once a snapshot holding everything up to
    /// [`Journal::last_seq`] is in place; sequence numbers continue.
    pub fn truncate(&mut self) -> Result<()> {
        let path = self.path.clone();
        let f = self.file()?;
        f.set_len(0)
            .and_then(|()| f.sync_data())
            .map_err(err("truncate", &path))?;
        self.len = 0;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn payloads(j: &Replay) -> Vec<(u64, String)> {
        j.entries
            .iter()
            .map(|e| (e.seq, String::from_utf8(e.payload.clone()).unwrap()))
            .collect()
    }

    #[test]
    fn appends_replay_in_order_and_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.journal");
        let (mut j, r) = Journal::open(&p, 0o600, 0).unwrap();
        assert!(r.entries.is_empty() && !p.exists());
        assert_eq!(j.append(&[b"a", b"b"]).unwrap(), 2);
        assert_eq!(j.append(&[b"{\"c\":1}"]).unwrap(), 3);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (j2, r) = Journal::open(&p, 0o600, 0).unwrap();
        assert_eq!(
            payloads(&r),
            vec![(1, "a".into()), (2, "b".into()), (3, "{\"c\":1}".into())]
        );
        assert_eq!(j2.last_seq(), 3);
        // Over a snapshot holding 1..=2 only line 3 is replayed.
        let r = read(&p, 2).unwrap();
        assert_eq!(payloads(&r), vec![(3, "{\"c\":1}".into())]);
        assert_eq!(r.stale, 2);
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_continue() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.journal");
        let (mut j, _) = Journal::open(&p, 0o600, 0).unwrap();
        j.append(&[b"one", b"two"]).unwrap();
        let good = std::fs::read(&p).unwrap();
        for tail in [&b"3a4f"[..], b"0000000000000000 3 three\n", b"\0\0\0\0\0\0"] {
            let mut bytes = good.clone();
            bytes.extend_from_slice(tail);
            std::fs::write(&p, &bytes).unwrap();
            let (mut j, r) = Journal::open(&p, 0o600, 0).unwrap();
            assert_eq!(r.torn.as_ref().unwrap().line, 3, "{tail:?}");
            assert_eq!(r.torn.unwrap().bytes, tail.len() as u64);
            assert_eq!(std::fs::read(&p).unwrap(), good);
            assert_eq!(j.append(&[b"three"]).unwrap(), 3);
            assert_eq!(read(&p, 0).unwrap().entries.len(), 3);
            std::fs::write(&p, &good).unwrap();
        }
    }

    #[test]
    fn corruption_in_the_middle_names_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.journal");
        let (mut j, _) = Journal::open(&p, 0o600, 0).unwrap();
        j.append(&[b"one", b"two", b"three"]).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        let second = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
        bytes[second + 20] ^= 1; // inside line 2's payload
        std::fs::write(&p, &bytes).unwrap();
        let e = Journal::open(&p, 0o600, 0).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&p.display().to_string())
                && msg.contains("line 2: ")
                && msg.contains("checksum"),
            "{msg}"
        );
        // Nothing was cut.
        assert_eq!(std::fs::read(&p).unwrap(), bytes);
    }

    #[test]
    fn sequence_gaps_are_corruption() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.journal");
        let mut bytes = Vec::new();
        encode(1, b"a", &mut bytes);
        encode(3, b"c", &mut bytes);
        std::fs::write(&p, &bytes).unwrap();
        let msg = read(&p, 0).unwrap_err().to_string();
        assert!(
            msg.contains("line 2: ") && msg.contains("follows 1"),
            "{msg}"
        );
        // A journal that starts past the snapshot's end is missing lines too.
        let mut bytes = Vec::new();
        encode(5, b"e", &mut bytes);
        std::fs::write(&p, &bytes).unwrap();
        let msg = read(&p, 3).unwrap_err().to_string();
        assert!(
            msg.contains("line 1: ") && msg.contains("ends at 3"),
            "{msg}"
        );
        // Stale lines (crash after the snapshot, before the truncate) are skipped.
        let mut bytes = Vec::new();
        encode(4, b"d", &mut bytes);
        encode(5, b"e", &mut bytes);
        std::fs::write(&p, &bytes).unwrap();
        let r = read(&p, 5).unwrap();
        assert!(r.entries.is_empty());
        assert_eq!((r.stale, r.last_seq), (2, 5));
    }

    #[test]
    fn truncate_keeps_sequence_numbers_going() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.journal");
        let (mut j, _) = Journal::open(&p, 0o600, 0).unwrap();
        j.append(&[b"a", b"b"]).unwrap();
        j.truncate().unwrap();
        assert!(j.is_empty());
        assert_eq!(j.append(&[b"c"]).unwrap(), 3);
        let r = read(&p, 2).unwrap();
        assert_eq!(payloads(&r), vec![(3, "c".into())]);
        assert!(j.append(&[b"x\ny"]).is_err());
        assert_eq!(j.last_seq(), 3);
    }
}
