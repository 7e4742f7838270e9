//! One WireGuard peer (a boringtun `Tunn`) and the WireGuard timer rules the node runs for it on
//! its injected clock (see the crate docs, "Time").

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Tunn, TunnResult};

use super::path::{Path, PathConfig, PathState, Relays, label};
use super::types::{Dest, DropReason, Event, PeerId, Totals, Transmit};
use crate::PublicKey;
use crate::health::{HealthState, HealthTrack};

// WireGuard timer constants (whitepaper §6.1).
const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// One peer to add.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Human name (the host name on the hub, "hub" on a target).
    pub name: String,
    /// The peer's WireGuard public key.
    pub public_key: PublicKey,
    /// The peer's overlay IP; its allowed IPs are exactly this /32.
    pub overlay_ip: Ipv4Addr,
    /// Where to send to until the peer is heard from (then the endpoint roams).
    pub endpoint: Option<SocketAddr>,
    /// Send a keepalive every this many seconds (for NAT); `None` = off.
    pub persistent_keepalive: Option<u16>,
}

/// One peer as shown by `tether vpn status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStatus {
    /// Peer id within the node.
    pub id: PeerId,
    /// Human name.
    pub name: String,
    /// Base64 public key.
    pub public_key: String,
    /// Overlay IP.
    pub overlay_ip: Ipv4Addr,
    /// Current endpoint (roams to wherever authenticated packets come from).
    pub endpoint: Option<SocketAddr>,
    /// Seconds since the last completed handshake (`None` = never).
    pub last_handshake_secs: Option<u64>,
    /// Handshake round-trip time of the last handshake we initiated, in milliseconds.
    pub rtt_ms: Option<u64>,
    /// Bytes received from the peer (WireGuard datagrams).
    pub rx_bytes: u64,
    /// Bytes sent to the peer (WireGuard datagrams).
    pub tx_bytes: u64,
    /// Completed handshakes.
    pub handshakes: u64,
    /// Whether a session is currently established.
    pub up: bool,
    /// Health per the watchdog.
    pub health: HealthState,
    /// Watchdog rebuilds so far.
    pub rebuilds: u64,
    /// Drops attributed to this peer, by reason label.
    pub drops: BTreeMap<&'static str, u64>,
    /// Where its datagrams go: `direct` (UDP to the endpoint) or `relay:NAME`.
    pub path: String,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Attempt {
    started: Instant,
    last_sent: Instant,
}

/// The WireGuard timer state the node runs on its injected clock.
#[derive(Debug, Default)]
pub(super) struct WgTimers {
    pub(super) attempt: Option<Attempt>,
    session_at: Option<Instant>,
    initiator: bool,
    last_sent: Option<Instant>,
    last_data_sent: Option<Instant>,
    pub(super) last_recv: Option<Instant>,
    pub(super) last_data_recv: Option<Instant>,
    pub(super) last_persistent: Option<Instant>,
    dead_probe_for: Option<Option<Instant>>,
}

/// One WireGuard peer: its boringtun state, the timers the node runs for it, and its counters.
pub(super) struct Peer {
    pub(super) id: PeerId,
    pub(super) index: u32,
    pub(super) cfg: PeerConfig,
    pub(super) tunn: Box<Tunn>,
    pub(super) endpoint: Option<SocketAddr>,
    pub(super) wg: WgTimers,
    pub(super) up: bool,
    pub(super) added_at: Instant,
    pub(super) last_handshake: Option<Instant>,
    rtt: Option<Duration>,
    pub(super) rx_bytes: u64,
    tx_bytes: u64,
    handshakes: u64,
    drops: [u64; DropReason::COUNT],
    pub(super) health: HealthTrack,
    pub(super) path: PathState,
}

/// A WireGuard message the node sends on its own (not carrying data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Control {
    /// A handshake initiation, even when one is in flight.
    Handshake,
    /// An empty data message (a keepalive).
    Keepalive,
}

/// The WireGuard message type (1 initiation, 2 response, 3 cookie, 4 data); 0 if too short.
pub(super) fn msg_type(p: &[u8]) -> u8 {
    if p.len() >= 4 { p[0] } else { 0 }
}

/// Time since `t`; forever when `t` is `None`.
fn since(now: Instant, t: Option<Instant>) -> Duration {
    t.map_or(Duration::MAX, |t| now.saturating_duration_since(t))
}

impl Peer {
    /// A peer added at `now`: no session yet, nothing counted.
    pub(super) fn new(
        id: PeerId,
        index: u32,
        tunn: Box<Tunn>,
        cfg: PeerConfig,
        now: Instant,
    ) -> Self {
        Peer {
            id,
            index,
            tunn,
            endpoint: cfg.endpoint,
            cfg,
            wg: WgTimers::default(),
            up: false,
            added_at: now,
            last_handshake: None,
            rtt: None,
            rx_bytes: 0,
            tx_bytes: 0,
            handshakes: 0,
            drops: [0; DropReason::COUNT],
            health: HealthTrack::new(),
            path: PathState::new(),
        }
    }

