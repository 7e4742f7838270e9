//! The verifier: walks the whole chain and names the first break.

use std::collections::VecDeque;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Deserialize;
use time::Date;

use crate::chain::{LineFault, LineInfo, check_line, check_rotation};
use crate::checkpoint::{Checkpoint, read_head};
use crate::error::{AuditError, Result};
use crate::files::list_day_files;
use crate::keys::{KeyRing, KeySource};

pub use tether_model::audit::{Break, BreakKind, VerifyReport, VerifyVerdict};

use crate::anchor::{Anchor as Counter, HeadAnchor};

/// One line, checked on its own (hash, HMAC), in file order.
struct Checked {
    /// Bytes including the newline.
    n: usize,
    /// False for a last line without a newline.
    complete: bool,
    res: std::result::Result<LineInfo, (Option<u64>, LineFault)>,
}

/// Reads a day file in large chunks and checks the lines of each chunk on two threads; the
/// caller then walks the results in order for the links between records (cheap, sequential).
struct ChunkReader<'k> {
    f: std::fs::File,
    keys: &'k KeyRing,
    carry: Vec<u8>,
    queue: VecDeque<Checked>,
    eof: bool,
    /// Bytes read so far.
    pos: u64,
    /// Offset of a non-zero byte found after the start of the zero tail (damage: the writer's
    /// preallocated tail is all zeros), reported after the last line.
    after_tail: Option<u64>,
}

const CHUNK: usize = 8 << 20;
/// Below this a chunk is checked on the calling thread only.
const PARALLEL_MIN: usize = 256 << 10;

impl<'k> ChunkReader<'k> {
    fn new(f: std::fs::File, keys: &'k KeyRing) -> Self {
        ChunkReader {
            f,
            keys,
            carry: Vec::new(),
            queue: VecDeque::new(),
            eof: false,
            pos: 0,
            after_tail: None,
        }
    }

    fn next(&mut self) -> std::io::Result<Option<Checked>> {
        loop {
            if let Some(c) = self.queue.pop_front() {
                return Ok(Some(c));
            }
            if self.eof {
                if self.carry.is_empty() {
                    return Ok(self.after_tail.take().map(|at| Checked {
                        n: 0,
                        complete: true,
                        res: Err((
                            None,
                            LineFault::Malformed(format!(
                                "non-zero bytes at byte {at}, after the zero-filled end of the records"
                            )),
                        )),
                    }));
                }
                let n = self.carry.len();
                self.carry.clear();
                if let Some(at) = self.after_tail.take() {
                    // An incomplete line, then NULs, then more data: not a write in progress
                    // but records (or junk) hidden behind a zero run. Never a torn tail.
                    return Ok(Some(Checked {
                        n,
                        complete: true,
                        res: Err((
                            None,
                            LineFault::Malformed(format!(
                                "an incomplete record, then zero bytes, then non-zero bytes at byte {at}: data is hidden after the zero-filled end"
                            )),
                        )),
                    }));
                }
                return Ok(Some(Checked {
                    n,
                    complete: false,
                    res: Err((None, LineFault::Malformed("incomplete line".into()))),
                }));
            }
            let old = self.carry.len();
            self.carry.resize(old + CHUNK, 0);
            let got = loop {
                match self.f.read(&mut self.carry[old..]) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    r => break r,
                }
            };
            let got = match got {
                Ok(g) => g,
                Err(e) => {
                    self.carry.truncate(old);
                    return Err(e);
                }
            };
            self.carry.truncate(old + got);
            if got == 0 {
                self.eof = true;
                continue;
            }
            let base = self.pos - old as u64;
            self.pos += got as u64;
            if let Some(nul) = self.carry[old..].iter().position(|&b| b == 0) {
                // The preallocated zero tail (see `files::logical_len`): the records end here,
                // and everything after must be zero.
                let nul = old + nul;
                self.after_tail = match self.carry[nul..].iter().position(|&b| b != 0) {
                    Some(i) => Some(base + (nul + i) as u64),
                    None => self.nonzero_after()?,
                };
                self.carry.truncate(nul);
                self.eof = true;
            }
            let Some(last) = self.carry.iter().rposition(|&b| b == b'\n') else {
                continue;
            };
            let rest = self.carry.split_off(last + 1);
            let complete = std::mem::replace(&mut self.carry, rest);
            check_chunk(self.keys, &complete, &mut self.queue);
        }
    }
}

