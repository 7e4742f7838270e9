//! `splunk-hec`: an audit sink that streams every audit record to a Splunk HTTP Event Collector.
//!
//! * Each record becomes one HEC event envelope (`{"time","host","source","sourcetype",
//!   "event":{the record},"fields":{…}}`); `fields` carries the record's `tether_seq` and
//!   `tether_type` and the host batch's `tether_first_seq`, `tether_last_seq` and
//!   `tether_last_hash` (the chain hash of its last record), so a search can prove nothing is
//!   missing.
//! * Envelopes are POSTed to `{url}/services/collector/event` in requests of at most
//!   `batch_max` (default 100) events and `max_body_bytes` (default 60000; keep it under the
//!   manifest's `max_request_bytes`), with `Authorization: Splunk <token>`; the token is the
//!   vault secret named by `secret` (default `splunk-hec-token`), granted in the manifest.
//! * Indexer acknowledgement: every request carries `X-Splunk-Request-Channel` (the `channel`
//!   setting, or a GUID derived from the token). When the collector answers with an `ackId`
//!   (acknowledgement enabled on the token), the batch counts as delivered only once
//!   `{url}/services/collector/ack` says every ackId is indexed; until then the call fails as
//!   retryable and the daemon's cursor does not move. The next attempt of the same batch polls
//!   the pending ackIds first and resends only when they are older than `ack_resend_secs`
//!   (default 120): duplicates stay within the unacknowledged window.
//! * Answers: 2xx delivered; 400/413 (`Invalid data format`, event too large) reject the batch
//!   for good (`permanent:`: the daemon audits it as `audit_sink.rejected` and moves on);
//!   401/403 (token) and 5xx are retried (a fixed token resumes the stream with nothing lost),
//!   429/503 after `Retry-After`.
use std::sync::Mutex;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tether_plugin_sdk::audit::{AuditEvent, AuditSink, BatchProof, batch_proof, export_audit_sink};
use tether_plugin_sdk::host::{clock, config, http, secrets};
use tether_plugin_sdk::siem::hec;
use tether_plugin_sdk::sink;

/// Splunk HEC audit sink.
pub struct SplunkHec;

/// Requests sent for a batch whose indexer acknowledgement is still outstanding.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    proof: BatchProof,
    acks: Vec<u64>,
    sent_ms: u64,
}

/// Kept across calls in this instance (the host reuses it until it traps or reloads).
static PENDING: Mutex<Option<Pending>> = Mutex::new(None);

/// A GUID (8-4-4-4-12 hex) derived from `seed`, for `X-Splunk-Request-Channel`.
pub fn channel_from(seed: &[u8]) -> String {
    let d = Sha256::digest(seed);
    let h: String = d.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// The envelopes of `events`, one JSON text each.
pub fn envelopes(
    events: &[AuditEvent],
    proof: &BatchProof,
    host: &str,
    sourcetype: &str,
    index: Option<&str>,
) -> Vec<Vec<u8>> {
    let siem_proof = proof.as_siem();
    events
        .iter()
        .map(|e| {
            let data = e.data();
            let r = e.record(&data);
            let mut v = hec::envelope(&r, None, host, sourcetype, &siem_proof);
            if let Some(i) = index {
                v["index"] = Value::String(i.to_owned());
            }
            v.to_string().into_bytes()
        })
        .collect()
}

/// What an HEC answer means: `Ok(Some(ackId))`, `Ok(None)` (accepted, acknowledgement off), or
/// the delivery-contract error.
pub fn event_answer(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
) -> Result<Option<u64>, String> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = v.get("text").and_then(Value::as_str).unwrap_or("");
    match status {
        200..=299 => Ok(v.get("ackId").and_then(Value::as_u64)),
        400 | 413 => Err(sink::permanent(format_args!(
            "splunk-hec rejected the batch: http {status} {text}"
        ))),
        401 | 403 => Err(format!(
            "splunk-hec refused the token (http {status} {text}); fix the HEC token secret, delivery resumes from the acknowledged seq"
        )),
        _ => sink::status_outcome(status, retry_after, "splunk-hec").map(|()| None),
    }
}

/// Which of `acks` the ack endpoint's answer (`{"acks":{"0":true,...}}`) reports as indexed.
pub fn acked(body: &[u8], acks: &[u64]) -> Vec<bool> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    acks.iter()
        .map(|a| v["acks"][a.to_string()].as_bool() == Some(true))
        .collect()
}

struct Settings {
    base: String,
    token: secrets::Secret,
    channel: String,
}

fn settings() -> Result<Settings, String> {
    let url = config::get("url").ok_or_else(|| {
        sink::permanent(
            "splunk-hec: set url in [plugin.config] (e.g. https://splunk.example.com:8088)",
        )
    })?;
    let name = config::get_or("secret", "splunk-hec-token");
    let token = secrets::get(&name).ok_or_else(|| {
        format!("splunk-hec: secret {name:?} (the HEC token) is not granted or not set; `tether secret set {name}`")
    })?;
    let channel = config::get("channel").unwrap_or_else(|| channel_from(token.expose()));
    Ok(Settings {
        base: url.trim_end_matches('/').to_owned(),
        token,
        channel,
    })
}

fn request(s: &Settings, path: &str, body: Vec<u8>) -> http::Request {
    let auth = format!("Splunk {}", String::from_utf8_lossy(s.token.expose()));
    http::Request::post(&format!("{}{path}", s.base), body)
        .header("content-type", "application/json")
        .header("authorization", &auth)
        .header("x-splunk-request-channel", &s.channel)
}

