//! Issue 14 §2: recovery at start drops only what it can prove is a torn write (an incomplete
//! final line of the newest file). Any other damage refuses the start, names the file and seq,
//! and changes nothing on disk; `verify` never calls a log with hidden records ok.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tether_audit::*;

use super::*;

/// SHA-256 of every file in `dir`, sorted by name.
fn hashes(dir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let data = std::fs::read(e.path()).unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                hex::encode(Sha256::digest(&data)),
            )
        })
        .collect();
    out.sort();
    out
}

fn try_open(dir: &Path, k: &StaticKeys) -> Result<(AuditLog, Recovery), AuditError> {
    AuditLog::open(
        dir,
        k,
        &prometheus::Registry::new(),
        Arc::new(tether_model::NoAlerts),
    )
}

/// A closed log of `n` records in one day file.
async fn log_of(n: u64) -> (tempfile::TempDir, std::path::PathBuf, StaticKeys) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let k = keys();
    let (log, _) = open(&dir, &k, None);
    for i in 0..n {
        log.append(&event(i)).await.unwrap();
    }
    log.close().await;
    (tmp, dir, k)
}

/// Asserts that opening `dir` fails naming `file` and `seq`, and that no byte changed.
fn refused(dir: &Path, k: &StaticKeys, file: &Path, seq: u64) -> AuditError {
    let before = hashes(dir);
    let err = match try_open(dir, k) {
        Ok(_) => panic!("opened a damaged log in {}", dir.display()),
        Err(e) => e,
    };
    let msg = err.to_string();
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        msg.contains(&name),
        "the error names the file {name}: {msg}"
    );
    assert!(
        msg.contains(&format!("seq {seq}")),
        "the error names seq {seq}: {msg}"
    );
    assert_eq!(
        hashes(dir),
        before,
        "a refused start changed the files: {msg}"
    );
    err
}

#[tokio::test]
async fn a_complete_last_record_that_fails_its_hash_or_hmac_refuses_the_start() {
    for edit in ["content", "hmac"] {
        let (_tmp, dir, k) = log_of(5).await;
        let f = day_files(&dir).pop().unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let last = lines.last_mut().unwrap();
        *last = match edit {
            "content" => last.replacen("\"n\":4", "\"n\":9", 1),
            _ => {
                let at = last.rfind("\"hmac\":\"").unwrap() + 8;
                let mut s = last.clone();
                s.replace_range(at..at + 8, "00000000");
                s
            }
        };
        std::fs::write(&f, lines.join("\n") + "\n").unwrap();
        refused(&dir, &k, &f, 5);
    }
}

#[tokio::test]
async fn a_log_read_with_a_different_hmac_key_is_never_truncated() {
    let (_tmp, dir, k) = log_of(5).await;
    // The same signing key (so the head verifies) with another HMAC key: every record fails
    // its HMAC. That is a wrong key, not a torn write.
    let other = StaticKeys::new(
        zeroize::Zeroizing::new(vec![7u8; 32]),
        KeySource::signing_key(&k).unwrap(),
    );
    let f = day_files(&dir).pop().unwrap();
    refused(&dir, &other, &f, 1);
}

#[tokio::test]
async fn damage_in_an_older_day_file_refuses_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let k = keys();
    let clock = Arc::new(ManualClock::new(t0()));
    let (log, _) = open(&dir, &k, Some(clock.clone()));
    for i in 0..3 {
        log.append(&event(i)).await.unwrap();
    }
    clock.advance(Duration::from_secs(2 * 3600));
    for i in 3..6 {
        log.append(&event(i)).await.unwrap();
    }
    log.close().await;
    let files = day_files(&dir);
    assert_eq!(files.len(), 2);
    let old = &files[0];
    let text = std::fs::read_to_string(old).unwrap();

    // A partial line appended to the older file: never a torn write (a later file exists).
    std::fs::write(old, format!("{text}{{\"actor\":{{\"ro")).unwrap();
    refused(&dir, &k, old, 4);

    // The last record of the older file removed: the newer file no longer chains on.
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(old, lines[..2].join("\n") + "\n").unwrap();
    refused(&dir, &k, old, 3);

    // An edited record in the older file.
    std::fs::write(old, text.replacen("\"n\":2", "\"n\":8", 1)).unwrap();
    refused(&dir, &k, old, 3);

    // Restored, the log opens and continues.
    std::fs::write(old, &text).unwrap();
    let (log, rec) = open(&dir, &k, Some(clock));
    assert_eq!(rec.last_seq, 6);
    log.close().await;
}

#[tokio::test]
async fn a_partial_line_followed_by_zeros_and_more_data_is_not_a_torn_write() {
    let (_tmp, dir, k) = log_of(5).await;
    let f = day_files(&dir).pop().unwrap();
    let good = std::fs::read(&f).unwrap();
    // Hide two real records behind a partial line and a run of NULs.
    let lines: Vec<&[u8]> = good.split_inclusive(|&b| b == b'\n').collect();
    let mut data: Vec<u8> = lines[..3].concat();
    data.extend_from_slice(b"{\"actor\":{\"ro");
    data.extend_from_slice(&[0u8; 4096]);
    data.extend_from_slice(&lines[3..].concat());
    // Drop the head so that only the hidden-data rule can catch it.
    std::fs::remove_file(dir.join("head")).unwrap();
    std::fs::write(&f, &data).unwrap();

    let rep = verify(&dir, &k, None, None).unwrap();
    let b = rep
        .broken
        .expect("verify must not call a log with hidden records ok");
    assert_eq!(b.seq, 4, "{b:?}");
    refused(&dir, &k, &f, 4);

    // Junk (not records) after the zeros is refused the same way.
    let mut data: Vec<u8> = lines[..3].concat();
    data.extend_from_slice(b"{\"actor\":{\"ro");
    data.extend_from_slice(&[0u8; 100]);
    data.extend_from_slice(b"garbage");
    std::fs::write(&f, &data).unwrap();
    assert!(!verify(&dir, &k, None, None).unwrap().is_ok());
    refused(&dir, &k, &f, 4);
}

#[tokio::test]
async fn a_head_mismatch_refuses_without_dropping_a_torn_tail_first() {
    let (_tmp, dir, k) = log_of(5).await;
    let f = day_files(&dir).pop().unwrap();
    let text = std::fs::read_to_string(&f).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Truncated to 3 records (the head vouches for 5), plus a torn partial line.
    std::fs::write(&f, lines[..3].join("\n") + "\n{\"actor\":{\"r").unwrap();
    let err = refused(&dir, &k, &f, 5);
    assert!(matches!(err, AuditError::HeadMismatch { .. }), "{err}");
}

#[tokio::test]
async fn only_an_incomplete_final_line_of_the_newest_file_is_dropped() {
    let (_tmp, dir, k) = log_of(5).await;
    let f = day_files(&dir).pop().unwrap();
    let mut data = std::fs::read(&f).unwrap();
    let good = data.len() as u64;
    data.extend_from_slice(b"{\"actor\":{\"role\":\"adm");
    data.extend_from_slice(&[0u8; 300]);
    std::fs::write(&f, &data).unwrap();
    let (log, rec) = try_open(&dir, &k).unwrap();
    let torn = rec.torn.expect("a torn tail");
    assert_eq!(torn.offset, good);
    assert_eq!(log.append(&event(9)).await.unwrap().seq, 6);
    log.close().await;
    assert!(verify(&dir, &k, None, None).unwrap().is_ok());
}
