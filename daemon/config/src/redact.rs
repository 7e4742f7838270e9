use serde::Serialize;
use serde_json::Value;

/// Key names whose values are secrets wherever they appear. Later config sections follow this
/// naming convention (`*_token`, `*_secret`, `*_password`, `*_key`, `webhook_url`) so that
/// `tether config show` never prints them.
const SECRET_SUFFIXES: [&str; 7] = [
    "token",
    "secret",
    "password",
    "private_key",
    "hmac_key",
    "webhook_url",
    "api_key",
];

/// The config as JSON with every secret-looking value replaced by `"[redacted]"`.
pub fn redacted_json<T: Serialize>(config: &T) -> Value {
    let mut value = serde_json::to_value(config).unwrap_or(Value::Null);
    redact(&mut value);
    value
}

fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                let key = key.to_ascii_lowercase();
                if SECRET_SUFFIXES.iter().any(|s| key.ends_with(s)) && !v.is_null() {
                    *v = Value::String("[redacted]".to_owned());
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_replaced_at_any_depth() {
        let v = serde_json::json!({
            "a": {"slack_webhook_url": "https://hooks.example/abc", "name": "x"},
            "list": [{"api_token": "t0ps3cret"}],
            "invite_hmac_key": "k",
        });
        let out = redacted_json(&v).to_string();
        assert!(
            !out.contains("t0ps3cret") && !out.contains("hooks.example") && !out.contains("\"k\"")
        );
        assert!(out.contains("\"name\":\"x\""));
    }
}
