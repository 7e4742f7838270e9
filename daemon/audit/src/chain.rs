//! Sans-IO core of the chain: sealing a body and checking a line. No files here.

use hmac::Mac as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::keys::{ChainKeys, KeyRing};
use crate::record::SUFFIX_LEN;

/// The event type that moves the chain to a new key epoch.
pub(crate) const KEY_ROTATED: &str = "key.rotated";

/// What a `key.rotated` record announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rotation {
    /// The new epoch (one more than the record's own).
    pub epoch: u32,
    /// The new HMAC key's id ([`crate::keys::hmac_key_id`]).
    pub hmac_id: [u8; 32],
    /// The new head-verifying key.
    pub signing: [u8; 32],
}

/// What a line says about itself, after it was checked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LineInfo {
    pub seq: u64,
    pub prev: [u8; 32],
    pub hash: [u8; 32],
    /// The key epoch that MACs it.
    pub epoch: u32,
    /// Set for a `key.rotated` record.
    pub rotation: Option<Rotation>,
}

impl LineInfo {
    /// The key epoch the record after this one must carry.
    pub fn next_epoch(&self) -> u32 {
        self.rotation.map_or(self.epoch, |r| r.epoch)
    }
}

/// Checks a `key.rotated` record against the key ring: it names the next epoch, and the ring's
/// keys for that epoch are the ones it names. `Err` says what is wrong.
pub(crate) fn check_rotation(keys: &KeyRing, info: &LineInfo) -> Result<(), String> {
    let Some(r) = info.rotation else {
        return Ok(());
    };
    if r.epoch != info.epoch + 1 {
        return Err(format!(
            "the key.rotated record at seq {} (epoch {}) names epoch {}; only epoch {} may follow",
            info.seq,
            info.epoch,
            r.epoch,
            info.epoch + 1
        ));
    }
    let Some(k) = keys.get(r.epoch) else {
        return Err(format!(
            "the key.rotated record at seq {} moves to key epoch {}, but this installation holds no keys for it (restore the vault entries of that epoch)",
            info.seq, r.epoch
        ));
    };
    if k.hmac_id != r.hmac_id || k.verifying.to_bytes() != r.signing {
        return Err(format!(
            "the keys this installation holds for epoch {} are not the ones the key.rotated record at seq {} names",
            r.epoch, info.seq
        ));
    }
    Ok(())
}

/// Why a line does not verify on its own.
#[derive(Debug, Clone)]
pub(crate) enum LineFault {
    /// Not a record line at all (bad JSON, missing fields, wrong suffix layout).
    Malformed(String),
    /// Content does not match the stored hash.
    HashMismatch,
    /// Hash matches content, but the HMAC is wrong.
    BadHmac,
    /// The record names a key epoch this installation has no keys for.
    UnknownEpoch(u32),
}

#[derive(Deserialize)]
struct Head<'a> {
    seq: u64,
    #[serde(borrow)]
    prev: &'a str,
    #[serde(default)]
    key_epoch: u32,
    #[serde(rename = "type")]
    kind: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct RotationText {
    data: RotationData,
}

#[derive(Deserialize)]
struct RotationData {
    epoch: u32,
    hmac_key_id: String,
    signing_key: String,
}

/// Reads what a verified `key.rotated` line announces.
fn rotation_of(line: &[u8]) -> Result<Rotation, String> {
    let t: RotationText = serde_json::from_slice(line).map_err(|e| {
        format!("a key.rotated record without epoch, hmac_key_id and signing_key: {e}")
    })?;
    let hmac_id = unhex32(t.data.hmac_key_id.as_bytes())
        .ok_or("a key.rotated record whose hmac_key_id is not 64 hex digits")?;
    let signing = unhex32(t.data.signing_key.as_bytes())
        .ok_or("a key.rotated record whose signing_key is not 64 hex digits")?;
    Ok(Rotation {
        epoch: t.data.epoch,
        hmac_id,
        signing,
    })
}

/// `SHA-256(prev || body)` where the body is `prefix` followed by `}`.
pub(crate) fn hash_body(prev: &[u8; 32], prefix: &[u8], closing: bool) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(prefix);
    if closing {
        h.update(b"}");
    }
    h.finalize().into()
}

/// HMAC-SHA256 of a hash.
pub(crate) fn mac(keys: &ChainKeys, hash: &[u8; 32]) -> [u8; 32] {
    let mut m = keys.hmac.clone();
    m.update(hash);
    m.finalize().into_bytes().into()
}

/// Strict lowercase hex → 32 bytes.
pub(crate) fn unhex32(s: &[u8]) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        let hi = nib(s[2 * i])?;
        let lo = nib(s[2 * i + 1])?;
        *o = (hi << 4) | lo;
    }
    Some(out)
}