    /// Forgets all WireGuard timer state (new key or new `Tunn`); the persistent keepalive
    /// counts from `now`.
    pub(super) fn reset_timers(&mut self, now: Instant) {
        self.wg = WgTimers::default();
        self.wg.last_persistent = Some(now);
    }

    /// Counts a drop against this peer and the node.
    pub(super) fn drop(&mut self, totals: &mut Totals, r: DropReason) {
        self.drops[r.idx()] += 1;
        totals.drops[r.idx()] += 1;
    }

    /// Queues one WireGuard message for this peer and records what it means for the timers.
    pub(super) fn emit(
        &mut self,
        pkt: Vec<u8>,
        now: Instant,
        out: &mut VecDeque<Transmit>,
        totals: &mut Totals,
    ) {
        match msg_type(&pkt) {
            1 => match &mut self.wg.attempt {
                Some(a) => a.last_sent = now,
                None => {
                    self.wg.attempt = Some(Attempt {
                        started: now,
                        last_sent: now,
                    })
                }
            },
            4 if pkt.len() > 32 => {
                self.wg.last_data_sent = Some(now);
            }
            _ => {}
        }
        self.wg.last_sent = Some(now);
        let dst = match self.path.current {
            Path::Relay(relay) => Some(Dest::Relay {
                relay,
                key: self.cfg.public_key,
            }),
            Path::Direct => self.endpoint.map(Dest::Udp),
        };
        match dst {
            Some(dst) => {
                self.path.sent(msg_type(&pkt), pkt.len(), now);
                self.tx_bytes += pkt.len() as u64;
                totals.tx_bytes += pkt.len() as u64;
                out.push_back(Transmit { dst, payload: pkt });
            }
            None => self.drop(totals, DropReason::NoEndpoint),
        }
    }

    /// Probes direct UDP while on a relay: a fresh keepalive (never a copy of a sent packet, which
    /// the replay window would reject) to the endpoint. Not a WireGuard timer event: it may well
    /// be lost.
    pub(super) fn send_probe(
        &mut self,
        buf: &mut [u8],
        out: &mut VecDeque<Transmit>,
        totals: &mut Totals,
    ) {
        let Some(ep) = self.endpoint else {
            return;
        };
        if !self.up {
            return;
        }
        if let TunnResult::WriteToNetwork(p) = self.tunn.encapsulate(&[], buf)
            && msg_type(p) == 4
        {
            self.tx_bytes += p.len() as u64;
            totals.tx_bytes += p.len() as u64;
            out.push_back(Transmit {
                dst: Dest::Udp(ep),
                payload: p.to_vec(),
            });
        }
    }