impl ChunkReader<'_> {
    /// Reads the rest of the file; the offset of its first non-zero byte, if any.
    fn nonzero_after(&mut self) -> std::io::Result<Option<u64>> {
        let mut block = vec![0u8; 1 << 20];
        loop {
            let got = match self.f.read(&mut block) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => r?,
            };
            if got == 0 {
                return Ok(None);
            }
            if let Some(i) = block[..got].iter().position(|&b| b != 0) {
                return Ok(Some(self.pos + i as u64));
            }
            self.pos += got as u64;
        }
    }
}

/// Checks every line of `data` (which ends with a newline), in order, into `out`.
fn check_chunk(keys: &KeyRing, data: &[u8], out: &mut VecDeque<Checked>) {
    fn run(keys: &KeyRing, data: &[u8]) -> Vec<Checked> {
        data.split_inclusive(|&b| b == b'\n')
            .map(|l| Checked {
                n: l.len(),
                complete: true,
                res: check_line(keys, &l[..l.len() - 1]),
            })
            .collect()
    }
    if data.len() < PARALLEL_MIN {
        out.extend(run(keys, data));
        return;
    }
    let mid = data.len() / 2;
    let cut = data[mid..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(data.len(), |p| mid + p + 1);
    let (a, b) = data.split_at(cut);
    let (ra, rb) = std::thread::scope(|s| {
        let h = s.spawn(|| run(keys, b));
        let ra = run(keys, a);
        (ra, h.join())
    });
    out.extend(ra);
    match rb {
        Ok(v) => out.extend(v),
        // A panic in the helper thread: check that half here instead.
        Err(_) => out.extend(run(keys, b)),
    }
}

#[derive(Deserialize)]
struct SeqOnly {
    seq: u64,
}

/// Verifies the chain in `dir`: every record's hash and HMAC, the links and seqs between
/// records across day files, the signed head, and optionally an exported checkpoint.
///
/// `from` starts at the first day file on or after that date (the first record read is then
/// trusted as the start of the chain). Returns `Err` only when the log cannot be read at all;
/// breaks are reported in [`VerifyReport::broken`]. Nothing outside the directory is consulted,
/// so the verdict is at best [`VerifyVerdict::Unanchored`]; see [`verify_anchored`].
pub fn verify(
    dir: &Path,
    keys: &dyn KeySource,
    from: Option<Date>,
    against: Option<&Checkpoint>,
) -> Result<VerifyReport> {
    verify_anchored(dir, keys, from, against, None)
}

/// Like [`verify`], and holds the log up to the head counter kept outside `state_dir`: a log
/// that ends before it, or has another record at its seq, is a [`BreakKind::RolledBack`]
/// break naming the seqs. With no counter to compare with (`anchor` is `None`, cannot be read,
/// or holds none yet) an intact chain gets [`VerifyVerdict::Unanchored`] and the reason, never
/// [`VerifyVerdict::Ok`].
pub fn verify_anchored(
    dir: &Path,
    keys: &dyn KeySource,
    from: Option<Date>,
    against: Option<&Checkpoint>,
    anchor: Option<&dyn HeadAnchor>,
) -> Result<VerifyReport> {
    let start = Instant::now();
    // Read before the files (like the head): a concurrent writer only moves the log ahead.
    let anchored: std::result::Result<(Counter, String), String> = match anchor {
        None => Err("no head counter outside state_dir is configured for this verify".into()),
        Some(a) => match a.load() {
            Ok(Some(found)) => Ok((found, a.location())),
            Ok(None) => Err(format!(
                "the head counter ({}) holds nothing yet: it is written with the first signed head, so the log was never anchored or the counter was removed",
                a.location()
            )),
            Err(e) => Err(e.to_string()),
        },
    };
    let anchor_seq = anchored.as_ref().ok().map(|(a, _)| a.seq);
    let keys = KeyRing::load(keys)?;
    let vk = keys.verifying_keys();
    let mut rep = VerifyReport {
        records: 0,
        files: 0,
        bytes: 0,
        first_seq: None,
        last_seq: 0,
        head_seq: None,
        checkpoint_seq: against.map(|c| c.seq),
        torn_tail_bytes: 0,
        elapsed_secs: 0.0,
        broken: None,
        anchor_seq,
        verdict: VerifyVerdict::Unanchored,
        unanchored: None,
    };
    // The head is read before the files, so a concurrent writer can only make the log longer
    // than the head, never shorter.
    let head_path = dir.join(crate::files::HEAD_FILE);
    let head = match read_head(dir) {
        Ok(h) => Ok(h),
        Err(AuditError::BadCheckpoint { reason, .. }) => Err(reason),
        Err(e) => return Err(e),
    };
    let files: Vec<(Date, PathBuf)> = list_day_files(dir)?
        .into_iter()
        .filter(|(d, _)| from.is_none_or(|f| *d >= f))
        .collect();
    let head_seq = head.as_ref().ok().and_then(|h| h.as_ref().map(|h| h.seq));
    rep.head_seq = head_seq;
    let cp_seq = against.map(|c| c.seq);
    let mut head_hash_seen: Option<[u8; 32]> = None;
    let mut cp_hash_seen: Option<[u8; 32]> = None;
    let mut anchor_hash_seen: Option<[u8; 32]> = None;

    let mut expected: Option<u64> = if from.is_none() { Some(1) } else { None };
    // The key epoch the next record must carry (a partial verify trusts the first one read).
    let mut want_epoch: Option<u32> = if from.is_none() { Some(0) } else { None };
    let mut prev = [0u8; 32];
    let nfiles = files.len();
    'files: for (fi, (_, path)) in files.iter().enumerate() {
        let f = std::fs::File::open(path).map_err(|source| AuditError::Read {
            path: path.clone(),
            source,
        })?;
        rep.files += 1;
        let mut r = ChunkReader::new(f, &keys);
        let mut line_no = 0u64;
        let mut offset = 0u64;
        while let Some(checked) = r.next().map_err(|source| AuditError::Read {
            path: path.clone(),
            source,
        })? {
            let n = checked.n;
            line_no += 1;
            offset += n as u64;
            rep.bytes += n as u64;
            let at = |kind, seq, detail: String| Break {
                kind,
                seq,
                file: Some(path.clone()),
                line: Some(line_no),
                detail,
            };
            if !checked.complete {
                if fi + 1 == nfiles {
                    rep.torn_tail_bytes = n as u64;
                    break 'files;
                }
                let e = expected.unwrap_or(0);
                rep.broken = Some(at(
                    BreakKind::Truncated,
                    e,
                    "the day file ends in the middle of a record and a later day file follows"
                        .into(),
                ));
                break 'files;
            }
            let info = match checked.res {
                Ok(i) => i,
                Err((seq, fault)) => {
                    let e = expected.or(seq).unwrap_or(0);
                    rep.broken = Some(match fault {
                        LineFault::Malformed(m) => at(BreakKind::Edited, e, m),
                        LineFault::HashMismatch => at(
                            BreakKind::Edited,
                            e,
                            "the record's content does not match its hash".into(),
                        ),
                        LineFault::BadHmac => at(
                            BreakKind::BadHmac,
                            seq.unwrap_or(e),
                            "the hash matches the content but the HMAC does not (forged or wrong key)"
                                .into(),
                        ),
                        LineFault::UnknownEpoch(k) => at(
                            BreakKind::BadHmac,
                            seq.unwrap_or(e),
                            format!("the record names key epoch {k}, for which this installation holds no key (forged, or the vault lost that epoch's keys)"),
                        ),
                    });
                    break 'files;
                }
            };
            match expected {
                None => {}
                Some(e) if info.seq == e => {
                    // The very first record of a whole-log verify must start the chain.
                    let want_prev = if rep.records == 0 { [0u8; 32] } else { prev };
                    if info.prev != want_prev {
                        rep.broken = Some(at(
                            BreakKind::Inserted,
                            e,
                            format!(
                                "record {e} verifies on its own but does not chain onto record {}",
                                e.saturating_sub(1)
                            ),
                        ));
                        break 'files;
                    }
                }
                Some(e) if info.seq > e => {
                    let later = seq_exists_after(&files[fi..], offset, e)?;
                    rep.broken = Some(if later {
                        at(
                            BreakKind::Reordered,
                            e,
                            format!(
                                "found record {} where record {e} belongs; {e} comes later",
                                info.seq
                            ),
                        )
                    } else {
                        at(
                            BreakKind::Deleted,
                            e,
                            format!(
                                "record {e}{} missing: the next record found is {}",
                                if info.seq > e + 1 {
                                    format!("..{} are", info.seq - 1)
                                } else {
                                    " is".to_string()
                                },
                                info.seq
                            ),
                        )
                    });
                    break 'files;
                }
                Some(e) => {
                    rep.broken = Some(at(
                        BreakKind::Inserted,
                        e,
                        format!("found record {} again where record {e} belongs", info.seq),
                    ));
                    break 'files;
                }
            }
            if let Some(want) = want_epoch
                && info.epoch != want
            {
                rep.broken = Some(at(
                    BreakKind::BadHmac,
                    info.seq,
                    format!(
                        "record {} is MACed with the key of epoch {} but the chain is at key epoch {want}: forged with a retired key, or the key.rotated record before it was removed",
                        info.seq, info.epoch
                    ),
                ));
                break 'files;
            }
            if let Err(why) = check_rotation(&keys, &info) {
                rep.broken = Some(at(BreakKind::BadHmac, info.seq, why));
                break 'files;
            }
            want_epoch = Some(info.next_epoch());
            if rep.first_seq.is_none() {
                rep.first_seq = Some(info.seq);
            }
            if Some(info.seq) == head_seq {
                head_hash_seen = Some(info.hash);
            }
            if Some(info.seq) == cp_seq {
                cp_hash_seen = Some(info.hash);
            }
            if Some(info.seq) == anchor_seq {
                anchor_hash_seen = Some(info.hash);
            }
            rep.records += 1;
            rep.last_seq = info.seq;
            prev = info.hash;
            expected = Some(info.seq + 1);
        }
    }
    if rep.broken.is_none() {
        rep.broken = check_heads(
            &rep,
            head,
            &head_path,
            &vk,
            head_hash_seen,
            against,
            cp_hash_seen,
        );
    }
    match (&rep.broken, anchored) {
        (Some(_), _) => rep.verdict = VerifyVerdict::Broken,
        // An exported checkpoint kept off the box anchors the log as well.
        (None, Err(_)) if against.is_some() => rep.verdict = VerifyVerdict::Ok,
        (None, Err(why)) => rep.unanchored = Some(why),
        (None, Ok((a, location))) => match check_counter(&rep, &a, &location, anchor_hash_seen) {
            Some(b) => {
                rep.broken = Some(b);
                rep.verdict = VerifyVerdict::Broken;
            }
            None => rep.verdict = VerifyVerdict::Ok,
        },
    }
    rep.elapsed_secs = start.elapsed().as_secs_f64();
    Ok(rep)
}