/// Polls the ack endpoint for `acks`; true when all are indexed.
fn poll(s: &Settings, acks: &[u64]) -> Result<bool, String> {
    let body = serde_json::json!({ "acks": acks }).to_string().into_bytes();
    let resp = http::send(&request(s, "/services/collector/ack", body))
        .map_err(|e| format!("splunk-hec ack: {e}"))?;
    sink::status_outcome(
        resp.status,
        resp.header("retry-after"),
        "splunk-hec ack endpoint",
    )?;
    Ok(acked(&resp.body, acks).iter().all(|a| *a))
}

fn deliver(events: Vec<AuditEvent>) -> Result<(), String> {
    let s = settings()?;
    let proof = batch_proof(&events);
    let now = clock::now_unix_ms();
    let resend_ms = config::get("ack_resend_secs")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(120)
        * 1000;
    let polls: usize = config::get("ack_polls")
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    // A retry of a batch already sent: ask about its acks before sending it again.
    let pending = PENDING
        .lock()
        .map_err(|_| "splunk-hec: state poisoned".to_owned())?
        .clone();
    if let Some(p) = pending.filter(|p| p.proof == proof) {
        if poll(&s, &p.acks)? {
            *PENDING
                .lock()
                .map_err(|_| "splunk-hec: state poisoned".to_owned())? = None;
            return Ok(());
        }
        if now.saturating_sub(p.sent_ms) < resend_ms {
            return Err(format!(
                "splunk-hec: seqs {}..{} sent, waiting for the indexer acknowledgement of ackIds {:?}",
                proof.first_seq, proof.last_seq, p.acks
            ));
        }
    }
    let host = config::get_or("host", "tetherd");
    let sourcetype = config::get_or("sourcetype", "tether:audit");
    let index = config::get("index");
    let batch_max: usize = config::get("batch_max")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        .clamp(1, 100);
    let max_bytes: usize = config::get("max_body_bytes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(60_000);
    let items = envelopes(&events, &proof, &host, &sourcetype, index.as_deref());
    let bodies = sink::pack(&items, b"\n", batch_max, max_bytes).map_err(|i| {
        sink::permanent(format_args!(
            "splunk-hec: record seq {} is larger than max_body_bytes ({max_bytes})",
            events.get(i).map_or(0, |e| e.seq)
        ))
    })?;
    let mut acks = Vec::new();
    for body in bodies {
        let resp = http::send(&request(&s, "/services/collector/event", body))
            .map_err(|e| format!("splunk-hec: {e}"))?;
        if let Some(id) = event_answer(resp.status, resp.header("retry-after"), &resp.body)? {
            acks.push(id);
        }
    }
    if acks.is_empty() {
        return Ok(());
    }
    for _ in 0..polls.max(1) {
        if poll(&s, &acks)? {
            return Ok(());
        }
    }
    let msg = format!(
        "splunk-hec: seqs {}..{} sent, waiting for the indexer acknowledgement of ackIds {acks:?}",
        proof.first_seq, proof.last_seq
    );
    *PENDING
        .lock()
        .map_err(|_| "splunk-hec: state poisoned".to_owned())? = Some(Pending {
        proof,
        acks,
        sent_ms: now,
    });
    Err(msg)
}

impl AuditSink for SplunkHec {
    fn deliver_batch(events: Vec<AuditEvent>) -> Result<(), String> {
        if events.is_empty() {
            return Ok(());
        }
        deliver(events)
    }
}

export_audit_sink!(SplunkHec);

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64) -> AuditEvent {
        AuditEvent {
            seq,
            ts: "2026-11-27T16:49:48Z".into(),
            kind: "exec.requested".into(),
            actor_uid: 1000,
            actor_user: "ann".into(),
            actor_role: Some("operator".into()),
            via: "cli".into(),
            host: Some("web1".into()),
            data_json: r#"{"command":"uptime"}"#.into(),
        }
    }

    #[test]
    fn envelopes_carry_the_record_and_the_batch_proof() {
        let proof = BatchProof {
            first_seq: 4,
            last_seq: 5,
            last_hash: "ab".into(),
        };
        let e = envelopes(&[ev(4), ev(5)], &proof, "hub", "tether:audit", Some("sec"));
        let v: Value = serde_json::from_slice(&e[1]).unwrap();
        assert_eq!(v["event"]["seq"], 5);
        assert_eq!(v["event"]["data"]["command"], "uptime");
        assert_eq!(v["time"], 1_795_798_188.0);
        assert_eq!(v["host"], "web1");
        assert_eq!(v["index"], "sec");
        assert_eq!(v["fields"]["tether_first_seq"], "4");
        assert_eq!(v["fields"]["tether_last_hash"], "ab");
    }

    #[test]
    fn answers_map_onto_ack_ids_and_the_delivery_contract() {
        assert_eq!(
            event_answer(200, None, br#"{"text":"Success","code":0,"ackId":7}"#),
            Ok(Some(7))
        );
        assert_eq!(
            event_answer(200, None, br#"{"text":"Success","code":0}"#),
            Ok(None)
        );
        assert!(
            event_answer(400, None, br#"{"text":"Invalid data format","code":6}"#)
                .unwrap_err()
                .starts_with("permanent:")
        );
        let e = event_answer(403, None, br#"{"text":"Invalid token","code":4}"#).unwrap_err();
        assert!(!e.starts_with("permanent:") && e.contains("token"), "{e}");
        assert_eq!(
            event_answer(503, Some("3"), b"").unwrap_err(),
            "splunk-hec answered http 503 retry-after=3"
        );
        assert_eq!(
            acked(br#"{"acks":{"1":true,"2":false}}"#, &[1, 2, 3]),
            [true, false, false]
        );
        let c = channel_from(b"token");
        assert_eq!(c.len(), 36);
        assert_eq!(c.matches('-').count(), 4);
    }
}
