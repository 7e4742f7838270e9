//! Prometheus metrics of the writer.

use prometheus::{Histogram, HistogramOpts, IntCounter, Registry};

use crate::error::Result;

/// The writer's metrics, registered in a caller-provided registry.
#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    pub records: IntCounter,
    pub write_failures: IntCounter,
    pub checkpoint_failures: IntCounter,
    pub batch_size: Histogram,
    pub fsync_seconds: Histogram,
    pub append_seconds: Histogram,
    pub durable_seconds: Histogram,
    pub write_seconds: Histogram,
}

impl Metrics {
    pub fn register(reg: &Registry) -> Result<Metrics> {
        let records = IntCounter::new(
            "tether_audit_records_total",
            "Audit records written durably (fdatasync done).",
        )?;
        let write_failures = IntCounter::new(
            "tether_audit_write_failures_total",
            "Audit batches whose write or fdatasync failed; their actions were refused.",
        )?;
        let checkpoint_failures = IntCounter::new(
            "tether_audit_checkpoint_failures_total",
            "Failed rewrites of the signed head checkpoint (the records themselves were durable).",
        )?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "tether_audit_batch_size",
                "Records per group-commit batch (one write + fdatasync each).",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
            ]),
        )?;
        let fsync_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tether_audit_fsync_seconds",
                "Duration of each fdatasync of an audit day file.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )?;
        let append_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tether_audit_append_seconds",
                "Time from an append to its record being durable, as the caller waits for it \
                 (queue, group-commit batch, write and fdatasync).",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01,
                0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )?;
        let durable_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tether_audit_durable_seconds",
                "Time from an append to its record being durable, as the writer sees it (queue, \
                 group-commit batch, write and fdatasync; without the wait until the caller runs \
                 again, which tether_audit_append_seconds includes).",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01,
                0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )?;
        let write_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tether_audit_write_seconds",
                "Duration of each batch's write to the day file (before its fdatasync).",
            )
            .buckets(vec![
                0.00001, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 1.0,
            ]),
        )?;
        reg.register(Box::new(records.clone()))?;
        reg.register(Box::new(write_failures.clone()))?;
        reg.register(Box::new(checkpoint_failures.clone()))?;
        reg.register(Box::new(batch_size.clone()))?;
        reg.register(Box::new(fsync_seconds.clone()))?;
        reg.register(Box::new(append_seconds.clone()))?;
        reg.register(Box::new(durable_seconds.clone()))?;
        reg.register(Box::new(write_seconds.clone()))?;
        Ok(Metrics {
            records,
            write_failures,
            checkpoint_failures,
            batch_size,
            fsync_seconds,
            append_seconds,
            durable_seconds,
            write_seconds,
        })
    }
}
