//! Sans-IO core of the chain: sealing a body and checking a line. No files here.

use hmac::Mac as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::keys::ChainKeys;
use crate::record::SUFFIX_LEN;

/// What a line says about itself, after it was checked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LineInfo {
    pub seq: u64,
    pub prev: [u8; 32],
    pub hash: [u8; 32],
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
}

#[derive(Deserialize)]
struct Head<'a> {
    seq: u64,
    #[serde(borrow)]
    prev: &'a str,
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
fn locate(line: &[u8]) -> Option<(u64, [u8; 32])> {
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
    strip(end - 64, b"\"prev\":\"")?;
    Some((seq, prev))
}

/// Checks one line (without its newline): layout, hash and HMAC. Returns the seq (when it could
/// be read) with the fault.
pub(crate) fn check_line(
    keys: &ChainKeys,
    line: &[u8],
) -> Result<LineInfo, (Option<u64>, LineFault)> {
    if let Some((seq, prev)) = locate(line) {
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
                    return Ok(LineInfo { seq, prev, hash });
                }
            }
        }
    }
    check_line_slow(keys, line)
}

/// The full check through a JSON parser; decides how a line that failed the fast path is broken.
fn check_line_slow(keys: &ChainKeys, line: &[u8]) -> Result<LineInfo, (Option<u64>, LineFault)> {
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
    let mut m = keys.hmac.clone();
    m.update(&hash);
    if m.verify_slice(&stored_mac).is_err() {
        return Err((Some(seq), LineFault::BadHmac));
    }
    Ok(LineInfo { seq, prev, hash })
}
