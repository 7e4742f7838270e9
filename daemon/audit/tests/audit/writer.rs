//! Writer behaviour: round trip, group commit, rollover, recovery, keys, readers.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tether_audit::*;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_group_committed_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let k = keys();
    let reg = prometheus::Registry::new();
    let (log, rec) = AuditLog::open(&dir, &k, &reg, Arc::new(tether_model::NoAlerts)).unwrap();
    assert_eq!(rec.last_seq, 0);
    let mut tasks = Vec::new();
    for i in 0..400u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.append(&event(i)).await.unwrap().seq
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
    assert_eq!(log.last_seq(), 400);
    let cp = log.checkpoint().await.unwrap();
    assert_eq!(cp.seq, 400);
    log.close().await;

    let fams = reg.gather();
    let get = |n: &str| {
        fams.iter()
            .find(|f| f.name() == n)
            .unwrap_or_else(|| panic!("{n}"))
    };
    assert_eq!(
        get("tether_audit_records_total").get_metric()[0]
            .get_counter()
            .get_value(),
        400.0
    );
    let batches = get("tether_audit_batch_size").get_metric()[0]
        .get_histogram()
        .get_sample_count();
    assert!(
        batches < 400,
        "no batching happened: {batches} batches for 400 records"
    );
    assert!(
        get("tether_audit_fsync_seconds").get_metric()[0]
            .get_histogram()
            .get_sample_count()
            >= batches
    );
    get("tether_audit_write_failures_total");

    let rep = verify(&dir, &k, None, Some(&cp)).unwrap();
    assert!(rep.is_ok(), "{:?}", rep.broken);
    assert_eq!(
        (rep.records, rep.last_seq, rep.head_seq),
        (400, 400, Some(400))
    );
    assert!(rep.bytes > 0 && rep.files == 1);

    // Read back: every record is there with its content.
    let recs: Vec<Record> = read_records(&dir, &Filter::default())
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(recs.len(), 400);
    assert!(
        recs.iter()
            .all(|r| r.kind == "exec.requested" && r.data["cmd"] == "uptime")
    );

    // Checkpoint text round-trips and a tampered one is refused.
    let text = cp.to_text();
    let parsed = Checkpoint::parse(&text, "test").unwrap();
    assert_eq!(parsed, cp);
    assert!(verify(&dir, &k, None, Some(&parsed)).unwrap().is_ok());
}

#[tokio::test]
async fn day_rollover_at_utc_midnight_continues_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let k = keys();
    let clock = Arc::new(ManualClock::new(
        time::macros::datetime!(2026-03-01 23:59:59.5 UTC),
    ));
    let (log, _) = open(&dir, &k, Some(clock.clone()));
    for i in 0..3 {
        log.append(&event(i)).await.unwrap();
    }
    clock.advance(Duration::from_secs(1));
    for i in 3..6 {
        log.append(&event(i)).await.unwrap();
    }
    // A clock that jumps back does not reopen an older day file.
    clock.set(time::macros::datetime!(2026-03-01 12:00 UTC));
    log.append(&event(6)).await.unwrap();
    log.close().await;
    let names: Vec<String> = day_files(&dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["2026-03-01.jsonl", "2026-03-02.jsonl"]);
    let second = std::fs::read_to_string(dir.join("2026-03-02.jsonl")).unwrap();
    assert!(
        second.starts_with("{\"actor\":")
            && second.contains("\"seq\":4,\"ts\":\"2026-03-02T00:00:00.500000Z\""),
        "{second}"
    );
    let rep = verify(&dir, &k, None, None).unwrap();
    assert!(rep.is_ok(), "{:?}", rep.broken);
    assert_eq!((rep.records, rep.files), (7, 2));
    // --from skips the first day and still verifies.
    let rep = verify(&dir, &k, parse_date("2026-03-02"), None).unwrap();
    assert!(rep.is_ok(), "{:?}", rep.broken);
    assert_eq!((rep.records, rep.first_seq), (4, Some(4)));

    // Reopen continues on the newest file.
    let (log, rec) = open(&dir, &k, Some(clock));
    assert_eq!(rec.last_seq, 7);
    assert_eq!(log.append(&event(7)).await.unwrap().seq, 8);
    log.close().await;
    assert!(verify(&dir, &k, None, None).unwrap().is_ok());
}

