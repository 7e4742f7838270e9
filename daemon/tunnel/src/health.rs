//! Peer health and the rebuild watchdog (pure data; the [`crate::Node`] runs it on its clock).

use std::time::{Duration, Instant};

/// When a peer counts as unhealthy and how the watchdog reacts.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// A peer with no completed handshake for this long is unhealthy (default 3 minutes).
    pub unhealthy_after: Duration,
    /// How often peers are checked (default 60 s).
    pub check_interval: Duration,
    /// Consecutive failed checks before the peer's WireGuard state is rebuilt (default 2).
    pub rebuild_after_failed_checks: u32,
    /// Rebuilds without recovery before the watchdog pauses (default 5).
    pub max_rebuilds: u32,
    /// How long the watchdog pauses after `max_rebuilds` (default 30 minutes).
    pub rebuild_cooldown: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            unhealthy_after: Duration::from_secs(180),
            check_interval: Duration::from_secs(60),
            rebuild_after_failed_checks: 2,
            max_rebuilds: 5,
            rebuild_cooldown: Duration::from_secs(30 * 60),
        }
    }
}

/// A peer's health as shown by `tether vpn status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// A handshake completed recently enough.
    Healthy,
    /// No handshake for longer than `unhealthy_after`; the watchdog is rebuilding it.
    Unhealthy,
    /// Unhealthy, and the watchdog rebuilt it `max_rebuilds` times without recovery; it waits
    /// `rebuild_cooldown` before trying again.
    CoolingDown,
}

impl HealthState {
    /// The wire name (`healthy`, `unhealthy`, `cooling_down`).
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
            HealthState::CoolingDown => "cooling_down",
        }
    }
}

/// What a health check decided for one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The peer just became unhealthy (raise `vpn_peer_unhealthy`).
    BecameUnhealthy,
    /// The peer recovered.
    BecameHealthy,
    /// Rebuild the peer now.
    Rebuild,
}

/// Per-peer watchdog state.
#[derive(Debug, Clone)]
pub(crate) struct HealthTrack {
    pub(crate) state: HealthState,
    failed_checks: u32,
    rebuilds: u32,
    cooldown_until: Option<Instant>,
    /// Total rebuilds, for status.
    pub(crate) rebuilds_total: u64,
}

impl HealthTrack {
    pub(crate) fn new() -> Self {
        HealthTrack {
            state: HealthState::Healthy,
            failed_checks: 0,
            rebuilds: 0,
            cooldown_until: None,
            rebuilds_total: 0,
        }
    }

    /// One check: `since_handshake` is the time since the last handshake (or since the peer was
    /// added when it never had one). May return several verdicts in one check (became unhealthy
    /// and rebuild), so it reports through `out`.
    pub(crate) fn check(
        &mut self,
        cfg: &HealthConfig,
        since_handshake: Duration,
        now: Instant,
        out: &mut Vec<Verdict>,
    ) {
        if since_handshake < cfg.unhealthy_after {
            if self.state != HealthState::Healthy {
                out.push(Verdict::BecameHealthy);
            }
            *self = HealthTrack {
                rebuilds_total: self.rebuilds_total,
                ..HealthTrack::new()
            };
            return;
        }
        if self.state == HealthState::Healthy {
            self.state = HealthState::Unhealthy;
            out.push(Verdict::BecameUnhealthy);
        }
        if let Some(until) = self.cooldown_until {
            if now < until {
                return;
            }
            self.cooldown_until = None;
            self.state = HealthState::Unhealthy;
        }
        self.failed_checks += 1;
        if self.failed_checks >= cfg.rebuild_after_failed_checks {
            self.failed_checks = 0;
            self.rebuilds += 1;
            self.rebuilds_total += 1;
            out.push(Verdict::Rebuild);
            if self.rebuilds >= cfg.max_rebuilds {
                self.rebuilds = 0;
                self.cooldown_until = Some(now + cfg.rebuild_cooldown);
                self.state = HealthState::CoolingDown;
            }
        }
    }
}
