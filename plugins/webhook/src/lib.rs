//! `webhook`: an alert sink that POSTs each alert as JSON to `config.url`, signed so the receiver
//! can verify it and reject replays:
//!
//! * `X-Tether-Timestamp: <unix seconds>`
//! * `X-Tether-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`
//!
//! The secret is the vault secret named by `config.secret` (default `webhook-secret`), granted in
//! the manifest. Answers map onto the daemon's retry rules: 2xx delivered; 429/503 retried after
//! the receiver's `Retry-After`; other 4xx rejected for good (`permanent:`); anything else retried
//! with backoff.
use tether_plugin_sdk::alerts::{Alert, AlertSink, export_alert_sink};
use tether_plugin_sdk::host::{clock, config, http, secrets};
use tether_plugin_sdk::sink::{self, signature};

/// Signed JSON webhooks.
pub struct Webhook;

/// Escapes a string as a JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl AlertSink for Webhook {
    fn deliver(alert: Alert) -> Result<(), String> {
        let url = config::get("url").ok_or("webhook: set url in [plugin.config]")?;
        let secret_name = config::get_or("secret", "webhook-secret");
        let secret = secrets::get(&secret_name).ok_or_else(|| {
            sink::permanent(format_args!(
                "webhook: secret {secret_name:?} is not granted or not set"
            ))
        })?;
        let fields = config::get("tether.alert.fields").unwrap_or_else(|| "{}".into());
        let body = format!(
            "{{\"kind\":{},\"severity\":{},\"host\":{},\"message\":{},\"fields\":{}}}",
            json_str(&alert.kind),
            json_str(alert.severity.as_str()),
            alert.host.as_deref().map_or("null".to_owned(), json_str),
            json_str(&alert.message),
            fields
        );
        let ts = (clock::now_unix_ms() / 1000).to_string();
        let sig = signature(secret.expose(), &ts, body.as_bytes());
        let req = http::Request::post(&url, body.into_bytes())
            .header("content-type", "application/json")
            .header("x-tether-timestamp", &ts)
            .header("x-tether-signature", &sig);
        let resp = http::send(&req).map_err(|e| format!("webhook: {e}"))?;
        sink::http_outcome(&resp, "webhook")
    }
}

export_alert_sink!(Webhook);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\n"), "\"a\\\"b\\n\"");
    }
}
