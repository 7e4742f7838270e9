//! [`Presence`]: `host_online` / `host_offline` from the tunnel's handshake ages (sans-IO).
//!
//! A host is offline when its tunnel peer has shown no sign of life for `offline_after`: no
//! completed WireGuard handshake and no bytes received (targets send a keepalive every
//! `tunnel.persistent_keepalive_secs`, 25 s by default; handshakes come every 2 minutes), or
//! none at all for that long since it was first seen; online again at its next handshake or
//! received bytes. One outage raises one "down" alert and one "up" alert:
//!
//! * a host starts unknown: it goes online silently at its first sign of life (a daemon restart
//!   does not announce every host), or offline (`host_offline`) when `offline_after` passes
//!   without one;
//! * the tunnel's own `vpn_peer_unhealthy` (raised by its watchdog after 3 minutes without a
//!   handshake) is the same fact: when `host_offline` was already raised for the host it is
//!   held back as a duplicate ([`Presence::peer_unhealthy`]), otherwise it goes out and counts
//!   as the down alert, so no `host_offline` follows it; either way `host_online` ends the outage;
//! * a peer that disappears (revoked, removed) is forgotten without an alert.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tether_model::{Alert, Severity};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Online,
    Offline { since: Instant },
}

#[derive(Debug, Clone, Copy)]
struct Host {
    first_seen: Instant,
    state: Option<State>,
    /// Bytes received at the last observation, and when that count last grew.
    rx: u64,
    rx_at: Option<Instant>,
}

/// Tracks which tunnel peers are up.
#[derive(Debug)]
pub struct Presence {
    offline_after: Duration,
    hosts: HashMap<String, Host>,
}

impl Presence {
    /// A tracker that calls a host offline after `offline_after` without a handshake.
    pub fn new(offline_after: Duration) -> Presence {
        Presence {
            offline_after,
            hosts: HashMap::new(),
        }
    }

    /// One observation of `host` at `now`: seconds since its last handshake (`None`: never) and
    /// the bytes received from it so far. Returns the alert to raise, if its state changed.
    pub fn observe(
        &mut self,
        host: &str,
        last_handshake_secs: Option<u64>,
        rx_bytes: u64,
        now: Instant,
    ) -> Option<Alert> {
        let h = self.hosts.entry(host.to_owned()).or_insert(Host {
            first_seen: now,
            state: None,
            rx: rx_bytes,
            rx_at: None,
        });
        if rx_bytes > h.rx {
            h.rx_at = Some(now);
        }
        h.rx = rx_bytes;
        // The freshest sign of life: a handshake or received bytes.
        let rx_secs = h.rx_at.map(|t| now.saturating_duration_since(t).as_secs());
        let last_handshake_secs = match (last_handshake_secs, rx_secs) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let up = match last_handshake_secs {
            Some(s) => Duration::from_secs(s) < self.offline_after,
            // Never shook hands: down once it has been missing for offline_after.
            None => false,
        };
        // Unknown hosts get offline_after to show a sign of life (a hub restart sees old
        // handshakes and no received bytes yet).
        let down = !up
            && (h.state.is_some()
                || now.saturating_duration_since(h.first_seen) >= self.offline_after);
        match (h.state, up, down) {
            (None, true, _) => {
                h.state = Some(State::Online);
                None
            }
            (None | Some(State::Online), false, true) => {
                h.state = Some(State::Offline { since: now });
                let mut a = Alert::new(
                    "host_offline",
                    Severity::Warning,
                    match last_handshake_secs {
                        Some(s) => format!("{host} is offline: nothing heard over the tunnel for {s} s"),
                        None => format!(
                            "{host} is offline: nothing heard over the tunnel since the hub started watching it ({} s)",
                            now.saturating_duration_since(h.first_seen).as_secs()
                        ),
                    },
                )
                .field("offline_after_secs", self.offline_after.as_secs().to_string());
                if let Some(s) = last_handshake_secs {
                    a = a.field("last_heard_secs", s.to_string());
                }
                a.host = Some(host.to_owned());
                Some(a)
            }
            (Some(State::Offline { since }), true, _) => {
                h.state = Some(State::Online);
                let was = now.saturating_duration_since(since).as_secs();
                let mut a = Alert::new(
                    "host_online",
                    Severity::Info,
                    format!("{host} is back online (offline for about {was} s)"),
                )
                .field("offline_for_secs", was.to_string());
                a.host = Some(host.to_owned());
                Some(a)
            }
            _ => None,
        }
    }

