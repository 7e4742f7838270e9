//! Test plugin (audit-sink world): logs each batch through the host log as
//! `audit batch n=<count> seqs=<first>..<last> kinds=<kind,kind,...>`.
//! Fails delivery (Err) for a batch containing an event of kind `fail-me`.
use tether_plugin_sdk::audit::{AuditEvent, AuditSink, export_audit_sink};
use tether_plugin_sdk::host::log;

/// Records audit batches in the daemon log.
pub struct AuditRecorder;

impl AuditSink for AuditRecorder {
    fn deliver_batch(events: Vec<AuditEvent>) -> Result<(), String> {
        if events.iter().any(|e| e.kind == "fail-me") {
            return Err("audit-recorder refuses kind fail-me".into());
        }
        let first = events.first().map_or(0, |e| e.seq);
        let last = events.last().map_or(0, |e| e.seq);
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        log::info(&format!(
            "audit batch n={} seqs={first}..{last} kinds={}",
            events.len(),
            kinds.join(",")
        ));
        Ok(())
    }
}

export_audit_sink!(AuditRecorder);
