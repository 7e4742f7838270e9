use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// The control API's own metrics.
#[derive(Clone, Debug)]
pub struct ControlMetrics {
    /// `tether_control_requests_total{route,code}`; unknown paths count under route `unknown`.
    pub requests: IntCounterVec,
    /// `tether_auth_denials_total`: callers refused for lack of a role or permission.
    pub auth_denials: IntCounter,
}

impl ControlMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "tether_control_requests_total",
                "Control API requests by route and status code",
            ),
            &["route", "code"],
        )?;
        let auth_denials = IntCounter::new(
            "tether_auth_denials_total",
            "Control API callers refused for lack of a role or permission",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(auth_denials.clone()))?;
        Ok(ControlMetrics {
            requests,
            auth_denials,
        })
    }
}