#[tokio::test]
async fn torn_tail_is_dropped_and_reported_and_the_chain_resumes() {
    let partial = &b"{\"actor\":{\"role\":\"adm"[..];
    let mut partial_then_zeros = partial.to_vec();
    partial_then_zeros.extend_from_slice(&[0u8; 300]);
    // A crash mid-write leaves part of a record, possibly followed by the writer's zero tail.
    for junk in [partial, &partial_then_zeros[..]] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let k = keys();
        let (log, _) = open(&dir, &k, None);
        for i in 0..5 {
            log.append(&event(i)).await.unwrap();
        }
        log.close().await;
        let f = day_files(&dir).pop().unwrap();
        let good = std::fs::metadata(&f).unwrap().len();
        let mut data = std::fs::read(&f).unwrap();
        data.extend_from_slice(junk);
        std::fs::write(&f, &data).unwrap();
        let (log, rec) = open(&dir, &k, None);
        let torn = rec.torn.expect("torn tail reported");
        assert_eq!((torn.offset, torn.bytes), (good, partial.len() as u64));
        assert_eq!(rec.last_seq, 5);
        assert_eq!(log.append(&event(9)).await.unwrap().seq, 6);
        log.close().await;
        assert!(verify(&dir, &k, None, None).unwrap().is_ok());
    }
}

#[tokio::test]
async fn a_zero_tail_left_by_a_crash_is_not_a_torn_write_and_is_trimmed_on_close() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let k = keys();
    let (log, _) = open(&dir, &k, None);
    for i in 0..5 {
        log.append(&event(i)).await.unwrap();
    }
    log.close().await;
    let f = day_files(&dir).pop().unwrap();
    let mut data = std::fs::read(&f).unwrap();
    assert_eq!(data.last(), Some(&b'\n'), "close trims the zero tail");
    // What kill -9 leaves: the records, then the preallocated zeros.
    data.extend_from_slice(&[0u8; 8192]);
    std::fs::write(&f, &data).unwrap();
    assert!(verify(&dir, &k, None, None).unwrap().is_ok());
    assert_eq!(read_records(&dir, &Filter::default()).unwrap().count(), 5);
    let (log, rec) = open(&dir, &k, None);
    assert_eq!(rec.torn, None, "zeros are not a torn record");
    assert_eq!(rec.last_seq, 5);
    assert_eq!(log.append(&event(9)).await.unwrap().seq, 6);
    log.close().await;
    let data = std::fs::read(&f).unwrap();
    assert!(
        !data.contains(&0) && data.ends_with(b"\n"),
        "trimmed on close"
    );
    assert!(verify(&dir, &k, None, None).unwrap().is_ok());

    // Non-zero bytes after the zero tail are damage, named by verify.
    let mut data = data;
    data.extend_from_slice(&[0u8; 100]);
    data.extend_from_slice(b"junk");
    std::fs::write(&f, &data).unwrap();
    let rep = verify(&dir, &k, None, None).unwrap();
    let b = rep.broken.expect("garbage after the zero tail is reported");
    assert_eq!((b.kind, b.seq), (BreakKind::Edited, 7), "{b:?}");
    assert!(b.detail.contains("after the zero-filled end"), "{b:?}");
}

#[tokio::test]
async fn the_day_file_being_written_keeps_a_zero_tail_that_readers_skip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let k = keys();
    let (log, _) = open(&dir, &k, None);
    for i in 0..3 {
        log.append(&event(i)).await.unwrap();
    }
    let f = day_files(&dir).pop().unwrap();
    let data = std::fs::read(&f).unwrap();
    let end = data
        .iter()
        .position(|&b| b == 0)
        .expect("a zero tail while open");
    assert!(data[end..].iter().all(|&b| b == 0));
    assert_eq!(data[..end].iter().filter(|&&b| b == b'\n').count(), 3);
    assert_eq!(read_records(&dir, &Filter::default()).unwrap().count(), 3);
    assert_eq!(tail_records(&dir, &Filter::default(), 10).unwrap().len(), 3);
    let mut follow = Follower::from_end(&dir, Filter::default()).unwrap();
    assert!(follow.poll().unwrap().is_empty());
    log.append(&event(3)).await.unwrap();
    let got = follow.poll().unwrap();
    assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), [4]);
    let rep = verify(&dir, &k, None, None).unwrap();
    assert!(rep.is_ok(), "{:?}", rep.broken);
    assert_eq!(rep.records, 4);
    log.close().await;
}

#[tokio::test]
async fn open_refuses_damage_that_is_not_a_torn_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let k = keys();
    let (log, _) = open(&dir, &k, None);
    for i in 0..5 {
        log.append(&event(i)).await.unwrap();
    }
    log.close().await;
    let f = day_files(&dir).pop().unwrap();
    let text = std::fs::read_to_string(&f).unwrap();
    std::fs::write(&f, text.replacen("\"n\":2", "\"n\":7", 1)).unwrap();
    let err = AuditLog::open(
        &dir,
        &k,
        &prometheus::Registry::new(),
        Arc::new(tether_model::NoAlerts),
    )
    .unwrap_err();
    assert!(matches!(err, AuditError::Damaged { seq: 3, .. }), "{err}");
    // The file was not touched.
    assert_eq!(
        std::fs::read_to_string(&f).unwrap(),
        text.replacen("\"n\":2", "\"n\":7", 1)
    );

    // A head ahead of the log (truncation) is refused too.
    std::fs::write(&f, &text).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&f, lines[..3].join("\n") + "\n").unwrap();
    let err = AuditLog::open(
        &dir,
        &k,
        &prometheus::Registry::new(),
        Arc::new(tether_model::NoAlerts),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::HeadMismatch {
                log_seq: 3,
                head_seq: 5,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("truncated or rolled back"),
        "{err}"
    );
}

