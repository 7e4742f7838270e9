use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// The control API's own metrics.
#[derive(Clone, Debug)]
pub struct ControlMetrics {
    /// `tether_control_requests_total{route,code}`; unknown paths count under route `unknown`.
    pub requests: IntCounterVec,
    /// `tether_auth_denials_total`: callers refused for lack of a role or permission.
    pub auth_denials: IntCounter,
    /// `tether_auth_denials_unrecorded_total`: denials aggregated into a later `auth.denied`
    /// record (its `data.suppressed`) instead of writing one record each.
    pub auth_denials_unrecorded: IntCounter,
    /// `tether_control_audit_failures_total`: events the control API could not record.
    pub audit_failures: IntCounter,
    /// `tether_control_connections_refused_total{limit}`: connections closed at once because
    /// their uid (`per_uid`) or the daemon (`total`) was at its cap.
    pub connections_refused: IntCounterVec,
    /// `tether_control_connections_admitted_total`: connections accepted and served.
    pub connections_admitted: IntCounter,
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
        let auth_denials_unrecorded = IntCounter::new(
            "tether_auth_denials_unrecorded_total",
            "Auth denials over the per-uid record rate, counted in the next auth.denied record instead of one record each",
        )?;
        let audit_failures = IntCounter::new(
            "tether_control_audit_failures_total",
            "Control API events whose audit record could not be written (each raises audit_write_failed)",
        )?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "tether_control_connections_refused_total",
                "Control connections closed at once because a connection cap was reached",
            ),
            &["limit"],
        )?;
        let connections_admitted = IntCounter::new(
            "tether_control_connections_admitted_total",
            "Control connections accepted under the connection caps",
        )?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(connections_admitted.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(auth_denials.clone()))?;
        registry.register(Box::new(auth_denials_unrecorded.clone()))?;
        registry.register(Box::new(audit_failures.clone()))?;
        Ok(ControlMetrics {
            requests,
            auth_denials,
            auth_denials_unrecorded,
            audit_failures,
            connections_refused,
            connections_admitted,
        })
    }
}
