//! `[metrics]`: the optional HTTP listener Prometheus scrapes (it cannot scrape a Unix socket).

use serde::{Deserialize, Serialize};

/// `[metrics]`: off unless `listen` is set. The listener serves only `/metrics`, `/healthz` and
/// `/readyz` — never a `/v1` route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// TCP address to serve on, e.g. `127.0.0.1:9120`. Unset: no listener (the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The name of a vault secret (`tether secret set NAME`) holding a bearer token; when set,
    /// `/metrics` answers only requests with `Authorization: Bearer TOKEN` (compared in
    /// constant time). `/healthz` and `/readyz` stay open: they reveal nothing but liveness.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_name: Option<String>,
}

impl MetricsConfig {
    /// The parsed listen address, when set and valid.
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.listen.as_deref().and_then(|l| l.parse().ok())
    }

    /// Checks the section; the error names the key and what to write instead.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(listen) = &self.listen
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err((
                "metrics.listen",
                format!("{listen:?} is not an IP:port address like \"127.0.0.1:9120\""),
            ));
        }
        if let Some(name) = &self.token_name {
            tether_model::check_secret_name(name).map_err(|reason| {
                (
                    "metrics.token_name",
                    format!("invalid secret name {name:?}: {reason}"),
                )
            })?;
            if self.listen.is_none() {
                return Err((
                    "metrics.token_name",
                    "is set but metrics.listen is not; set the listen address or remove it"
                        .to_owned(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::MetricsConfig;

    #[test]
    fn off_by_default_and_checked_when_set() {
        assert_eq!(MetricsConfig::default().validate(), Ok(()));
        assert_eq!(MetricsConfig::default().listen_addr(), None);
        let ok = MetricsConfig {
            listen: Some("127.0.0.1:9120".to_owned()),
            token_name: Some("metrics-token".to_owned()),
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = MetricsConfig {
            listen: Some("localhost".to_owned()),
            token_name: None,
        };
        assert_eq!(bad.validate().map_err(|e| e.0), Err("metrics.listen"));
        let orphan = MetricsConfig {
            listen: None,
            token_name: Some("t".to_owned()),
        };
        assert_eq!(
            orphan.validate().map_err(|e| e.0),
            Err("metrics.token_name")
        );
    }
}