#[tokio::test]
async fn invalid_events_are_refused_before_the_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let k = keys();
    let (log, _) = open(&dir, &k, None);
    let e = log
        .append(&event(1).data(json!({"x": {"ms": 1.5}})))
        .await
        .unwrap_err();
    assert!(
        matches!(e, AuditError::InvalidEvent { .. }) && e.to_string().contains("data.x.ms"),
        "{e}"
    );
    let e = log.append(&event(1).data(json!([1]))).await.unwrap_err();
    assert!(e.to_string().contains("JSON object"), "{e}");
    let e = log
        .append(&Event::new("Exec Requested", actor(1)))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("type"), "{e}");
    // Data too large for one record is never dropped: the record is written with a digest.
    let big = "x".repeat(MAX_RECORD_BYTES);
    let r = log
        .append(&event(1).data(json!({ "big": big })))
        .await
        .expect("an oversized record is recorded as a digest");
    assert_eq!(r.seq, 1);
    assert_eq!(log.append(&event(1)).await.unwrap().seq, 2);
    log.close().await;
}

#[test]
fn key_file_is_0600_outside_the_audit_dir_and_never_printed() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let audit = tmp.path().join("audit");
    std::fs::create_dir(&audit).unwrap();
    let e = KeyFile::open_or_create(audit.join("keys"), &audit).unwrap_err();
    assert!(matches!(e, AuditError::KeyFileInsideAuditDir { .. }), "{e}");
    let e = KeyFile::open_or_create(audit.join("sub/../keys"), &audit).unwrap_err();
    assert!(matches!(e, AuditError::KeyFileInsideAuditDir { .. }), "{e}");
    assert!(!audit.join("keys").exists());

    let path = tmp.path().join("etc/audit.key");
    let kf = KeyFile::open_or_create(&path, &audit).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let hmac = hex::encode(&*kf.hmac_key().unwrap());
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&hmac));
    assert!(!format!("{kf:?}").contains(&hmac));
    // Same keys on reopen.
    let kf2 = KeyFile::open_or_create(&path, &audit).unwrap();
    assert_eq!(*kf2.signing_key().unwrap(), *kf.signing_key().unwrap());

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = KeyFile::open_or_create(&path, &audit).unwrap_err();
    assert!(
        matches!(e, AuditError::KeyFilePermissions { mode: 0o640, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("chmod 600"), "{e}");
    assert!(
        kf.hmac_key().is_err(),
        "a loosened file is refused on every read"
    );

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, "hmac=zz\n").unwrap();
    let e = KeyFile::open_or_create(&path, &audit).unwrap_err();
    assert!(matches!(e, AuditError::KeyFileMalformed { .. }), "{e}");
    assert!(!format!("{:?}", keys()).contains("hmac:"));
}

#[tokio::test]
async fn readers_filter_follow_and_export() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let k = keys();
    let clock = Arc::new(ManualClock::new(t0()));
    let (log, _) = open(&dir, &k, Some(clock.clone()));
    log.append(&Event::new("config.change", actor(0)).data(json!({"key": "a"})))
        .await
        .unwrap();
    log.append(&event(1)).await.unwrap(); // web-1
    let mut fol = Follower::new(
        &dir,
        Filter {
            types: vec!["exec.*".into()],
            ..Filter::default()
        },
        0,
    )
    .unwrap();
    assert_eq!(
        fol.poll()
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        [2]
    );
    let mut from_end = Follower::from_end(&dir, Filter::default()).unwrap();
    assert!(from_end.poll().unwrap().is_empty());
    clock.advance(Duration::from_secs(3600 * 2)); // next UTC day
    log.append(&event(2)).await.unwrap();
    log.append(&Event::new("auth.denied", actor(2)).host("web-2"))
        .await
        .unwrap();
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        fol.next_batch(Duration::from_millis(10)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), [3]);
    assert_eq!(
        from_end
            .poll()
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        [3, 4]
    );
    log.close().await;

    let host2 = Filter {
        host: Some("web-2".into()),
        ..Filter::default()
    };
    let seqs: Vec<u64> = read_records(&dir, &host2)
        .unwrap()
        .map(|r| r.unwrap().seq)
        .collect();
    assert_eq!(seqs, [3, 4]);
    let tail = tail_records(&dir, &Filter::default(), 2).unwrap();
    assert_eq!(tail.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4]);
    // The streaming tail gives the same records, one at a time, for any limit.
    for n in [0, 1, 2, 3, 100_000] {
        let mut seqs = Vec::new();
        let emitted = tail_records_with(&dir, &Filter::default(), n, &mut |r| {
            seqs.push(r.seq);
            Ok(())
        })
        .unwrap();
        let want: Vec<u64> = tail_records(&dir, &Filter::default(), n)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, want, "limit {n}");
        assert_eq!(emitted as usize, want.len());
    }
    assert_eq!(count_records(&dir, &host2).unwrap(), 2);
    let from = Filter {
        from: parse_date("2026-03-02"),
        ..Filter::default()
    };
    assert_eq!(read_records(&dir, &from).unwrap().count(), 2);

    let mut out = Vec::new();
    let st = export_jsonl(&dir, &Filter::default(), &mut out).unwrap();
    let all: Vec<u8> = day_files(&dir)
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(out, all, "export is byte-identical to the log");
    assert_eq!(st.records, 4);
}

