//! ENOSPC on a real 256 KiB tmpfs: appends are refused with a precise error, the chain stays
//! intact, and appends work again once space frees.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use tether_audit::*;

use super::*;

struct Mount(PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path) -> Option<Mount> {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP: ENOSPC test needs root to mount a tmpfs");
        return None;
    }
    std::fs::create_dir_all(at).unwrap();
    let st = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=256k,mode=0700",
            "tether-audit-test",
        ])
        .arg(at)
        .status();
    match st {
        Ok(s) if s.success() => Some(Mount(at.to_path_buf())),
        other => {
            eprintln!("SKIP: ENOSPC test cannot mount a tmpfs ({other:?})");
            None
        }
    }
}

#[tokio::test]
async fn enospc_refuses_appends_keeps_the_chain_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let Some(_m) = mount_tmpfs(&dir) else { return };
    let k = keys();
    let alerts = Arc::new(Alerts::default());
    let reg = prometheus::Registry::new();
    let (log, _) = AuditLog::open(&dir, &k, &reg, alerts.clone()).unwrap();
    for i in 0..10 {
        log.append(&event(i)).await.unwrap();
    }
    assert_eq!(log.checkpoint().await.unwrap().seq, 10);
    // Fill the file system.
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    drop(f);
    let mut err = None;
    let mut ok = 10;
    for i in 0..200 {
        match log.append(&event(100 + i)).await {
            Ok(_) => ok += 1,
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let err = err.expect("appends kept succeeding on a full file system");
    assert_eq!(err.raw_os_error(), Some(28), "{err}");
    let msg = err.to_string();
    assert!(matches!(err, AuditError::WriteFailed { .. }), "{msg}");
    assert!(msg.contains(&dir.display().to_string()), "{msg}");
    assert!(
        msg.contains("the action was refused; free space / fix permissions, then retry"),
        "{msg}"
    );
    // Still refused, not half-written.
    assert!(log.append(&event(999)).await.is_err());
    let rep = verify(&dir, &k, None, None).unwrap();
    assert!(rep.is_ok() && rep.torn_tail_bytes == 0, "{rep:?}");
    assert_eq!(rep.last_seq, ok);
    assert!(
        alerts
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|a| a.kind == "audit_write_failed")
    );
    let fails = reg
        .gather()
        .into_iter()
        .find(|f| f.name() == "tether_audit_write_failures_total")
        .unwrap();
    assert!(fails.get_metric()[0].get_counter().get_value() >= 2.0);

    std::fs::remove_file(&filler).unwrap();
    let r = log.append(&event(1000)).await.unwrap();
    assert_eq!(r.seq, ok + 1);
    log.close().await;
    let rep = verify(&dir, &k, None, None).unwrap();
    assert!(rep.is_ok(), "{rep:?}");
    assert_eq!((rep.last_seq, rep.head_seq), (ok + 1, Some(ok + 1)));
}
