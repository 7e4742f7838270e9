//! Integration tests of the audit chain: real files, real processes, real tmpfs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod anchor;
mod crash;
mod enospc;
mod props;
mod recovery;
mod rotation;
mod tamper;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::json;
use tether_audit::{Actor, AuditLog, Event, ManualClock, Options, Recovery, StaticKeys, Via};
use tether_model::{Alert, AlertSink, Role};
use time::OffsetDateTime;

/// A test actor.
pub fn actor(i: u32) -> Actor {
    Actor {
        uid: 1000 + i,
        user: format!("user{i}"),
        role: Some(Role::Admin),
        via: Via::Cli,
    }
}

/// A test event.
pub fn event(i: u64) -> Event {
    Event::new("exec.requested", actor((i % 3) as u32))
        .host(format!("web-{}", i % 4))
        .data(json!({"cmd": "uptime", "n": i, "tags": ["a", "b"], "ok": true}))
}

/// Fresh random keys.
pub fn keys() -> StaticKeys {
    StaticKeys::generate().unwrap()
}

/// 2026-03-01 23:00:00 UTC.
pub fn t0() -> OffsetDateTime {
    time::macros::datetime!(2026-03-01 23:00:00 UTC)
}

/// Opens a log with an optional manual clock.
pub fn open(
    dir: &Path,
    keys: &StaticKeys,
    clock: Option<Arc<ManualClock>>,
) -> (AuditLog, Recovery) {
    let mut opts = Options::default();
    if let Some(c) = clock {
        opts.clock = c;
    }
    AuditLog::open_with(
        dir,
        keys,
        &prometheus::Registry::new(),
        Arc::new(tether_model::NoAlerts),
        opts,
    )
    .unwrap()
}

/// Collects alerts.
#[derive(Default)]
pub struct Alerts(pub Mutex<Vec<Alert>>);
impl AlertSink for Alerts {
    fn raise(&self, alert: Alert) {
        self.0.lock().unwrap().push(alert);
    }
}

/// Copies the regular files of `src` into a new temp dir.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

/// The day files of a log dir, oldest first.
pub fn day_files(dir: &Path) -> Vec<PathBuf> {
    tether_audit::list_day_files(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}