/// Holds the walked log up to the head counter kept outside `state_dir`.
fn check_counter(
    rep: &VerifyReport,
    a: &Counter,
    location: &str,
    seen: Option<[u8; 32]>,
) -> Option<Break> {
    let last = rep.last_seq;
    let first = rep.first_seq.unwrap_or(1);
    let (seq, detail) = if a.seq > last {
        (
            last + 1,
            format!(
                "the log ends at seq {last} but the head counter kept outside state_dir ({location}) records seq {}: records {}..{} were removed, or log and head were rolled back together",
                a.seq,
                last + 1,
                a.seq
            ),
        )
    } else if a.seq >= first && a.seq > 0 && seen != Some(a.hash) {
        (
            a.seq,
            format!(
                "record {} differs from the one the head counter kept outside state_dir ({location}) records: the log was rewritten from there on",
                a.seq
            ),
        )
    } else {
        return None;
    };
    Some(Break {
        kind: BreakKind::RolledBack,
        seq,
        file: None,
        line: None,
        detail,
    })
}

/// Holds the signed head and the optional `against` checkpoint up to the walked log.
fn check_heads(
    rep: &VerifyReport,
    head: std::result::Result<Option<Checkpoint>, String>,
    head_path: &Path,
    vk: &[[u8; 32]],
    head_hash_seen: Option<[u8; 32]>,
    against: Option<&Checkpoint>,
    cp_hash_seen: Option<[u8; 32]>,
) -> Option<Break> {
    let last = rep.last_seq;
    let first = rep.first_seq.unwrap_or(1);
    let head_break = |detail: String| {
        Some(Break {
            kind: BreakKind::BadSignature,
            seq: last,
            file: Some(head_path.to_path_buf()),
            line: None,
            detail,
        })
    };
    match head {
        Err(reason) => return head_break(reason),
        Ok(None) if rep.records > 0 => {
            return head_break(
                "the signed head is missing, so truncation cannot be ruled out".into(),
            );
        }
        Ok(None) => {}
        Ok(Some(h)) => {
            let log = LogSpan {
                first,
                last,
                seen: head_hash_seen,
            };
            let found = check_anchor(Anchor::Head, &h, head_path.to_path_buf(), log, vk);
            if found.is_some() {
                return found;
            }
        }
    }
    let cp = against?;
    let log = LogSpan {
        first,
        last,
        seen: cp_hash_seen,
    };
    check_anchor(
        Anchor::Checkpoint,
        cp,
        PathBuf::from("<checkpoint>"),
        log,
        vk,
    )
}