    /// Moves this peer's datagrams to `to` (no-op when already there): raises
    /// [`Event::PathChanged`], resends an outstanding handshake over the new path, or else sends
    /// a fresh keepalive over it so the peer learns the path too. Returns whether it switched.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn set_path(
        &mut self,
        to: Path,
        now: Instant,
        relays: &Relays,
        cfg: &PathConfig,
        events: &mut VecDeque<Event>,
        out: &mut VecDeque<Transmit>,
        totals: &mut Totals,
    ) -> bool {
        if self.path.current == to {
            return false;
        }
        let from = label(relays, self.path.current);
        self.path.switch(to, now, cfg);
        let to_label = label(relays, to);
        tracing::debug!(peer = %self.cfg.name, from = %from, to = %to_label, "path switch");
        events.push_back(Event::PathChanged {
            peer: self.id,
            from,
            to: to_label,
        });
        let mut buf = [0u8; 256];
        if self.wg.attempt.is_some() {
            self.send_control(Control::Handshake, now, &mut buf, out, totals);
        } else if self.up && (matches!(to, Path::Relay(_)) || self.endpoint.is_some()) {
            // Lets the peer see the new path work at once (over UDP: it moves back to direct
            // without waiting for its next probe).
            self.send_control(Control::Keepalive, now, &mut buf, out, totals);
        }
        true
    }

    fn emit_result(
        &mut self,
        r: TunnResult<'_>,
        now: Instant,
        out: &mut VecDeque<Transmit>,
        totals: &mut Totals,
    ) {
        match r {
            TunnResult::WriteToNetwork(p) => self.emit(p.to_vec(), now, out, totals),
            TunnResult::Err(WireGuardError::ConnectionExpired) | TunnResult::Done => {}
            TunnResult::Err(e) => {
                tracing::debug!(peer = %self.cfg.name, error = ?e, "wireguard timer error")
            }
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
        }
    }

    /// Queues a handshake initiation or a keepalive, made by boringtun, for this peer.
    pub(super) fn send_control(
        &mut self,
        what: Control,
        now: Instant,
        buf: &mut [u8],
        out: &mut VecDeque<Transmit>,
        totals: &mut Totals,
    ) {
        let r = match what {
            Control::Handshake => self.tunn.format_handshake_initiation(buf, true),
            Control::Keepalive => self.tunn.encapsulate(&[], buf),
        };
        self.emit_result(r, now, out, totals);
    }

    /// Runs the WireGuard timer rules on the injected clock. Returns events.
    pub(super) fn tick(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        out: &mut VecDeque<Transmit>,
        totals: &mut Totals,
        events: &mut VecDeque<Event>,
    ) {
        // boringtun's own real-time duties (key expiry, rate limiter, cookies).
        let r = self.tunn.update_timers(buf);
        self.emit_result(r, now, out, totals);

        if let Some(a) = self.wg.attempt {
            if now.saturating_duration_since(a.started) >= REKEY_ATTEMPT_TIME {
                tracing::debug!(peer = %self.cfg.name, "handshake attempt gave up after 90 s");
                self.wg.attempt = None;
            } else if now.saturating_duration_since(a.last_sent) >= REKEY_TIMEOUT {
                self.send_control(Control::Handshake, now, buf, out, totals);
            }
        } else if let Some(s) = self.wg.session_at {
            let age = now.saturating_duration_since(s);
            let mut need = false;
            if self.wg.initiator {
                // Rekey on send after REKEY_AFTER_TIME (keepalives count, as in wireguard-go).
                if age >= REKEY_AFTER_TIME && self.wg.last_sent.is_some_and(|t| t > s) {
                    need = true;
                }
                if age >= REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
                    && self.wg.last_data_recv.is_some_and(|t| t > s)
                {
                    need = true;
                }
            }
            // Sent data but heard nothing for KEEPALIVE + REKEY_TIMEOUT: the peer may have lost
            // its session (restart); start a new handshake, once per silence.
            let last_recv = self.wg.last_recv.or(Some(s));
            if self.wg.last_data_sent > last_recv
                && since(now, last_recv) >= KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
                && self.wg.dead_probe_for != Some(last_recv)
            {
                self.wg.dead_probe_for = Some(last_recv);
                need = true;
            }
            if need && age < REJECT_AFTER_TIME * 3 {
                self.send_control(Control::Handshake, now, buf, out, totals);
            } else if self.wg.last_data_recv.is_some()
                && self.wg.last_data_recv > self.wg.last_sent
                && since(now, self.wg.last_sent) >= KEEPALIVE_TIMEOUT
            {
                // Passive keepalive: received data, sent nothing back for 10 s.
                self.send_control(Control::Keepalive, now, buf, out, totals);
            }
        }
        if let Some(k) = self.cfg.persistent_keepalive.filter(|k| *k > 0) {
            let due = since(now, self.wg.last_persistent.or(Some(self.added_at)))
                >= Duration::from_secs(u64::from(k));
            if due {
                self.wg.last_persistent = Some(now);
                // The keepalive side (a target behind NAT) keeps the session fresh even when it
                // was the responder: otherwise an idle hub-initiated session would only be
                // replaced after its keys expire (180 s), past the 3-minute health limit.
                let stale = since(now, self.wg.session_at) >= REKEY_AFTER_TIME;
                if stale && self.wg.attempt.is_none() {
                    self.send_control(Control::Handshake, now, buf, out, totals);
                } else {
                    self.send_control(Control::Keepalive, now, buf, out, totals);
                }
            }
        }
        if self.up && since(now, self.wg.session_at) >= REJECT_AFTER_TIME {
            self.up = false;
            events.push_back(Event::PeerDown(self.id));
        }
    }

    /// A handshake completed at `now` (`initiator`: we started it).
    pub(super) fn handshake_done(
        &mut self,
        now: Instant,
        initiator: bool,
        totals: &mut Totals,
        events: &mut VecDeque<Event>,
    ) {
        if initiator && let Some(a) = self.wg.attempt {
            self.rtt = Some(now.saturating_duration_since(a.last_sent));
        }
        self.wg.attempt = None;
        self.wg.session_at = Some(now);
        self.wg.initiator = initiator;
        self.wg.dead_probe_for = None;
        self.last_handshake = Some(now);
        self.handshakes += 1;
        totals.handshakes += 1;
        if !self.up {
            self.up = true;
            events.push_back(Event::PeerUp(self.id));
        }
    }

    /// The peer as `tether vpn status` shows it.
    pub(super) fn status(&self, now: Instant, relays: &Relays) -> PeerStatus {
        PeerStatus {
            id: self.id,
            name: self.cfg.name.clone(),
            public_key: self.cfg.public_key.to_base64(),
            overlay_ip: self.cfg.overlay_ip,
            endpoint: self.endpoint,
            last_handshake_secs: self
                .last_handshake
                .map(|t| now.saturating_duration_since(t).as_secs()),
            rtt_ms: self.rtt.map(|d| d.as_millis() as u64),
            rx_bytes: self.rx_bytes,
            tx_bytes: self.tx_bytes,
            handshakes: self.handshakes,
            up: self.up,
            health: self.health.state,
            rebuilds: self.health.rebuilds_total,
            drops: DropReason::ALL
                .iter()
                .filter(|r| self.drops[r.idx()] > 0)
                .map(|r| (r.as_str(), self.drops[r.idx()]))
                .collect(),
            path: label(relays, self.path.current),
        }
    }
}
