//! Test plugin: sends `GET <config url>` through `host::http` and reports the outcome as a deny
//! reason, so tests can read what the host answered:
//! `status=200 body=...`, `error=not allowed: ...`, `error=timeout`, `error=too large`,
//! `error=failed: ...`, or `error=no url configured`.
use tether_plugin_sdk::host::{config, http};
use tether_plugin_sdk::policy::{PolicyHook, Request, Verdict, export_policy};

/// Probes the host's HTTP import.
pub struct HttpProbe;

impl PolicyHook for HttpProbe {
    fn evaluate(_req: Request) -> Verdict {
        let Some(url) = config::get("url") else {
            return Verdict::deny("error=no url configured");
        };
        match http::send(&http::Request::get(&url)) {
            Ok(resp) => Verdict::deny(format!("status={} body={}", resp.status, resp.text())),
            Err(e) => Verdict::deny(format!("error={e}")),
        }
    }
}

export_policy!(HttpProbe);