    /// The tunnel raised `vpn_peer_unhealthy` for `host` at `now`: true when `host_offline`
    /// already reported this outage (hold it back), false when it is the first down alert (send
    /// it; it now stands for the outage).
    pub fn peer_unhealthy(&mut self, host: &str, now: Instant) -> bool {
        let h = self.hosts.entry(host.to_owned()).or_insert(Host {
            first_seen: now,
            state: None,
            rx: 0,
            rx_at: None,
        });
        match h.state {
            Some(State::Offline { .. }) => true,
            _ => {
                h.state = Some(State::Offline { since: now });
                false
            }
        }
    }

    /// Forgets every host not in `present` (removed or revoked peers raise nothing).
    pub fn retain(&mut self, present: &[&str]) {
        self.hosts.retain(|k, _| present.contains(&k.as_str()));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn one_down_and_one_up_alert_per_outage_and_a_silent_start() {
        let t0 = Instant::now();
        let mut p = Presence::new(Duration::from_secs(10));
        assert!(
            p.observe("web1", Some(3), 0, t0).is_none(),
            "up at start: silent"
        );
        assert!(p.observe("web1", Some(9), 0, t0 + 6 * S).is_none());
        let down = p.observe("web1", Some(12), 0, t0 + 9 * S).unwrap();
        assert_eq!(
            (down.kind.as_str(), down.severity),
            ("host_offline", Severity::Warning)
        );
        assert_eq!(down.host.as_deref(), Some("web1"));
        assert_eq!(down.fields["last_heard_secs"], "12");
        assert!(
            p.observe("web1", Some(40), 0, t0 + 30 * S).is_none(),
            "no repeat"
        );
        let up = p.observe("web1", Some(1), 0, t0 + 39 * S).unwrap();
        assert_eq!(
            (up.kind.as_str(), up.severity),
            ("host_online", Severity::Info)
        );
        assert_eq!(up.fields["offline_for_secs"], "30");
        assert!(p.observe("web1", Some(2), 0, t0 + 40 * S).is_none());
    }

    #[test]
    fn a_host_that_never_shook_hands_goes_offline_after_the_limit() {
        let t0 = Instant::now();
        let mut p = Presence::new(Duration::from_secs(10));
        assert!(p.observe("t1", None, 0, t0).is_none());
        assert!(p.observe("t1", None, 0, t0 + 9 * S).is_none());
        assert_eq!(
            p.observe("t1", None, 0, t0 + 10 * S).unwrap().kind,
            "host_offline"
        );
        assert_eq!(
            p.observe("t1", Some(0), 0, t0 + 11 * S).unwrap().kind,
            "host_online"
        );
    }

    #[test]
    fn received_bytes_count_as_a_sign_of_life_between_handshakes() {
        let t0 = Instant::now();
        let mut p = Presence::new(Duration::from_secs(10));
        assert!(
            p.observe("t", Some(100), 500, t0).is_none(),
            "unknown yet: given time"
        );
        // Keepalives arrive: online (silently, it was never reported down) though the
        // handshake is old.
        assert!(p.observe("t", Some(105), 600, t0 + 5 * S).is_none());
        assert!(p.observe("t", Some(113), 700, t0 + 13 * S).is_none());
        // Silence for 10 s: offline.
        assert!(p.observe("t", Some(120), 700, t0 + 20 * S).is_none());
        assert_eq!(
            p.observe("t", Some(124), 700, t0 + 24 * S).unwrap().kind,
            "host_offline"
        );
    }

    #[test]
    fn vpn_peer_unhealthy_is_not_doubled_with_host_offline() {
        let t0 = Instant::now();
        let mut p = Presence::new(Duration::from_secs(10));
        p.observe("a", Some(1), 0, t0);
        p.observe("a", Some(11), 0, t0 + 10 * S).unwrap();
        assert!(
            p.peer_unhealthy("a", t0 + 180 * S),
            "already reported: held back"
        );
        // The tunnel first: its alert stands for the outage, no host_offline follows.
        p.observe("b", Some(1), 0, t0);
        assert!(!p.peer_unhealthy("b", t0 + 5 * S));
        assert!(p.observe("b", Some(200), 0, t0 + 6 * S).is_none());
        assert_eq!(
            p.observe("b", Some(0), 0, t0 + 7 * S).unwrap().kind,
            "host_online"
        );
        // Removed peers are forgotten.
        p.retain(&["a"]);
        assert!(p.observe("b", None, 0, t0 + 8 * S).is_none());
    }
}
