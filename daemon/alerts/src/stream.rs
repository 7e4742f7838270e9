//! [`AuditStreamer`]: every audit record to every audit sink, in order, at least once, resuming
//! from each sink's durable acknowledged [`Cursor`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tether_audit::{Record, SeqReader};
use tokio_util::sync::CancellationToken;

use crate::backoff::{Failure, RetryPolicy, jitter};
use crate::cursor::Cursor;
use crate::error::{AlertsError, Result};

/// One batch for an audit sink: consecutive records and what proves there is no gap.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Seq of the first record.
    pub first_seq: u64,
    /// Seq of the last record.
    pub last_seq: u64,
    /// Chain hash (hex) of the last record: a receiver that checks `first_seq` = its previous
    /// `last_seq` + 1 and keeps this hash can prove it missed nothing.
    pub last_hash: String,
    /// The records, in seq order.
    pub records: Vec<Record>,
}

/// Delivers one batch to one audit sink. Blocking (called from `spawn_blocking`); the error
/// text follows [`Failure::parse`] (`permanent:` = the receiver rejected these records).
pub trait BatchDeliver: Send + Sync {
    /// Delivers `batch` to `sink`; `Ok` acknowledges every record in it.
    fn deliver(&self, sink: &str, batch: &Batch) -> std::result::Result<(), String>;
    /// Records that `sink` rejected `batch` for good (the daemon audits it). Must not block.
    fn rejected(&self, sink: &str, batch: &Batch, error: &str);
}

/// How the streams run.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// The audit log directory.
    pub audit_dir: PathBuf,
    /// Where the cursors live (`state_dir/audit-sinks`).
    pub cursor_dir: PathBuf,
    /// Most records per batch.
    pub batch_max: usize,
    /// How often to look for new records when caught up.
    pub poll: Duration,
    /// Backoff while a sink fails (retried without limit: records are never skipped).
    pub retry: RetryPolicy,
}

/// One sink's stream, as `tether plugin list` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamStatus {
    /// Last acknowledged seq.
    pub acked_seq: u64,
    /// Records written but not yet acknowledged.
    pub lag: u64,
    /// Consecutive failed deliveries.
    pub failures: u32,
    /// The last failure.
    pub last_error: Option<String>,
}

struct Metrics {
    lag: IntGaugeVec,
    delivered: IntCounterVec,
    rejected: IntCounterVec,
    failures: IntCounterVec,
}

/// Streams the audit log to audit sinks. Cheap to clone.
#[derive(Clone)]
pub struct AuditStreamer {
    settings: Arc<StreamSettings>,
    status: Arc<Mutex<BTreeMap<String, StreamStatus>>>,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AuditStreamer {
    /// A streamer; [`AuditStreamer::start`] runs it.
    pub fn new(settings: StreamSettings, registry: &Registry) -> Result<AuditStreamer> {
        let metrics = Metrics {
            lag: IntGaugeVec::new(
                Opts::new(
                    "tether_audit_sink_lag_records",
                    "Audit records written but not yet acknowledged, by sink.",
                ),
                &["sink"],
            )?,
            delivered: IntCounterVec::new(
                Opts::new(
                    "tether_audit_sink_delivered_total",
                    "Audit records acknowledged by a sink.",
                ),
                &["sink"],
            )?,
            rejected: IntCounterVec::new(
                Opts::new(
                    "tether_audit_sink_rejected_total",
                    "Audit records a sink rejected for good (dead-lettered, audited).",
                ),
                &["sink"],
            )?,
            failures: IntCounterVec::new(
                Opts::new(
                    "tether_audit_sink_failures_total",
                    "Failed batch deliveries (retried), by sink.",
                ),
                &["sink"],
            )?,
        };
        registry.register(Box::new(metrics.lag.clone()))?;
        registry.register(Box::new(metrics.delivered.clone()))?;
        registry.register(Box::new(metrics.rejected.clone()))?;
        registry.register(Box::new(metrics.failures.clone()))?;
        Ok(AuditStreamer {
            settings: Arc::new(settings),
            status: Arc::new(Mutex::new(BTreeMap::new())),
            metrics: Arc::new(metrics),
        })
    }

    /// Each sink's stream status.
    pub fn status(&self) -> BTreeMap<String, StreamStatus> {
        lock(&self.status).clone()
    }

    /// Starts one task per sink; `last_seq` tells the last durable seq of the log. Each task
    /// loads its sink's cursor (failing here if a cursor file is unreadable) and stops on
    /// `shutdown` (an unacknowledged batch is delivered again after the restart).
    pub fn start(
        &self,
        sinks: Vec<String>,
        deliver: Arc<dyn BatchDeliver>,
        last_seq: Arc<dyn Fn() -> u64 + Send + Sync>,
        shutdown: CancellationToken,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>> {
        let mut tasks = Vec::new();
        for sink in sinks {
            let path = Cursor::path(&self.settings.cursor_dir, &sink);
            let cursor = Cursor::load(&path)?;
            tracing::info!(sink, acked_seq = cursor.seq, "audit sink stream resumes");
            lock(&self.status).insert(
                sink.clone(),
                StreamStatus {
                    acked_seq: cursor.seq,
                    lag: last_seq().saturating_sub(cursor.seq),
                    ..StreamStatus::default()
                },
            );
            let me = self.clone();
            let (deliver, last_seq, shutdown) =
                (deliver.clone(), last_seq.clone(), shutdown.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = me
                    .run(&sink, path, cursor, deliver, last_seq, shutdown)
                    .await
                {
                    tracing::error!(sink, "audit sink stream stopped: {e}");
                    lock(&me.status).entry(sink).or_default().last_error = Some(e.to_string());
                }
            }));
        }
        Ok(tasks)
    }

