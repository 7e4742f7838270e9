//! Issue 14 §2: the head counter kept outside `state_dir` catches what the log and its signed
//! head cannot show on their own: an older copy of both restored over a longer log, and a log
//! whose every day file and head were deleted. Without a counter, verify says `unanchored`,
//! never ok.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tether_audit::*;

use super::*;

/// A counter in a file outside the audit directory (what `tetherd` keeps beside the vault key).
struct FileCounter(PathBuf);

impl HeadAnchor for FileCounter {
    fn location(&self) -> String {
        self.0.display().to_string()
    }
    fn load(&self) -> Result<Option<Anchor>, AuditError> {
        match std::fs::read(&self.0) {
            Ok(b) => Anchor::parse(&b, &self.location()).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(AuditError::Read {
                path: self.0.clone(),
                source,
            }),
        }
    }
    fn store(&self, a: &Anchor) -> Result<(), AuditError> {
        if self.load()?.is_some_and(|old| old.seq >= a.seq) {
            return Ok(());
        }
        std::fs::write(&self.0, a.to_bytes()).map_err(|source| AuditError::Read {
            path: self.0.clone(),
            source,
        })
    }
}

fn open_anchored(
    dir: &Path,
    k: &StaticKeys,
    counter: &Arc<FileCounter>,
) -> Result<(AuditLog, Recovery), AuditError> {
    let opts = Options {
        anchor: Some(counter.clone() as Arc<dyn HeadAnchor>),
        ..Options::default()
    };
    AuditLog::open_with(
        dir,
        k,
        &prometheus::Registry::new(),
        Arc::new(tether_model::NoAlerts),
        opts,
    )
}

fn check(dir: &Path, k: &StaticKeys, counter: &FileCounter) -> VerifyReport {
    verify_anchored(dir, k, None, None, Some(counter)).unwrap()
}

async fn append(log: &AuditLog, range: std::ops::Range<u64>) {
    for i in range {
        log.append(&event(i)).await.unwrap();
    }
}

#[tokio::test]
async fn an_older_log_and_head_restored_together_are_caught_by_the_counter() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let counter = Arc::new(FileCounter(tmp.path().join("counter")));
    let k = keys();
    let (log, _) = open_anchored(&dir, &k, &counter).unwrap();
    append(&log, 0..5).await;
    log.checkpoint().await.unwrap();
    let old = tmp.path().join("old");
    copy_dir(&dir, &old);
    append(&log, 5..10).await;
    log.close().await;
    let rep = check(&dir, &k, &counter);
    assert_eq!(rep.verdict, VerifyVerdict::Ok, "{rep:?}");
    assert_eq!(rep.anchor_seq, Some(10));

    // The attacker restores the older log and its (validly signed) head.
    std::fs::remove_dir_all(&dir).unwrap();
    copy_dir(&old, &dir);
    // The directory alone says ok: that is what the counter is for.
    let plain = verify(&dir, &k, None, None).unwrap();
    assert!(plain.is_ok(), "{plain:?}");
    assert_eq!(plain.verdict, VerifyVerdict::Unanchored);
    assert!(plain.unanchored.is_some());

    let rep = check(&dir, &k, &counter);
    assert_eq!(rep.verdict, VerifyVerdict::Broken);
    let b = rep.broken.expect("a rollback must be a break");
    assert_eq!((b.kind, b.seq), (BreakKind::RolledBack, 6), "{b:?}");
    assert!(
        b.detail.contains("ends at seq 5") && b.detail.contains("6..10"),
        "{}",
        b.detail
    );
    // And the writer refuses to continue it, changing nothing.
    let before = std::fs::read(day_files(&dir)[0].clone()).unwrap();
    let err = open_anchored(&dir, &k, &counter).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::RolledBack {
                log_seq: 5,
                anchor_seq: 10,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(std::fs::read(&day_files(&dir)[0]).unwrap(), before);
}

#[tokio::test]
async fn a_log_rewritten_from_the_counter_seq_on_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let counter = Arc::new(FileCounter(tmp.path().join("counter")));
    let k = keys();
    let (log, _) = open_anchored(&dir, &k, &counter).unwrap();
    append(&log, 0..4).await;
    log.close().await;
    // Someone with the keys rebuilds a different log of the same length (or longer).
    std::fs::remove_dir_all(&dir).unwrap();
    let (log, _) = open(&dir, &k, None);
    append(&log, 100..106).await;
    log.close().await;
    let b = check(&dir, &k, &counter)
        .broken
        .expect("a rewrite is a break");
    assert_eq!((b.kind, b.seq), (BreakKind::RolledBack, 4), "{b:?}");
}

#[tokio::test]
async fn deleting_every_day_file_and_the_head_is_never_ok() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let counter = Arc::new(FileCounter(tmp.path().join("counter")));
    let k = keys();
    let (log, _) = open_anchored(&dir, &k, &counter).unwrap();
    append(&log, 0..7).await;
    log.close().await;
    for f in std::fs::read_dir(&dir).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    // Without the counter the empty directory is at best unanchored.
    let plain = verify(&dir, &k, None, None).unwrap();
    assert_eq!(plain.verdict, VerifyVerdict::Unanchored, "{plain:?}");
    let rep = check(&dir, &k, &counter);
    let b = rep.broken.expect("deleting the whole log is a break");
    assert_eq!((b.kind, b.seq), (BreakKind::RolledBack, 1), "{b:?}");
    assert!(b.detail.contains("1..7"), "{}", b.detail);
    assert!(open_anchored(&dir, &k, &counter).is_err());
}

#[tokio::test]
async fn a_counter_that_holds_nothing_gives_unanchored_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let k = keys();
    let (log, _) = open(&dir, &k, None);
    append(&log, 0..3).await;
    log.close().await;
    let counter = FileCounter(tmp.path().join("never-written"));
    let rep = check(&dir, &k, &counter);
    assert!(rep.is_ok());
    assert_eq!(rep.verdict, VerifyVerdict::Unanchored);
    assert!(
        rep.unanchored
            .as_deref()
            .unwrap_or("")
            .contains("holds nothing"),
        "{rep:?}"
    );
    // JSON says so too.
    let v = serde_json::to_value(&rep).unwrap();
    assert_eq!(v["verdict"], "unanchored");
}
