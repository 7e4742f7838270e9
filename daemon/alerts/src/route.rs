//! [`Router`]: which sinks get an alert, and the cool-down per (category, host) (sans-IO).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tether_model::{Alert, Severity};

use crate::error::{AlertsError, Result};

/// One `[[alerts.route]]`: alerts of these categories at or above this severity go to these sinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Category patterns: an exact kind (`host_offline`), a prefix ending in `*` (`host_*`), or
    /// `*`. Empty means every category.
    pub categories: Vec<String>,
    /// The lowest severity routed.
    pub min_severity: Severity,
    /// Sink (alert-sink plugin) names.
    pub sinks: Vec<String>,
}

impl Route {
    fn matches(&self, alert: &Alert) -> bool {
        alert.severity >= self.min_severity
            && (self.categories.is_empty()
                || self.categories.iter().any(|p| match p.strip_suffix('*') {
                    Some(prefix) => alert.kind.starts_with(prefix),
                    None => *p == alert.kind,
                }))
    }
}

/// What the router decided for one alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Send it to these sinks (possibly none); `suppressed` repeats of it were held back by the
    /// cool-down since the last one sent.
    Send {
        /// Sink names, each once, in route order.
        sinks: Vec<String>,
        /// Repeats suppressed since the previous one of this (category, host) went out.
        suppressed: u64,
    },
    /// A repeat within the cool-down: not sent, counted (this is the `repeats`-th).
    Suppressed {
        /// Repeats suppressed so far in this cool-down window.
        repeats: u64,
    },
}

struct Window {
    sent_at: Instant,
    suppressed: u64,
}

/// Routes alerts to sinks and applies the cool-down.
pub struct Router {
    routes: Vec<Route>,
    cooldown: Duration,
    windows: HashMap<(String, Option<String>), Window>,
}

/// Cool-down windows kept before old ones are pruned.
const MAX_WINDOWS: usize = 4096;

impl Router {
    /// A router over `routes` (checked: each names at least one sink, patterns are `*` only at
    /// the end) with a cool-down per (category, host). A zero cool-down sends every alert.
    pub fn new(routes: Vec<Route>, cooldown: Duration) -> Result<Router> {
        for (index, r) in routes.iter().enumerate() {
            if r.sinks.is_empty() || r.sinks.iter().any(|s| s.trim().is_empty()) {
                return Err(AlertsError::Route {
                    index,
                    message: "`sinks` must name at least one alert-sink plugin".into(),
                });
            }
            if let Some(p) = r
                .categories
                .iter()
                .find(|p| p.is_empty() || p.trim_end_matches('*').contains('*'))
            {
                return Err(AlertsError::Route {
                    index,
                    message: format!(
                        "category {p:?}: use a kind (host_offline), a prefix ending in * (host_*) or *"
                    ),
                });
            }
        }
        Ok(Router {
            routes,
            cooldown,
            windows: HashMap::new(),
        })
    }

    /// Replaces the routes and the cool-down (a live reload), checked like [`Router::new`]; on
    /// an error nothing changes. The cool-down windows and their suppressed counts are kept, so
    /// a reload neither re-sends a repeat nor loses a count.
    pub fn reconfigure(&mut self, routes: Vec<Route>, cooldown: Duration) -> Result<()> {
        let checked = Router::new(routes, cooldown)?;
        self.routes = checked.routes;
        self.cooldown = cooldown;
        Ok(())
    }

    /// The configured routes.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Every sink named by a route, each once.
    pub fn sinks(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in self.routes.iter().flat_map(|r| &r.sinks) {
            if !out.contains(s) {
                out.push(s.clone());
            }
        }
        out
    }

