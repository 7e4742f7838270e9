//! The live policy of a daemon: atomic swap on reload, metrics, alerts.
use std::sync::{Arc, RwLock};
use std::time::Instant;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use tether_model::{Alert, AlertSink, Severity};

use crate::{Decision, Policy, PolicyError, PolicySpec, Request, Verdict};

/// Alert kind raised when a reload fails and the old policy stays in force.
pub const ALERT_REBUILD_FAILED: &str = "policy_rebuild_failed";

/// Holds the current [`Policy`] and swaps it atomically on reload. Evaluations in flight keep
/// the `Arc<Policy>` they started with; new ones see the new policy.
pub struct PolicyEngine {
    current: RwLock<Arc<Policy>>,
    alerts: Arc<dyn AlertSink>,
    /// Indexed like [`Verdict::ALL`].
    decisions: [IntCounter; 4],
    latency: Histogram,
    reloads_failed: IntCounter,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("policy", &self.policy().mode())
            .finish_non_exhaustive()
    }
}

fn metrics_err(e: prometheus::Error) -> PolicyError {
    PolicyError::Metrics(e.to_string())
}

impl PolicyEngine {
    /// Starts serving `policy`, registering into `registry`:
    /// `tether_policy_decisions_total{verdict}`, `tether_policy_evaluation_seconds` (histogram)
    /// and `tether_policy_reload_failures_total`. Failed reloads are raised on `alerts`.
    pub fn new(
        policy: Policy,
        registry: &Registry,
        alerts: Arc<dyn AlertSink>,
    ) -> Result<Self, PolicyError> {
        let by_verdict = IntCounterVec::new(
            Opts::new(
                "tether_policy_decisions_total",
                "Policy decisions, by verdict.",
            ),
            &["verdict"],
        )
        .map_err(metrics_err)?;
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "tether_policy_evaluation_seconds",
                "Time to evaluate one request against the policy.",
            )
            .buckets(vec![
                1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2,
            ]),
        )
        .map_err(metrics_err)?;
        let reloads_failed = IntCounter::new(
            "tether_policy_reload_failures_total",
            "Policy reloads refused because the new policy was invalid (the old one stayed).",
        )
        .map_err(metrics_err)?;
        registry
            .register(Box::new(by_verdict.clone()))
            .map_err(metrics_err)?;
        registry
            .register(Box::new(latency.clone()))
            .map_err(metrics_err)?;
        registry
            .register(Box::new(reloads_failed.clone()))
            .map_err(metrics_err)?;
        let decisions = Verdict::ALL.map(|v| by_verdict.with_label_values(&[v.as_str()]));
        Ok(PolicyEngine {
            current: RwLock::new(Arc::new(policy)),
            alerts,
            decisions,
            latency,
            reloads_failed,
        })
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            // A panic while holding the lock can't leave the Arc half-written.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Evaluates `req` against the policy in force and records the metrics.
    pub fn evaluate(&self, req: &Request) -> Decision {
        let policy = self.policy();
        let started = Instant::now();
        let decision = policy.evaluate(req);
        self.latency.observe(started.elapsed().as_secs_f64());
        let idx = Verdict::ALL
            .iter()
            .position(|v| *v == decision.verdict)
            .unwrap_or(0);
        self.decisions[idx].inc();
        decision
    }

    /// Compiles `spec` and swaps it in. On error the old policy stays in force, a
    /// `policy_rebuild_failed` alert is raised and the error is returned (for the caller to audit).
    pub fn reload(&self, spec: &PolicySpec) -> Result<(), PolicyError> {
        match Policy::compile(spec) {
            Ok(p) => {
                self.swap(p);
                Ok(())
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Like [`reload`](Self::reload) for the text of a standalone `policy.toml`; a parse
    /// error is handled like a compile error.
    pub fn reload_toml(&self, text: &str) -> Result<(), PolicyError> {
        match PolicySpec::from_toml_str(text) {
            Ok(spec) => self.reload(&spec),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Puts an already compiled policy in force (for callers that validate, record the change,
    /// then apply it).
    pub fn swap(&self, p: Policy) {
        let new = Arc::new(p);
        match self.current.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }

    fn failed(&self, e: PolicyError) -> PolicyError {
        self.reloads_failed.inc();
        self.alerts.raise(Alert::new(
            ALERT_REBUILD_FAILED,
            Severity::Warning,
            format!("policy reload refused, the previous policy stays in force: {e}"),
        ));
        e
    }
}
