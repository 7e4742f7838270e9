//! kill -9 during a write storm of 1000 concurrent appenders (a real child process).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tether_audit::*;

#[test]
fn kill9_mid_storm_loses_no_acknowledged_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let key = tmp.path().join("audit.key");
    let mut max_acked_all = 0;
    for round in 0..2 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_audit-storm"))
            .args([dir.as_os_str(), key.as_os_str(), "1000".as_ref()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for l in out.lines() {
                let Ok(l) = l else { break };
                if tx.send(l.trim().parse::<u64>().unwrap()).is_err() {
                    break;
                }
            }
        });
        let mut acked = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.len() < 3000 && Instant::now() < deadline {
            if let Ok(s) = rx.recv_timeout(Duration::from_millis(100)) {
                acked.push(s);
            }
        }
        assert!(acked.len() >= 3000, "storm too slow: {} acks", acked.len());
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(!status.success());
        reader.join().unwrap();
        acked.extend(rx.try_iter()); // lines printed before the kill
        let max_acked = *acked.iter().max().unwrap();
        assert!(max_acked > max_acked_all);
        max_acked_all = max_acked;

        let keys = KeyFile::open_or_create(&key, &dir).unwrap();
        let rep = verify(&dir, &keys, None, None).unwrap();
        // A write in flight may leave a torn line; it was never acknowledged.
        assert!(rep.is_ok(), "round {round}: {:?}", rep.broken);
        let (log, rec) = AuditLog::open(
            &dir,
            &keys,
            &prometheus::Registry::new(),
            std::sync::Arc::new(tether_model::NoAlerts),
        )
        .unwrap();
        eprintln!(
            "round {round}: {} acked (max {max_acked}), recovered {:?}",
            acked.len(),
            rec
        );
        assert!(
            rec.last_seq >= max_acked,
            "acked seq {max_acked} lost (log ends at {})",
            rec.last_seq
        );
        let seqs: std::collections::HashSet<u64> = read_records(&dir, &Filter::default())
            .unwrap()
            .map(|r| r.unwrap().seq)
            .collect();
        assert!(
            acked.iter().all(|s| seqs.contains(s)),
            "an acknowledged seq is missing"
        );
        log.close_blocking();
        let rep = verify(&dir, &keys, None, None).unwrap();
        assert!(rep.is_ok() && rep.torn_tail_bytes == 0, "{rep:?}");
        assert_eq!(rep.last_seq, rec.last_seq);
    }
}