/// A signed checkpoint held against the log: the `head` file, or one exported earlier and given
/// to check against. Both are checked alike; they name their breaks differently.
#[derive(Debug, Clone, Copy)]
enum Anchor {
    Head,
    Checkpoint,
}

/// What the walk found of the log, as far as one anchor is concerned.
#[derive(Debug, Clone, Copy)]
struct LogSpan {
    /// Seq of the first record read.
    first: u64,
    /// Seq of the last record that verified.
    last: u64,
    /// Hash of the record at the anchor's seq, if the walk passed it.
    seen: Option<[u8; 32]>,
}

impl Anchor {
    /// Prefix of a signature fault's detail.
    fn label(self) -> &'static str {
        match self {
            Anchor::Head => "head",
            Anchor::Checkpoint => "checkpoint",
        }
    }

    /// The break when the log ends at `last`, before the anchor's `seq`.
    fn ends_before(self, last: u64, seq: u64) -> (BreakKind, String) {
        match self {
            Anchor::Head => (
                BreakKind::Truncated,
                format!("the log ends at seq {last} but its signed head vouches for seq {seq}"),
            ),
            Anchor::Checkpoint => (
                BreakKind::RolledBack,
                format!(
                    "the log (and its head) end at seq {last}, before the checkpoint's seq {seq}: the log was rolled back"
                ),
            ),
        }
    }

    /// The detail when record `seq` is not the one the anchor vouches for.
    fn differs(self, seq: u64) -> String {
        match self {
            Anchor::Head => {
                format!("record {seq} differs from the one the signed head vouches for")
            }
            Anchor::Checkpoint => {
                format!(
                    "record {seq} differs from the one in the checkpoint: the log was rewritten"
                )
            }
        }
    }
}