    /// Decides for `alert` at `now`: suppressed (a repeat of the same category and host within
    /// the cool-down), or sent to the matching routes' sinks with the count of repeats held back
    /// since the last one sent.
    pub fn admit(&mut self, alert: &Alert, now: Instant) -> Admission {
        let key = (alert.kind.clone(), alert.host.clone());
        let mut suppressed = 0;
        if !self.cooldown.is_zero() {
            if let Some(w) = self.windows.get_mut(&key) {
                if now.saturating_duration_since(w.sent_at) < self.cooldown {
                    w.suppressed += 1;
                    return Admission::Suppressed {
                        repeats: w.suppressed,
                    };
                }
                suppressed = w.suppressed;
            }
            if self.windows.len() >= MAX_WINDOWS {
                let cooldown = self.cooldown;
                // Expired windows only matter for their suppressed count; keep those with one.
                self.windows.retain(|_, w| {
                    now.saturating_duration_since(w.sent_at) < cooldown || w.suppressed > 0
                });
            }
            self.windows.insert(
                key,
                Window {
                    sent_at: now,
                    suppressed: 0,
                },
            );
        }
        let mut sinks: Vec<String> = Vec::new();
        for r in self.routes.iter().filter(|r| r.matches(alert)) {
            for s in &r.sinks {
                if !sinks.contains(s) {
                    sinks.push(s.clone());
                }
            }
        }
        Admission::Send { sinks, suppressed }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn route(cats: &[&str], min: Severity, sinks: &[&str]) -> Route {
        Route {
            categories: cats.iter().map(|s| s.to_string()).collect(),
            min_severity: min,
            sinks: sinks.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn routes_by_category_pattern_and_minimum_severity() {
        let mut r = Router::new(
            vec![
                route(&["host_*"], Severity::Warning, &["slack"]),
                route(&[], Severity::Critical, &["pager", "slack"]),
                route(&["config_change"], Severity::Info, &["webhook"]),
            ],
            Duration::ZERO,
        )
        .unwrap();
        let now = Instant::now();
        let send = |r: &mut Router, kind: &str, sev| match r.admit(&Alert::new(kind, sev, "m"), now)
        {
            Admission::Send { sinks, .. } => sinks,
            other => panic!("{other:?}"),
        };
        assert_eq!(send(&mut r, "host_offline", Severity::Warning), ["slack"]);
        assert!(send(&mut r, "host_online", Severity::Info).is_empty());
        assert_eq!(
            send(&mut r, "host_offline", Severity::Critical),
            ["slack", "pager"]
        );
        assert_eq!(
            send(&mut r, "audit_write_failed", Severity::Critical),
            ["pager", "slack"]
        );
        assert_eq!(send(&mut r, "config_change", Severity::Info), ["webhook"]);
        assert_eq!(r.sinks(), ["slack", "pager", "webhook"]);
    }

    #[test]
    fn cooldown_per_category_and_host_counts_suppressed_repeats() {
        let mut r = Router::new(
            vec![route(&["*"], Severity::Info, &["s"])],
            Duration::from_secs(300),
        )
        .unwrap();
        let t0 = Instant::now();
        let a = Alert::new("exec_failure", Severity::Warning, "x").with_host("web1");
        let b = Alert::new("exec_failure", Severity::Warning, "x").with_host("web2");
        assert!(matches!(
            r.admit(&a, t0),
            Admission::Send { suppressed: 0, .. }
        ));
        assert!(
            matches!(r.admit(&b, t0), Admission::Send { suppressed: 0, .. }),
            "other host"
        );
        for i in 1..=4 {
            assert_eq!(
                r.admit(&a, t0 + Duration::from_secs(i * 10)),
                Admission::Suppressed { repeats: i }
            );
        }
        match r.admit(&a, t0 + Duration::from_secs(300)) {
            Admission::Send { suppressed, sinks } => {
                assert_eq!(suppressed, 4);
                assert_eq!(sinks, ["s"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            r.admit(&a, t0 + Duration::from_secs(301)),
            Admission::Suppressed { repeats: 1 }
        ));
    }

    #[test]
    fn bad_routes_are_refused_with_their_index() {
        let e = Router::new(
            vec![
                route(&[], Severity::Info, &["a"]),
                route(&[], Severity::Info, &[]),
            ],
            Duration::ZERO,
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("route 1"), "{e}");
        let e = Router::new(
            vec![route(&["a*b"], Severity::Info, &["a"])],
            Duration::ZERO,
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("prefix ending in *"), "{e}");
    }

    #[test]
    fn reconfigure_swaps_routes_keeps_cool_down_windows_and_refuses_bad_routes() {
        let t0 = Instant::now();
        let mut r = Router::new(
            vec![route(&[], Severity::Info, &["a"])],
            Duration::from_secs(10),
        )
        .unwrap();
        let alert = Alert::new("host_offline", Severity::Warning, "down");
        assert!(matches!(r.admit(&alert, t0), Admission::Send { .. }));
        assert!(matches!(
            r.admit(&alert, t0),
            Admission::Suppressed { repeats: 1 }
        ));
        let bad = r.reconfigure(
            vec![route(&["x*y"], Severity::Info, &["b"])],
            Duration::ZERO,
        );
        assert!(bad.is_err());
        assert_eq!(r.sinks(), ["a"], "a refused reconfigure changes nothing");
        r.reconfigure(
            vec![route(&["host_*"], Severity::Info, &["b"])],
            Duration::from_secs(20),
        )
        .unwrap();
        assert_eq!(r.sinks(), ["b"]);
        // The window survived and now lasts 20 s.
        assert!(matches!(
            r.admit(&alert, t0 + Duration::from_secs(15)),
            Admission::Suppressed { repeats: 2 }
        ));
        assert_eq!(
            r.admit(&alert, t0 + Duration::from_secs(21)),
            Admission::Send {
                sinks: vec!["b".into()],
                suppressed: 2
            }
        );
    }
}
