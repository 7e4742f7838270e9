//! Test plugin: sends `GET <config url>` through `host::http` and reports the outcome as a deny
//! reason, so tests can read what the host answered:
//! `status=200 body=...`, `error=not allowed: ...`, `error=timeout`, `error=too large`,
//! `error=failed: ...`, or `error=no url configured`. Config `headers` (optional) adds request
//! headers, `Name: value` separated by `\n`, to probe what the host lets a plugin set.
use tether_plugin_sdk::host::{config, http};
use tether_plugin_sdk::policy::{PolicyHook, Request, Verdict, export_policy};

/// Probes the host's HTTP import.
pub struct HttpProbe;

impl PolicyHook for HttpProbe {
    fn evaluate(_req: Request) -> Verdict {
        let Some(url) = config::get("url") else {
            return Verdict::deny("error=no url configured");
        };
        let mut request = http::Request::get(&url);
        if let Some(headers) = config::get("headers") {
            for line in headers.split('\n') {
                if let Some((name, value)) = line.split_once(':') {
                    request = request.header(name.trim(), value.trim());
                }
            }
        }
        match http::send(&request) {
            Ok(resp) => Verdict::deny(format!("status={} body={}", resp.status, resp.text())),
            Err(e) => Verdict::deny(format!("error={e}")),
        }
    }
}

export_policy!(HttpProbe);
