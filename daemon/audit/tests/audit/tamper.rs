//! Tamper matrix: every kind of break is named, with the right seq.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tether_audit::*;

use super::*;

/// Builds a 20-record log over two day files (seq 1-10 on 2026-03-01, 11-20 on 2026-03-02),
/// written in batches of one so every record has its own ts.
async fn build(dir: &Path, k: &StaticKeys) -> Arc<ManualClock> {
    let clock = Arc::new(ManualClock::new(t0()));
    let (log, _) = open(dir, k, Some(clock.clone()));
    for i in 1..=20u64 {
        if i == 11 {
            clock.advance(Duration::from_secs(7200));
        }
        clock.advance(Duration::from_millis(1));
        assert_eq!(log.append(&event(i)).await.unwrap().seq, i);
    }
    log.close().await;
    clock
}

/// All lines of the log as (file, lines).
fn lines(dir: &Path) -> Vec<(PathBuf, Vec<String>)> {
    day_files(dir)
        .into_iter()
        .map(|p| {
            let t = std::fs::read_to_string(&p).unwrap();
            (p, t.lines().map(str::to_owned).collect())
        })
        .collect()
}

fn write_lines(files: &[(PathBuf, Vec<String>)]) {
    for (p, ls) in files {
        let mut t = ls.join("\n");
        if !ls.is_empty() {
            t.push('\n');
        }
        std::fs::write(p, t).unwrap();
    }
}

/// (file index, line index) of a seq in the 2-file layout.
fn at(seq: usize) -> (usize, usize) {
    if seq <= 10 {
        (0, seq - 1)
    } else {
        (1, seq - 11)
    }
}

fn expect(dir: &Path, k: &StaticKeys, cp: Option<&Checkpoint>, kind: BreakKind, seq: u64) {
    let rep = verify(dir, k, None, cp).unwrap();
    let b = rep
        .broken
        .clone()
        .unwrap_or_else(|| panic!("expected {kind} at {seq}, got OK: {rep:?}"));
    assert_eq!((b.kind, b.seq), (kind, seq), "{b}");
    assert!(!b.detail.is_empty());
}

