//! `slack`: an alert sink that posts each alert to a Slack incoming webhook as a Block Kit
//! message: a header (severity and kind), the message, the alert's structured fields, and a
//! context line (host, severity). `text` carries a plain fallback for notifications.
//!
//! The webhook URL is itself a credential, so it lives in the vault: the secret named by
//! `config.secret` (default `slack-webhook-url`), granted in the manifest, and the URL's host in
//! `allowed_hosts` (`hooks.slack.com`). Answers map onto the daemon's retry rules: 2xx
//! delivered; 429/503 retried after Slack's `Retry-After`; other 4xx (`invalid_payload`,
//! `no_service`, ...) rejected for good (`permanent:`); anything else retried with backoff.
use serde_json::{Map, Value, json};
use tether_plugin_sdk::alerts::{Alert, AlertSink, export_alert_sink};
use tether_plugin_sdk::host::{config, http, secrets};
use tether_plugin_sdk::sink;

/// Slack Block Kit alerts.
pub struct Slack;

/// Slack allows at most 10 fields in a section block.
const MAX_FIELDS: usize = 10;
/// Slack allows at most 150 characters in a header's plain text.
const MAX_HEADER: usize = 150;

/// Escapes the three characters Slack's `mrkdwn` treats as control characters.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The Block Kit payload for one alert; `fields` is the alert's structured fields as a JSON object.
pub fn payload(
    kind: &str,
    severity: &str,
    host: Option<&str>,
    message: &str,
    fields: &Map<String, Value>,
) -> Value {
    let mut header = format!("[{}] {kind}", severity.to_uppercase());
    if header.chars().count() > MAX_HEADER {
        header = header.chars().take(MAX_HEADER - 1).collect::<String>() + "…";
    }
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": header}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": escape(message)}}),
    ];
    let shown: Vec<Value> = fields
        .iter()
        .take(MAX_FIELDS)
        .map(|(k, v)| {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            json!({"type": "mrkdwn", "text": format!("*{}*\n{}", escape(k), escape(&v))})
        })
        .collect();
    if !shown.is_empty() {
        blocks.push(json!({"type": "section", "fields": shown}));
    }
    blocks.push(json!({"type": "context", "elements": [{
        "type": "mrkdwn",
        "text": format!("host: {} · severity: {severity} · tether", escape(host.unwrap_or("-"))),
    }]}));
    let fallback = match host {
        Some(h) => format!("[{severity}] {kind} on {h}: {message}"),
        None => format!("[{severity}] {kind}: {message}"),
    };
    json!({"text": escape(&fallback), "blocks": blocks})
}

impl AlertSink for Slack {
    fn deliver(alert: Alert) -> Result<(), String> {
        let name = config::get_or("secret", "slack-webhook-url");
        let secret = secrets::get(&name).ok_or_else(|| {
            sink::permanent(format_args!(
                "slack: secret {name:?} (the webhook URL) is not granted or not set"
            ))
        })?;
        let url = std::str::from_utf8(secret.expose())
            .map_err(|_| {
                sink::permanent(format_args!("slack: secret {name:?} is not a UTF-8 URL"))
            })?
            .trim()
            .to_owned();
        let fields = tether_plugin_sdk::alerts::fields();
        let body = payload(
            &alert.kind,
            alert.severity.as_str(),
            alert.host.as_deref(),
            &alert.message,
            &fields,
        );
        let req = http::Request::post(&url, body.to_string().into_bytes())
            .header("content-type", "application/json");
        // The error names neither the URL nor the secret: the URL is the credential.
        let resp = http::send(&req).map_err(|e| format!("slack: {e}"))?;
        sink::http_outcome(&resp, "slack")
    }
}

export_alert_sink!(Slack);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_block_kit_with_escaped_text_and_at_most_ten_fields() {
        let mut fields = Map::new();
        for i in 0..12 {
            fields.insert(format!("k{i:02}"), Value::String(format!("<v{i}>")));
        }
        let p = payload("exec_failure", "critical", Some("web1"), "a & b", &fields);
        let blocks = p["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["text"], "[CRITICAL] exec_failure");
        assert_eq!(blocks[1]["text"]["text"], "a &amp; b");
        let f = blocks[2]["fields"].as_array().unwrap();
        assert_eq!(f.len(), 10);
        assert_eq!(f[0]["text"], "*k00*\n&lt;v0&gt;");
        assert_eq!(blocks[3]["type"], "context");
        assert_eq!(p["text"], "[critical] exec_failure on web1: a &amp; b");
        let long = payload(&"x".repeat(400), "info", None, "m", &Map::new());
        assert_eq!(
            long["blocks"][0]["text"]["text"]
                .as_str()
                .unwrap()
                .chars()
                .count(),
            150
        );
        assert_eq!(long["blocks"].as_array().unwrap().len(), 3);
    }
}
