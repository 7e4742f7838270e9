//! The signed head, rewritten on its own thread so that its three fsyncs (temp file, rename,
//! directory) never hold up a group commit.
//!
//! The writer [`HeadWriter::mark`]s each durable `(seq, hash)`; this thread signs and writes the
//! newest one at most once per `head_interval`, and at once on close. An explicit checkpoint
//! ([`HeadWriter::write`]) is written synchronously. The head never moves backwards.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tether_model::{Alert, AlertSink, Severity};

use crate::anchor::{Anchor, HeadAnchor};
use crate::checkpoint::{Checkpoint, write_head};
use crate::clock::Clock;
use crate::error::{AuditError, Result};
use crate::keys::ChainKeys;
use crate::metrics::Metrics;
use crate::record::format_ts;

pub(crate) struct HeadWriter {
    dir: PathBuf,
    /// The current key epoch's keys (replaced by a rotation).
    keys: Mutex<ChainKeys>,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    alerts: Arc<dyn AlertSink>,
    interval: Duration,
    state: Mutex<State>,
    cv: Condvar,
    /// Serializes writes of the head file; holds the last head written.
    last: Mutex<Option<Checkpoint>>,
    /// The head counter outside `state_dir`, raised after each head written.
    anchor: Option<Arc<dyn HeadAnchor>>,
}

struct State {
    /// The newest durable record not yet in the head.
    pending: Option<(u64, [u8; 32])>,
    last_write: Instant,
    closing: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl HeadWriter {
    pub(crate) fn new(
        dir: PathBuf,
        keys: ChainKeys,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
        alerts: Arc<dyn AlertSink>,
        interval: Duration,
        anchor: Option<Arc<dyn HeadAnchor>>,
    ) -> Self {
        HeadWriter {
            dir,
            keys: Mutex::new(keys),
            clock,
            metrics,
            alerts,
            interval,
            state: Mutex::new(State {
                pending: None,
                last_write: Instant::now(),
                closing: false,
            }),
            cv: Condvar::new(),
            last: Mutex::new(None),
            anchor,
        }
    }

    /// Records that `seq` (with `hash`) is durable; the head follows within `head_interval`.
    pub(crate) fn mark(&self, seq: u64, hash: [u8; 32]) {
        let was_idle = lock(&self.state).pending.replace((seq, hash)).is_none();
        // Already pending: the head thread is waiting out the interval and will see the newer one.
        if was_idle {
            self.cv.notify_one();
        }
    }

    /// Signs and writes a head for `seq` now (unless a newer one is already written, which is
    /// then returned). Failures are counted and alerted.
    pub(crate) fn write(&self, seq: u64, hash: &[u8; 32]) -> Result<Checkpoint> {
        let mut last = lock(&self.last);
        if let Some(cp) = last.as_ref().filter(|cp| cp.seq > seq) {
            return Ok(cp.clone());
        }
        let cp = Checkpoint::sign(&lock(&self.keys), seq, hash, format_ts(self.clock.now()));
        match write_head(&self.dir, &cp) {
            Ok(()) => {
                *last = Some(cp.clone());
                self.raise_anchor(seq, hash);
                Ok(cp)
            }
            Err(e) => {
                self.metrics.checkpoint_failures.inc();
                let msg = format!(
                    "cannot rewrite the signed audit head in {}: {e}; records are durable but truncation after seq {seq} may go unnoticed until it succeeds",
                    self.dir.display(),
                );
                tracing::warn!("{msg}");
                self.alerts.raise(Alert::new(
                    "audit_checkpoint_failed",
                    Severity::Warning,
                    msg,
                ));
                Err(AuditError::WriteFailed {
                    dir: self.dir.clone(),
                    source: e,
                })
            }
        }
    }

    /// Raises the counter outside `state_dir` to the head just written. A failure is logged and
    /// alerted (the next head retries); the record is durable either way.
    fn raise_anchor(&self, seq: u64, hash: &[u8; 32]) {
        let Some(anchor) = &self.anchor else { return };
        if let Err(e) = anchor.store(&Anchor { seq, hash: *hash }) {
            let msg = format!(
                "cannot raise the audit head counter kept outside state_dir ({}) to seq {seq}: {e}; a rollback of log and head together after this seq may go unnoticed until it succeeds",
                anchor.location()
            );
            tracing::warn!("{msg}");
            self.alerts.raise(Alert::new(
                "audit_checkpoint_failed",
                Severity::Warning,
                msg,
            ));
        }
    }

    /// Signs later heads with `keys` (after a key rotation).
    pub(crate) fn set_keys(&self, keys: ChainKeys) {
        *lock(&self.keys) = keys;
    }

    /// Makes [`HeadWriter::run`] write what is pending and return.
    pub(crate) fn close(&self) {
        lock(&self.state).closing = true;
        self.cv.notify_one();
    }

    /// The head thread: writes the pending head once per interval; on close, once more.
    pub(crate) fn run(&self) {
        let mut st = lock(&self.state);
        loop {
            let Some((seq, hash)) = st.pending else {
                if st.closing {
                    return;
                }
                st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            let wait = self.interval.saturating_sub(st.last_write.elapsed());
            if !wait.is_zero() && !st.closing {
                st = self
                    .cv
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            st.pending = None;
            st.last_write = Instant::now();
            drop(st);
            let failed = self.write(seq, &hash).is_err();
            st = lock(&self.state);
            if failed {
                if st.closing {
                    return;
                }
                // Retried after the interval, unless a newer record replaces it first.
                st.pending.get_or_insert((seq, hash));
            }
        }
    }
}
