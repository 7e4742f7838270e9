//! Issue 14 §1: daemon keys rotate through key epochs that keep the chain verifiable: a
//! `key.rotated` record, MACed with the old key, names the new epoch and keys; later records
//! carry the new epoch and are checked with its key, across restarts. Old keys are retained.

use std::path::Path;
use std::sync::Arc;

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::{Digest as _, Sha256};
use tether_audit::*;

use super::*;

/// `,"hash":"<64>","hmac":"<64>"}`
const SUFFIX_LEN: usize = 9 + 64 + 10 + 64 + 2;

async fn append(log: &AuditLog, range: std::ops::Range<u64>) {
    for i in range {
        log.append(&event(i)).await.unwrap();
    }
}

/// 16 records: 1-5 epoch 0, the rotation at 6, 7-13 epoch 1 (a restart after 10), the
/// HMAC-only rotation at 14 (MACed with epoch 1), 15-16 epoch 2.
async fn rotated_log(dir: &Path, k: &Arc<StaticKeys>) {
    let (log, _) = open(dir, k, None);
    append(&log, 0..5).await;
    let r = log
        .rotate_keys(k.clone(), actor(0), false, false)
        .await
        .unwrap();
    assert_eq!((r.epoch, r.seq), (1, 6));
    assert_eq!(r.rotated, vec!["hmac", "signing"]);
    append(&log, 5..9).await;
    log.close().await;

    // A restart continues in epoch 1.
    let (log, rec) = open(dir, k, None);
    assert_eq!(rec.last_seq, 10);
    assert_eq!(log.key_epoch(), 1);
    append(&log, 9..12).await;
    let r = log
        .rotate_keys(k.clone(), actor(0), true, false)
        .await
        .unwrap();
    assert_eq!(
        (r.epoch, r.seq, r.rotated.clone()),
        (2, 14, vec!["hmac".to_string()])
    );
    append(&log, 12..14).await;
    log.close().await;
}

fn line_of(dir: &Path, seq: u64) -> (std::path::PathBuf, usize, String) {
    let f = day_files(dir).pop().unwrap();
    let text = std::fs::read_to_string(&f).unwrap();
    let i = (seq - 1) as usize;
    (f, i, text.lines().nth(i).unwrap().to_owned())
}

fn replace_line(f: &Path, i: usize, new: &str) {
    let text = std::fs::read_to_string(f).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[i] = new;
    std::fs::write(f, lines.join("\n") + "\n").unwrap();
}

#[tokio::test]
async fn rotating_mid_log_keeps_the_chain_verifiable_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let k = Arc::new(keys());
    rotated_log(&dir, &k).await;

    let rep = verify(&dir, &*k, None, None).unwrap();
    assert!(rep.is_ok(), "{rep:?}");
    assert_eq!(rep.last_seq, 16);
    // The rotation record is epoch 0's and names epoch 1; the record after it carries epoch 1.
    let (_, _, six) = line_of(&dir, 6);
    assert!(
        six.contains("\"type\":\"key.rotated\"") && !six.contains("key_epoch"),
        "{six}"
    );
    let r: Record = Record::parse_line(six.as_bytes()).unwrap();
    assert_eq!(r.data["epoch"], 1);
    assert_eq!(r.data["previous_epoch"], 0);
    let (_, _, seven) = line_of(&dir, 7);
    assert!(seven.contains(",\"key_epoch\":1,\"prev\":"), "{seven}");
    assert_eq!(Record::parse_line(seven.as_bytes()).unwrap().key_epoch, 1);
    let (_, _, last) = line_of(&dir, 16);
    assert!(last.contains(",\"key_epoch\":2,"), "{last}");

    // Another restart: still fine, and the next record is epoch 2.
    let (log, _) = open(&dir, &k, None);
    assert_eq!(log.key_epoch(), 2);
    log.append(&event(99)).await.unwrap();
    log.close().await;
    assert!(verify(&dir, &*k, None, None).unwrap().is_ok());

    // Every epoch's keys are needed: without epochs 1 and 2 the rotation at seq 6 points to
    // keys that are not there.
    let (h, s) = k.epoch_keys(0).unwrap().unwrap();
    let only_first = StaticKeys::new(h, s);
    let b = verify(&dir, &only_first, None, None)
        .unwrap()
        .broken
        .expect("a log past epoch 0 needs the later keys");
    assert_eq!((b.kind, b.seq), (BreakKind::BadHmac, 6), "{b}");
    assert!(
        b.detail.contains("epoch 1") && b.detail.contains("no keys"),
        "{}",
        b.detail
    );
}

