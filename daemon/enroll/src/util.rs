//! Small shared helpers: time, HMAC, name validation, durable atomic file writes.

use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::error::{EnrollError, Result};

/// HMAC-SHA256.
pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Current wall-clock time in unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Formats unix seconds as RFC 3339 UTC (falls back to the number).
pub(crate) fn fmt_unix(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("unix {secs}"))
}

/// HMAC-SHA256 of the concatenation of `parts`.
pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail; fall back to an all-zero tag that
    // never verifies against a real one (it would only matter if the hmac crate changed).
    let Ok(mut mac) = <HmacSha256 as KeyInit>::new_from_slice(key) else {
        return [0u8; 32];
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// SHA-256.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Longest host/group name and tag key accepted.
pub const MAX_LABEL_LEN: usize = 63;
/// Longest tag value accepted.
pub const MAX_TAG_VALUE_LEN: usize = 253;

/// Checks a host name: 1–63 chars of `a-z 0-9 -`, not starting or ending with `-` (a DNS label,
/// lowercase, so it is also a valid selector name).
pub fn validate_host_name(name: &str) -> Result<()> {
    validate_label("host name", name)
}

/// Checks a group name (same rule as host names).
pub fn validate_group(name: &str) -> Result<()> {
    validate_label("group", name)
}

fn validate_label(what: &'static str, v: &str) -> Result<()> {
    let bad = |why| {
        Err(EnrollError::InvalidName {
            what,
            value: v.chars().take(80).collect(),
            why,
        })
    };
    if v.is_empty() {
        return bad("it is empty");
    }
    if v.len() > MAX_LABEL_LEN {
        return bad("it is longer than 63 characters");
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("use only lowercase letters a-z, digits and '-'");
    }
    if v.starts_with('-') || v.ends_with('-') {
        return bad("it must not start or end with '-'");
    }
    Ok(())
}

/// Checks a tag: key like `[a-z0-9_.-]{1,63}`, value `[A-Za-z0-9_.:/@+-]{0,253}` (so `tag:k=v`
/// selectors can name it).
pub fn validate_tag(key: &str, value: &str) -> Result<()> {
    let bad = |what, v: &str, why| {
        Err(EnrollError::InvalidName {
            what,
            value: v.chars().take(80).collect(),
            why,
        })
    };
    if key.is_empty() || key.len() > MAX_LABEL_LEN {
        return bad("tag key", key, "it must be 1 to 63 characters");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
    {
        return bad(
            "tag key",
            key,
            "use only lowercase letters, digits, '_', '.', '-'",
        );
    }
    if value.len() > MAX_TAG_VALUE_LEN {
        return bad("tag value", value, "it is longer than 253 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.:/@+-".contains(&b))
    {
        return bad(
            "tag value",
            value,
            "use only letters, digits and '_', '.', ':', '/', '@', '+', '-'",
        );
    }
    Ok(())
}

/// Writes `bytes` to `path` durably and atomically (mode 0600, see [`tether_durable`]): a reader,
/// or a restart after `kill -9` / power loss, sees either the old or the new content, never a mix.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    tether_durable::write_atomic(path, bytes, 0o600).map_err(|e| EnrollError::Io {
        what: e.step,
        path: e.path,
        source: e.source,
    })
}

/// Removes temporary files an interrupted [`atomic_write`] of `path` left behind.
pub(crate) fn remove_stale_tmp(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!(".{}.tmp.", name.to_string_lossy());
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Opens the JSON state file `state_dir/file`: creates the directory (0700) if missing, removes
/// temp files an interrupted write left behind, and parses the file. `Ok(None)` when it does
/// not exist yet; a file that does not parse is `CorruptState` naming it.
pub(crate) fn open_state<T: serde::de::DeserializeOwned>(
    state_dir: &Path,
    file: &str,
) -> Result<(std::path::PathBuf, Option<T>)> {
    ensure_dir(state_dir)?;
    let path = state_dir.join(file);
    remove_stale_tmp(&path);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((path, None)),
        Err(source) => {
            return Err(EnrollError::Io {
                what: "read",
                path,
                source,
            });
        }
    };
    let parsed = serde_json::from_slice(&bytes).map_err(|e| EnrollError::CorruptState {
        path: path.clone(),
        what: e.to_string(),
    })?;
    Ok((path, Some(parsed)))
}

/// Creates the state directory (mode 0700) if missing.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| EnrollError::Io {
            what: "create directory",
            path: dir.to_path_buf(),
            source,
        })
}

/// The advice of a rate-limit refusal: when to retry (the hub's retry-after when known).
pub(crate) fn fmt_retry_after(retry_after_ms: Option<u64>) -> String {
    match retry_after_ms {
        Some(ms) => format!(
            "the hub takes the next attempt in {}.{:03} s (`tetherd enroll` retries by itself)",
            ms / 1000,
            ms % 1000
        ),
        None => "wait a few seconds and retry".to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_host_name("web-1").is_ok());
        assert!(validate_host_name("").is_err());
        assert!(validate_host_name("-a").is_err());
        assert!(validate_host_name("Web").is_err());
        assert!(validate_host_name(&"a".repeat(64)).is_err());
        assert!(validate_tag("env", "prod").is_ok());
        assert!(validate_tag("env", "a,b").is_err());
        assert!(validate_tag("", "x").is_err());
    }

    #[test]
    fn atomic_write_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
