//! Test helper for the crash test: N concurrent appenders append forever and print every
//! acknowledged (durable) seq on its own line on stdout. Kill it with SIGKILL.
//!
//! Usage: `audit-storm AUDIT_DIR KEY_FILE APPENDERS`

use std::io::Write as _;
use std::sync::Arc;

use serde_json::json;
use tether_audit::{Actor, AuditLog, Event, KeyFile, Via};
use tether_model::{NoAlerts, Role};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, key, n] = args.as_slice() else {
        return Err("usage: audit-storm AUDIT_DIR KEY_FILE APPENDERS".into());
    };
    let n: usize = n.parse()?;
    let dir = std::path::PathBuf::from(dir);
    let keys = KeyFile::open_or_create(key, &dir)?;
    let reg = prometheus::Registry::new();
    let (log, rec) = AuditLog::open(&dir, &keys, &reg, Arc::new(NoAlerts))?;
    eprintln!("recovered: {rec:?}");
    let mut tasks = Vec::new();
    for i in 0..n {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let actor = Actor {
                uid: 1000 + i as u32,
                user: format!("user{i}"),
                role: Some(Role::Operator),
                via: Via::Cli,
            };
            let mut k = 0u64;
            loop {
                let ev = Event::new("exec.requested", actor.clone())
                    .host(format!("host-{}", i % 7))
                    .data(json!({"cmd": "systemctl restart nginx", "n": k, "appender": i}));
                match log.append(&ev).await {
                    Ok(r) => {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "{}", r.seq);
                    }
                    Err(e) => {
                        eprintln!("append failed: {e}");
                        return;
                    }
                }
                k += 1;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}