#[tokio::test]
async fn a_record_edited_after_the_rotation_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let k = Arc::new(keys());
    rotated_log(&dir, &k).await;
    let (f, i, line) = line_of(&dir, 8);
    replace_line(&f, i, &line.replace("\"uptime\"", "\"reboot\""));
    let b = verify(&dir, &*k, None, None)
        .unwrap()
        .broken
        .expect("edited");
    assert_eq!((b.kind, b.seq), (BreakKind::Edited, 8), "{b}");
}

/// Re-seals `line` as a record of key epoch 0 with epoch 0's key: what someone holding the
/// retired key could write.
fn forge_with_old_key(line: &str, k: &StaticKeys) -> String {
    let body = line[..line.len() - SUFFIX_LEN].replacen(",\"key_epoch\":2", "", 1);
    let rec = Record::parse_line(line.as_bytes()).unwrap();
    let prev = hex::decode(&rec.prev).unwrap();
    let mut h = Sha256::new();
    h.update(&prev);
    h.update(body.as_bytes());
    h.update(b"}");
    let hash: [u8; 32] = h.finalize().into();
    let (old_key, _) = k.epoch_keys(0).unwrap().unwrap();
    let mut m = Hmac::<Sha256>::new_from_slice(&old_key).unwrap();
    m.update(&hash);
    let mac = m.finalize().into_bytes();
    format!(
        "{body},\"hash\":\"{}\",\"hmac\":\"{}\"}}",
        hex::encode(hash),
        hex::encode(mac)
    )
}

#[tokio::test]
async fn a_record_forged_with_the_old_key_after_the_rotation_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let k = Arc::new(keys());
    rotated_log(&dir, &k).await;
    // Replace the last record (epoch 2) by one MACed with epoch 0's key, chained correctly.
    let (f, i, line) = line_of(&dir, 16);
    let forged = forge_with_old_key(&line, &k);
    assert!(!forged.contains("key_epoch"));
    replace_line(&f, i, &forged);
    // The head vouches for 16 with the old hash; drop it so only the epoch rule can catch it.
    std::fs::remove_file(dir.join("head")).unwrap();

    let b = verify(&dir, &*k, None, None)
        .unwrap()
        .broken
        .expect("a record MACed with a retired key after the rotation");
    assert_eq!((b.kind, b.seq), (BreakKind::BadHmac, 16), "{b}");
    assert!(
        b.detail.contains("epoch 0") && b.detail.contains("epoch 2"),
        "{}",
        b.detail
    );
    // And the writer refuses to continue such a log, changing nothing.
    let before = std::fs::read(&f).unwrap();
    let err = AuditLog::open(
        &dir,
        &*k,
        &prometheus::Registry::new(),
        Arc::new(tether_model::NoAlerts),
    )
    .unwrap_err();
    assert!(matches!(err, AuditError::Damaged { seq: 16, .. }), "{err}");
    assert_eq!(std::fs::read(&f).unwrap(), before);
}

#[tokio::test]
async fn a_key_source_that_cannot_rotate_says_so_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let kf = KeyFile::open_or_create(tmp.path().join("keys"), &dir).unwrap();
    let (log, _) = AuditLog::open(
        &dir,
        &kf,
        &prometheus::Registry::new(),
        Arc::new(tether_model::NoAlerts),
    )
    .unwrap();
    log.append(&event(1)).await.unwrap();
    let err = log
        .rotate_keys(Arc::new(kf.clone()), actor(0), true, true)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("cannot make new key epochs"),
        "{err}"
    );
    assert_eq!(log.key_epoch(), 0);
    assert_eq!(log.last_seq(), 1);
    log.close().await;
}