/// The first way `cp` (found at `file`) disagrees with the log: a bad signature, a log that
/// ends before it, or a different record at its seq.
fn check_anchor(
    anchor: Anchor,
    cp: &Checkpoint,
    file: PathBuf,
    log: LogSpan,
    vk: &[[u8; 32]],
) -> Option<Break> {
    let (kind, seq, detail) = if let Err(e) = cp.verify_any(vk) {
        let detail = format!("{}: {}", anchor.label(), e.checkpoint_fault());
        (BreakKind::BadSignature, cp.seq, detail)
    } else if cp.seq > log.last {
        let (kind, detail) = anchor.ends_before(log.last, cp.seq);
        (kind, log.last + 1, detail)
    } else if cp.seq >= log.first && cp.seq > 0 && log.seen != cp.hash_bytes() {
        (BreakKind::RolledBack, cp.seq, anchor.differs(cp.seq))
    } else {
        return None;
    };
    Some(Break {
        kind,
        seq,
        file: Some(file),
        line: None,
        detail,
    })
}

/// Whether a record with `seq` appears later: in `files[0]` after `offset`, or in later files.
fn seq_exists_after(files: &[(Date, PathBuf)], offset: u64, seq: u64) -> Result<bool> {
    for (i, (_, path)) in files.iter().enumerate() {
        let data = std::fs::read(path).map_err(|source| AuditError::Read {
            path: path.clone(),
            source,
        })?;
        let start = if i == 0 {
            (offset as usize).min(data.len())
        } else {
            0
        };
        for line in data[start..].split(|&b| b == b'\n') {
            if let Ok(s) = serde_json::from_slice::<SeqOnly>(line)
                && s.seq == seq
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key() -> [u8; 32] {
        ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
            .verifying_key()
            .to_bytes()
    }

    fn unsigned(seq: u64) -> Checkpoint {
        Checkpoint {
            seq,
            hash: "0".repeat(64),
            ts: "2026-01-01T00:00:00Z".into(),
            sig: "0".repeat(128),
        }
    }

    fn span(first: u64, last: u64) -> LogSpan {
        LogSpan {
            first,
            last,
            seen: None,
        }
    }

    #[test]
    fn head_and_checkpoint_name_their_breaks_apart() {
        let vk = [key()];
        let bad = unsigned(5);
        let h = check_anchor(Anchor::Head, &bad, "h".into(), span(1, 9), &vk).unwrap();
        assert_eq!((h.kind, h.seq), (BreakKind::BadSignature, 5));
        assert_eq!(
            h.detail,
            "head: signature does not verify with this installation's audit key"
        );
        let mut odd = unsigned(5);
        odd.hash = "x".into();
        let c = check_anchor(Anchor::Checkpoint, &odd, "c".into(), span(1, 9), &vk).unwrap();
        assert_eq!(c.detail, "checkpoint: hash is not 64 lowercase hex digits");
        assert_eq!(c.file, Some(PathBuf::from("c")));

        assert_eq!(
            Anchor::Head.ends_before(3, 5),
            (
                BreakKind::Truncated,
                "the log ends at seq 3 but its signed head vouches for seq 5".to_string()
            )
        );
        assert_eq!(
            Anchor::Checkpoint.ends_before(3, 5),
            (
                BreakKind::RolledBack,
                "the log (and its head) end at seq 3, before the checkpoint's seq 5: the log was rolled back".to_string()
            )
        );
        assert_eq!(
            Anchor::Head.differs(5),
            "record 5 differs from the one the signed head vouches for"
        );
        assert_eq!(
            Anchor::Checkpoint.differs(5),
            "record 5 differs from the one in the checkpoint: the log was rewritten"
        );
    }
}