    async fn run(
        &self,
        sink: &str,
        path: PathBuf,
        mut cursor: Cursor,
        deliver: Arc<dyn BatchDeliver>,
        last_seq: Arc<dyn Fn() -> u64 + Send + Sync>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let s = &self.settings;
        let mut reader = SeqReader::new(&s.audit_dir, cursor.seq);
        let mut pending: Option<Batch> = None;
        let mut failures = 0u32;
        loop {
            let upto = last_seq();
            self.set_lag(sink, upto, cursor.seq);
            if pending.is_none() {
                let (mut r, max) = (reader, s.batch_max);
                let (r2, got) = tokio::task::spawn_blocking(move || {
                    let got = r.next_batch(max, upto);
                    (r, got)
                })
                .await
                .map_err(|e| AlertsError::Cursor {
                    path: path.clone(),
                    message: format!("reader task failed: {e}"),
                })?;
                reader = r2;
                let records = got.map_err(|source| AlertsError::Audit {
                    sink: sink.to_owned(),
                    source,
                })?;
                pending = batch_of(records);
            }
            let Some(batch) = pending.clone() else {
                if sleep_or_stop(&shutdown, s.poll).await {
                    return Ok(());
                }
                continue;
            };
            let (d, name, b) = (deliver.clone(), sink.to_owned(), batch.clone());
            let result = tokio::task::spawn_blocking(move || d.deliver(&name, &b))
                .await
                .unwrap_or_else(|_| Err("the sink call panicked".into()));
            let delay = match result {
                Ok(()) => {
                    failures = 0;
                    self.metrics
                        .delivered
                        .with_label_values(&[sink])
                        .inc_by(batch.records.len() as u64);
                    None
                }
                Err(text) => {
                    let f = Failure::parse(&text);
                    failures += 1;
                    self.metrics.failures.with_label_values(&[sink]).inc();
                    {
                        let mut st = lock(&self.status);
                        let e = st.entry(sink.to_owned()).or_default();
                        e.failures = failures;
                        e.last_error = Some(f.message.clone());
                    }
                    if f.permanent {
                        tracing::error!(
                            sink,
                            first = batch.first_seq,
                            last = batch.last_seq,
                            "audit sink rejected records: {text}"
                        );
                        self.metrics
                            .rejected
                            .with_label_values(&[sink])
                            .inc_by(batch.records.len() as u64);
                        deliver.rejected(sink, &batch, &text);
                    } else {
                        tracing::warn!(
                            sink,
                            first = batch.first_seq,
                            failures,
                            "audit sink delivery failed, will retry: {text}"
                        );
                    }
                    Some((
                        f.permanent,
                        s.retry.delay(failures, jitter(), f.retry_after),
                    ))
                }
            };
            if !matches!(delay, Some((false, _))) {
                // Acknowledged (or dead-lettered and audited): advance the durable cursor.
                cursor = Cursor {
                    seq: batch.last_seq,
                    hash: batch.last_hash.clone(),
                };
                cursor.store(&path)?;
                pending = None;
                let mut st = lock(&self.status);
                let e = st.entry(sink.to_owned()).or_default();
                e.acked_seq = cursor.seq;
                if delay.is_none() {
                    e.failures = 0;
                }
            }
            self.set_lag(sink, last_seq(), cursor.seq);
            if let Some((_, d)) = delay {
                if sleep_or_stop(&shutdown, d).await {
                    return Ok(());
                }
            } else if shutdown.is_cancelled() {
                return Ok(());
            }
        }
    }

    fn set_lag(&self, sink: &str, upto: u64, acked: u64) {
        let lag = upto.saturating_sub(acked);
        self.metrics.lag.with_label_values(&[sink]).set(lag as i64);
        lock(&self.status).entry(sink.to_owned()).or_default().lag = lag;
    }
}

/// Sleeps for `d`; true when `shutdown` fired first.
async fn sleep_or_stop(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
    }
}

fn batch_of(records: Vec<Record>) -> Option<Batch> {
    let first = records.first()?.seq;
    let last = records.last()?;
    Some(Batch {
        first_seq: first,
        last_seq: last.seq,
        last_hash: last.hash.clone(),
        records,
    })
}