#[tokio::test]
async fn every_kind_of_break_is_named_with_its_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let k = keys();
    let clock = build(&base, &k).await;
    let rep = verify(&base, &k, None, None).unwrap();
    assert!(rep.is_ok(), "{:?}", rep.broken);
    assert_eq!((rep.records, rep.files, rep.last_seq), (20, 2, 20));
    let mut n = 0;
    let mut case = |name: &str| {
        n += 1;
        let d = tmp.path().join(format!("{n}-{name}"));
        copy_dir(&base, &d);
        d
    };

    // edited: one digit of the data changed
    let d = case("edited");
    let mut f = lines(&d);
    let (fi, li) = at(5);
    f[fi].1[li] = f[fi].1[li].replacen("\"n\":5", "\"n\":6", 1);
    write_lines(&f);
    expect(&d, &k, None, BreakKind::Edited, 5);

    // edited so that it is not JSON any more
    let d = case("garbled");
    let mut f = lines(&d);
    let (fi, li) = at(12);
    f[fi].1[li].truncate(40);
    write_lines(&f);
    expect(&d, &k, None, BreakKind::Edited, 12);

    // bad hmac: content edited and the hash recomputed (no key, so the HMAC is stale)
    let d = case("badhmac");
    let mut f = lines(&d);
    let (fi, li) = at(6);
    let line = f[fi].1[li].replacen("\"n\":6", "\"n\":66", 1);
    let cut = line.len() - 149;
    let prev = hex::decode(&line[line.find("\"prev\":\"").unwrap() + 8..][..64]).unwrap();
    let mut h = Sha256::new();
    h.update(&prev);
    h.update(&line.as_bytes()[..cut]);
    h.update(b"}");
    let hash = hex::encode(h.finalize());
    f[fi].1[li] = format!("{}{}{}", &line[..cut + 9], hash, &line[cut + 73..]);
    write_lines(&f);
    expect(&d, &k, None, BreakKind::BadHmac, 6);

    // a different key: every record's HMAC is wrong
    expect(&base, &keys(), None, BreakKind::BadHmac, 1);

    // deleted: one line out of the middle
    let d = case("deleted");
    let mut f = lines(&d);
    let (fi, li) = at(7);
    f[fi].1.remove(li);
    write_lines(&f);
    expect(&d, &k, None, BreakKind::Deleted, 7);

    // deleted: the whole first day file
    let d = case("deleted-file");
    std::fs::remove_file(&day_files(&d)[0]).unwrap();
    expect(&d, &k, None, BreakKind::Deleted, 1);

    // inserted: a valid record replayed right after itself
    let d = case("inserted");
    let mut f = lines(&d);
    let (fi, li) = at(4);
    let dup = f[fi].1[li].clone();
    f[fi].1.insert(li + 1, dup);
    write_lines(&f);
    expect(&d, &k, None, BreakKind::Inserted, 5);

    // inserted: a valid record of another log (same key) spliced in at the right seq
    let d = case("inserted-foreign");
    let other = tmp.path().join("other");
    let (log, _) = open(
        &other,
        &k,
        Some(Arc::new(ManualClock::new(t0() + Duration::from_secs(5)))),
    );
    for i in 1..=11u64 {
        log.append(&event(i)).await.unwrap();
    }
    log.close().await;
    let (o, ls) = lines(&other).pop().unwrap();
    assert_eq!(o.file_name().unwrap(), "2026-03-01.jsonl");
    let foreign = ls[10].clone();
    assert!(foreign.contains("\"seq\":11,"));
    let mut f = lines(&d);
    f[1].1[0] = foreign;
    write_lines(&f);
    expect(&d, &k, None, BreakKind::Inserted, 11);

    // reordered: two adjacent records swapped
    let d = case("reordered");
    let mut f = lines(&d);
    let (fi, li) = at(8);
    f[fi].1.swap(li, li + 1);
    write_lines(&f);
    expect(&d, &k, None, BreakKind::Reordered, 8);

    // reordered across day files
    let d = case("reordered-files");
    let mut f = lines(&d);
    let a = f[0].1.pop().unwrap(); // seq 10
    let b = f[1].1.remove(0); // seq 11
    f[0].1.push(b);
    f[1].1.insert(0, a);
    write_lines(&f);
    expect(&d, &k, None, BreakKind::Reordered, 10);

    // truncated: the last three records cut off (head says 20)
    let d = case("truncated");
    let mut f = lines(&d);
    f[1].1.truncate(7);
    write_lines(&f);
    expect(&d, &k, None, BreakKind::Truncated, 18);

    // truncated mid-record at the end of the log
    let d = case("truncated-torn");
    let last = day_files(&d).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let rep = verify(&d, &k, None, None).unwrap();
    assert_eq!(
        rep.broken.as_ref().map(|b| (b.kind, b.seq)),
        Some((BreakKind::Truncated, 20))
    );
    assert!(rep.torn_tail_bytes > 0);

    // truncated: the first day file cut mid-record while a later one follows
    let d = case("truncated-middle");
    let first = day_files(&d)[0].clone();
    let len = std::fs::metadata(&first).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&first)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    expect(&d, &k, None, BreakKind::Truncated, 10);

    // bad signature: head edited to vouch for less
    let d = case("badsig");
    let head = std::fs::read_to_string(d.join("head")).unwrap();
    std::fs::write(d.join("head"), head.replace("\"seq\":20", "\"seq\":19")).unwrap();
    expect(&d, &k, None, BreakKind::BadSignature, 19);

    // bad signature: head deleted to hide a truncation
    let d = case("nohead");
    std::fs::remove_file(d.join("head")).unwrap();
    expect(&d, &k, None, BreakKind::BadSignature, 20);

    // bad signature: an exported checkpoint that was altered
    let good_cp = read_head(&base).unwrap().unwrap();
    let mut cp = good_cp.clone();
    cp.seq = 15;
    expect(&base, &k, Some(&cp), BreakKind::BadSignature, 15);
    assert!(verify(&base, &k, None, Some(&good_cp)).unwrap().is_ok());

    // rolled back: log and head restored from an older backup (consistent with each other,
    // so only the off-box checkpoint notices)
    let snap = tmp.path().join("snap");
    {
        let d = tmp.path().join("grow");
        copy_dir(&base, &d);
        copy_dir(&base, &snap); // backup at seq 20
        let (log, _) = open(&d, &k, Some(clock.clone()));
        for i in 21..=25 {
            log.append(&event(i)).await.unwrap();
        }
        let cp25 = log.checkpoint().await.unwrap();
        log.close().await;
        assert!(verify(&d, &k, None, Some(&cp25)).unwrap().is_ok());
        assert!(
            verify(&snap, &k, None, None).unwrap().is_ok(),
            "the backup alone looks fine"
        );
        expect(&snap, &k, Some(&cp25), BreakKind::RolledBack, 21);

        // rolled back and re-grown with different records (by someone holding the key):
        // the checkpoint's seq exists but with another hash
        let fork = tmp.path().join("fork");
        copy_dir(&snap, &fork);
        clock.advance(Duration::from_secs(1));
        let (log, _) = open(&fork, &k, Some(clock.clone()));
        for i in 121..=126 {
            log.append(&event(i)).await.unwrap();
        }
        log.close().await;
        assert!(verify(&fork, &k, None, None).unwrap().is_ok());
        expect(&fork, &k, Some(&cp25), BreakKind::RolledBack, 25);
    }
}

/// Logs above 256 KiB are checked on two threads; breaks in either half are still found in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaks_in_a_large_log_are_found_by_the_parallel_checker() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let k = keys();
    let (log, _) = open(&base, &k, None);
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..60 {
                log.append(&event(t * 1000 + i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    log.close().await;
    let rep = verify(&base, &k, None, None).unwrap();
    assert!(
        rep.is_ok() && rep.records == 3840 && rep.bytes > 1 << 20,
        "{rep:?}"
    );

    for (name, seq, kind) in [
        ("early", 100usize, BreakKind::Edited),
        ("late", 3500, BreakKind::Edited),
        ("late-swap", 3000, BreakKind::Reordered),
    ] {
        let d = tmp.path().join(name);
        copy_dir(&base, &d);
        let mut f = lines(&d);
        if kind == BreakKind::Reordered {
            f[0].1.swap(seq - 1, seq);
        } else {
            f[0].1[seq - 1] = f[0].1[seq - 1].replacen("\"uptime\"", "\"uptimf\"", 1);
        }
        write_lines(&f);
        expect(&d, &k, None, kind, seq as u64);
    }
}