fn nib(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Fast path: finds `prev` and `seq` by walking back from the fixed suffix of a line laid out
/// the way the writer lays it out (`..,"prev":"H","seq":N,"ts":"T","type":"K"` + suffix).
/// Only used to *find* the fields: the line is accepted only if its hash and HMAC then verify,
/// which only a line made by the writer can do.
fn locate(line: &[u8]) -> Option<(u64, [u8; 32], u32, bool)> {
    let b = line.get(..line.len().checked_sub(SUFFIX_LEN)?)?;
    let strip = |end: usize, lit: &[u8]| -> Option<usize> {
        let start = end.checked_sub(lit.len())?;
        (b.get(start..end)? == lit).then_some(start)
    };
    let mut end = strip(b.len(), b"\"")?;
    let mut start = end;
    while start > 0 && matches!(b[start - 1], b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-') {
        start -= 1;
    }
    let kind = b.get(start..end)?;
    end = strip(start, b",\"type\":\"")?;
    end = strip(end, b"\"")?.checked_sub(27)?; // the fixed-width ts
    end = strip(end, b",\"ts\":\"")?;
    let mut start = end;
    while start > 0 && b[start - 1].is_ascii_digit() {
        start -= 1;
    }
    if start == end || end - start > 20 {
        return None;
    }
    let seq: u64 = std::str::from_utf8(&b[start..end]).ok()?.parse().ok()?;
    end = strip(start, b",\"seq\":")?;
    end = strip(end, b"\"")?;
    let prev = unhex32(b.get(end.checked_sub(64)?..end)?)?;
    let at = strip(end - 64, b",\"prev\":\"")?;
    // `,"key_epoch":N` right before `,"prev"`: only the top-level field can end in a digit
    // there (`data` ends in `}`, `host` in `"`).
    let mut start = at;
    while start > 0 && b[start - 1].is_ascii_digit() {
        start -= 1;
    }
    let epoch = if start < at {
        if at - start > 10 {
            return None;
        }
        strip(start, b",\"key_epoch\":")?;
        std::str::from_utf8(&b[start..at]).ok()?.parse().ok()?
    } else {
        0
    };
    Some((seq, prev, epoch, kind == KEY_ROTATED.as_bytes()))
}

/// Checks one line (without its newline): layout, hash and HMAC. Returns the seq (when it could
/// be read) with the fault.
pub(crate) fn check_line(
    ring: &KeyRing,
    line: &[u8],
) -> Result<LineInfo, (Option<u64>, LineFault)> {
    if let Some((seq, prev, epoch, rotated)) = locate(line)
        && let Some(keys) = ring.get(epoch)
    {
        let n = line.len();
        let s = &line[n - SUFFIX_LEN..];
        if &s[..9] == b",\"hash\":\""
            && &s[73..83] == b"\",\"hmac\":\""
            && &s[147..] == b"\"}"
            && let (Some(stored_hash), Some(stored_mac)) =
                (unhex32(&s[9..73]), unhex32(&s[83..147]))
        {
            let hash = hash_body(&prev, &line[..n - SUFFIX_LEN], true);
            if hash == stored_hash {
                let mut m = keys.hmac.clone();
                m.update(&hash);
                if m.verify_slice(&stored_mac).is_ok() {
                    return finish(line, seq, prev, hash, epoch, rotated);
                }
            }
        }
    }
    check_line_slow(ring, line)
}

/// A line whose hash and HMAC verified: reads the rotation it announces, if any.
fn finish(
    line: &[u8],
    seq: u64,
    prev: [u8; 32],
    hash: [u8; 32],
    epoch: u32,
    rotated: bool,
) -> Result<LineInfo, (Option<u64>, LineFault)> {
    let rotation = if rotated {
        Some(rotation_of(line).map_err(|m| (Some(seq), LineFault::Malformed(m)))?)
    } else {
        None
    };
    Ok(LineInfo {
        seq,
        prev,
        hash,
        epoch,
        rotation,
    })
}

/// The full check through a JSON parser; decides how a line that failed the fast path is broken.
fn check_line_slow(ring: &KeyRing, line: &[u8]) -> Result<LineInfo, (Option<u64>, LineFault)> {
    let parsed: Result<Head<'_>, _> = serde_json::from_slice(line);
    let head = match parsed {
        Ok(h) => h,
        Err(e) => {
            return Err((
                None,
                LineFault::Malformed(format!("not a JSON record: {e}")),
            ));
        }
    };
    let seq = head.seq;
    let epoch = head.key_epoch;
    let rotated = head.kind == KEY_ROTATED;
    let malformed = |m: &str| Err((Some(seq), LineFault::Malformed(m.into())));
    let Some(prev) = unhex32(head.prev.as_bytes()) else {
        return malformed("prev is not 64 lowercase hex digits");
    };
    let n = line.len();
    if n < SUFFIX_LEN + 2 {
        return malformed("line too short");
    }
    let s = &line[n - SUFFIX_LEN..];
    if &s[..9] != b",\"hash\":\"" || &s[73..83] != b"\",\"hmac\":\"" || &s[147..] != b"\"}" {
        return malformed("hash/hmac are not the last fields of the line");
    }
    let (Some(stored_hash), Some(stored_mac)) = (unhex32(&s[9..73]), unhex32(&s[83..147])) else {
        return malformed("hash/hmac are not 64 lowercase hex digits");
    };
    let hash = hash_body(&prev, &line[..n - SUFFIX_LEN], true);
    if hash != stored_hash {
        return Err((Some(seq), LineFault::HashMismatch));
    }
    let Some(keys) = ring.get(epoch) else {
        return Err((Some(seq), LineFault::UnknownEpoch(epoch)));
    };
    let mut m = keys.hmac.clone();
    m.update(&hash);
    if m.verify_slice(&stored_mac).is_err() {
        return Err((Some(seq), LineFault::BadHmac));
    }
    finish(line, seq, prev, hash, epoch, rotated)
}
