//! `syslog`: an audit sink that sends every audit record to a syslog receiver (rsyslog,
//! syslog-ng, a SIEM's collector) over TCP through the host's `tcp` import
//! (`tether:plugin@0.2.0`), one connection per batch, each message framed by RFC 6587 octet
//! counting (`LEN SP MSG`).
//!
//! * `format = "rfc5424"` (default): `<PRI>1 TIMESTAMP HOSTNAME tetherd - TYPE [tether@32473
//!   seq=… type=… user=… … first_seq=… last_seq=… last_hash=…] SUMMARY DATA-JSON`, facility 13
//!   (log audit), severity warning for failures and info otherwise.
//! * `format = "cef"`: the same RFC 5424 header and structured data with a CEF line as MSG
//!   (`CEF:0|Tether|tetherd|…`).
//!
//! Every line carries the host batch's seq range and the chain hash of its last record, so the
//! receiving side can prove nothing is missing. Settings: `host`, `port` (required; the host
//! must be in `allowed_hosts`), `format`, `hostname` (the HOSTNAME field, default `tetherd`).
//! A batch counts as delivered once all of it is written to the socket (TCP syslog has no
//! application acknowledgement); any error is retried by the daemon from the same seq.
//!
//! TLS (RFC 5425) is not supported: the host's `tcp` import has no TLS. Run a local relay
//! (e.g. rsyslog with `omfwd` + TLS, or stunnel) when the receiver is remote.
use tether_plugin_sdk::audit::{AuditEvent, AuditSink, BatchProof, batch_proof, export_audit_sink};
use tether_plugin_sdk::host::{config, tcp};
use tether_plugin_sdk::siem::{Context, cef, syslog};
use tether_plugin_sdk::sink;

/// Syslog over TCP.
pub struct Syslog;

/// Wire formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// RFC 5424 with structured data.
    Rfc5424,
    /// RFC 5424 header and structured data, CEF message.
    Cef,
}

/// The framed bytes for `events` (one octet-counted frame per record).
pub fn frames(
    events: &[AuditEvent],
    proof: &BatchProof,
    hostname: &str,
    format: Format,
) -> Vec<u8> {
    let ctx = Context {
        version: env!("CARGO_PKG_VERSION"),
        hostname,
    };
    let p = proof.as_siem();
    let mut out = Vec::new();
    for e in events {
        let data = e.data();
        let r = e.record(&data);
        let line = match format {
            Format::Rfc5424 => syslog::line(&r, &ctx, Some(&p)),
            Format::Cef => {
                // The RFC 5424 line's header and SD, with the CEF line as MSG.
                let full = syslog::line(&r, &ctx, Some(&p));
                let head_end = full.find("] ").map_or(full.len(), |i| i + 1);
                format!("{} {}", &full[..head_end], cef::line(&r, &ctx))
            }
        };
        out.extend_from_slice(&syslog::frame(&line));
    }
    out
}

fn deliver(events: Vec<AuditEvent>) -> Result<(), String> {
    let host = config::get("host")
        .ok_or_else(|| sink::permanent("syslog: set host and port in [plugin.config]"))?;
    let port: u16 = config::get("port")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| sink::permanent("syslog: set port (1-65535) in [plugin.config]"))?;
    let format = match config::get_or("format", "rfc5424").as_str() {
        "rfc5424" => Format::Rfc5424,
        "cef" => Format::Cef,
        other => {
            return Err(sink::permanent(format_args!(
                "syslog: format {other:?} is not rfc5424 or cef"
            )));
        }
    };
    let hostname = config::get_or("hostname", "tetherd");
    let proof = batch_proof(&events);
    let bytes = frames(&events, &proof, &hostname, format);
    let mut c = tcp::connect(&host, port).map_err(|e| match e {
        tcp::Error::NotAllowed(_) => sink::permanent(format_args!("syslog: {e}")),
        e => format!("syslog: connecting to {host}:{port}: {e}"),
    })?;
    c.send(&bytes).map_err(|e| match e {
        tcp::Error::TooLarge => format!(
            "syslog: {} bytes for seqs {}..{} exceed the plugin's max_request_bytes; raise it or lower [alerts] audit_batch_max",
            bytes.len(), proof.first_seq, proof.last_seq
        ),
        e => format!("syslog: sending to {host}:{port}: {e}"),
    })
}

impl AuditSink for Syslog {
    fn deliver_batch(events: Vec<AuditEvent>) -> Result<(), String> {
        if events.is_empty() {
            return Ok(());
        }
        deliver(events)
    }
}

export_audit_sink!(Syslog);

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, cmd: &str) -> AuditEvent {
        AuditEvent {
            seq,
            ts: "2026-11-27T16:49:48Z".into(),
            kind: "exec.denied".into(),
            actor_uid: 1000,
            actor_user: "ann".into(),
            actor_role: None,
            via: "cli".into(),
            host: Some("web1".into()),
            data_json: format!("{{\"command\":{cmd:?}}}"),
        }
    }

    #[test]
    fn frames_are_octet_counted_rfc5424_or_cef() {
        let proof = BatchProof {
            first_seq: 1,
            last_seq: 2,
            last_hash: "h]\"".into(),
        };
        let b = frames(
            &[ev(1, "a"), ev(2, "b|c=d")],
            &proof,
            "hub",
            Format::Rfc5424,
        );
        let s = String::from_utf8(b).unwrap();
        let (len, rest) = s.split_once(' ').unwrap();
        let first = &rest[..len.parse::<usize>().unwrap()];
        assert!(
            first.starts_with(
                "<108>1 2026-11-27T16:49:48Z hub tetherd - exec.denied [tether@32473 seq=\"1\""
            ),
            "{first}"
        );
        assert!(first.contains(r#"last_hash="h\]\"""#), "{first}");
        let c = String::from_utf8(frames(&[ev(2, "b|c=d")], &proof, "hub", Format::Cef)).unwrap();
        assert!(
            c.contains(r#"last_hash="h\]\""] CEF:0|Tether|tetherd|"#),
            "{c}"
        );
        assert!(c.contains(r"exec.denied on web1: b\|c=d|7|"), "{c}");
        assert!(c.contains(r#"msg={"command":"b|c\=d"}"#), "{c}");
    }
}