/// Appends from plain threads (`append_blocking`) and tokio tasks at once: on an idle writer
/// the caller writes its own record, otherwise it joins the writer thread's batch. Every append
/// that returned is in the file with its seq, the seqs form one gapless chain, and a caller
/// appending alone gets a batch of one per record (written inline, one fdatasync each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_and_queued_appends_share_one_chain_and_each_is_on_disk_when_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let k = keys();
    let reg = prometheus::Registry::new();
    let (log, _) = AuditLog::open(&dir, &k, &reg, Arc::new(tether_model::NoAlerts)).unwrap();
    let count = |name: &str| -> u64 {
        reg.gather()
            .iter()
            .find(|f| f.name() == name)
            .map(|f| f.get_metric()[0].get_histogram().get_sample_count())
            .unwrap_or(0)
    };
    // Alone: one record per batch, and each is readable as soon as its append returns.
    for i in 0..20u64 {
        let r = log.append(&event(i)).await.unwrap();
        assert_eq!(r.seq, i + 1);
        let text: String = day_files(&dir)
            .iter()
            .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned())
            .collect();
        assert!(
            text.contains(&format!("\"seq\":{},", r.seq)),
            "record {} not in the file when its append returned",
            r.seq
        );
    }
    assert_eq!(
        count("tether_audit_batch_size"),
        20,
        "one batch per lone append"
    );
    assert_eq!(count("tether_audit_fsync_seconds"), 20);

    // Together: 4 threads and 64 tasks, 25 appends each.
    let mut threads = Vec::new();
    for t in 0..4u64 {
        let log = log.clone();
        threads.push(std::thread::spawn(move || {
            (0..25u64)
                .map(|i| log.append_blocking(&event(1000 + t * 100 + i)).unwrap().seq)
                .collect::<Vec<_>>()
        }));
    }
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25u64 {
                seqs.push(log.append(&event(10_000 + t * 100 + i)).await.unwrap().seq);
            }
            seqs
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.extend(t.await.unwrap());
    }
    for t in threads {
        seqs.extend(t.join().unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (21..=21 + 68 * 25 - 1).collect::<Vec<_>>());
    let batches = count("tether_audit_batch_size") - 20;
    assert!(
        batches < 68 * 25,
        "no group commit under load: {batches} batches for {} records",
        68 * 25
    );
    let cp = log.checkpoint().await.unwrap();
    log.close().await;
    let rep = verify(&dir, &k, None, Some(&cp)).unwrap();
    assert!(rep.is_ok(), "{:?}", rep.broken);
    assert_eq!(rep.records, 20 + 68 * 25);
}

/// After `close`, an append through another handle is refused with `WriterStopped` and
/// writes nothing, whether it would have gone inline or to the writer thread.
#[tokio::test]
async fn appends_after_close_are_refused_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let k = keys();
    let (log, _) = open(&dir, &k, None);
    let other = log.clone();
    log.append(&event(1)).await.unwrap();
    log.close().await;
    let before: Vec<Vec<u8>> = day_files(&dir)
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(matches!(
        other.append(&event(2)).await,
        Err(AuditError::WriterStopped)
    ));
    assert!(matches!(
        {
            let other = other.clone();
            std::thread::spawn(move || other.append_blocking(&event(3)))
                .join()
                .unwrap()
        },
        Err(AuditError::WriterStopped)
    ));
    let after: Vec<Vec<u8>> = day_files(&dir)
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(before, after);
}
