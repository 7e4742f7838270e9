//! Per-peer path selection: direct UDP when it works, a relay when it does not, switching both
//! ways on the injected clock.
//!
//! Both ends run these rules independently:
//! * A peer starts `direct`. While direct, if traffic was expected over UDP and nothing
//!   authenticated arrived over UDP for [`PathConfig::direct_timeout`], and a relay is up, the
//!   peer moves to a relay. "Expected" uses the WireGuard timers: a handshake initiation went out
//!   over UDP and is unanswered, or a data packet went out and not even the peer's passive
//!   keepalive (due after 10 s) came back.
//! * The relay chosen is the one an authenticated packet from this peer last arrived on, if it is
//!   up (the hub answers on the relay its target uses), else the first relay in order that is up.
//! * While on a relay, a fresh WireGuard keepalive goes to the peer's UDP endpoint every
//!   [`PathConfig::probe_interval`] (only for peers that have one); the first authenticated
//!   packet that arrives over UDP moves the peer back to direct.
//! * An authenticated packet arriving on a relay moves a direct peer to that relay when direct is
//!   not working (no endpoint, or nothing authenticated over UDP for `direct_timeout`); a hub
//!   already on another relay follows the relay its peer uses; a target on a relay moves to
//!   another one its peer uses only when its own has carried nothing for `direct_timeout`
//!   (counted from the switch to it, at the earliest), so stragglers on the old relay after
//!   the hub moved cannot make it flap; for the same reason a hub that just followed its peer
//!   away from a relay does not follow it back there for 2 s (unless its new relay is down).
//! * A relay going down moves its peers to the next relay that is up, or back to direct; peers
//!   it left on a direct path that has not worked since go back to a relay as soon as one is up
//!   again (a relay restart).
//! * A target whose relay does not work either (expected traffic unanswered for the same time:
//!   the hub may not be connected to that relay) tries the next relay that is up, each at most
//!   once until something authenticated arrives; when all were tried and a minute has passed since
//!   it left direct, it tries direct again (and so on). A hub only follows its targets.
//!
//! A switch only changes where datagrams go: WireGuard sessions and TCP streams are untouched.

use std::time::{Duration, Instant};

use super::types::RelayId;

/// Timers of the path rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathConfig {
    /// How long expected UDP traffic may go unanswered before a relay is used (default 5 s).
    pub direct_timeout: Duration,
    /// How often a peer on a relay probes direct UDP with a keepalive (default 3 s).
    pub probe_interval: Duration,
}

impl Default for PathConfig {
    fn default() -> Self {
        PathConfig {
            direct_timeout: Duration::from_secs(5),
            probe_interval: Duration::from_secs(3),
        }
    }
}

/// Where a peer's datagrams go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Path {
    /// Straight to its UDP endpoint.
    Direct,
    /// Through this relay.
    Relay(RelayId),
}

/// One registered relay.
#[derive(Debug, Clone)]
pub(super) struct RelayInfo {
    pub(super) name: String,
    pub(super) up: bool,
}

/// The relays known to the node, in failover order.
pub(super) type Relays = [RelayInfo];

/// A relay's bit in [`PathState::tried`] (ids past 63 are never marked tried).
fn bit(r: RelayId) -> u64 {
    1u64.checked_shl(u32::from(r.0)).unwrap_or(0)
}

fn is_up(relays: &Relays, r: RelayId) -> bool {
    relays.get(usize::from(r.0)).is_some_and(|x| x.up)
}

/// `prefer` when it is up and not `except`, else the first relay in order that is up and not
/// `except`.
pub(super) fn pick(
    relays: &Relays,
    prefer: Option<RelayId>,
    except: Option<RelayId>,
) -> Option<RelayId> {
    if let Some(p) = prefer
        && Some(p) != except
        && is_up(relays, p)
    {
        return Some(p);
    }
    relays
        .iter()
        .enumerate()
        .filter(|(_, r)| r.up)
        .map(|(i, _)| RelayId(i as u16))
        .find(|r| Some(*r) != except)
}

/// The label of a path (`direct` or `relay:NAME`).
pub(super) fn label(relays: &Relays, p: Path) -> String {
    match p {
        Path::Direct => "direct".to_owned(),
        Path::Relay(r) => match relays.get(usize::from(r.0)) {
            Some(x) => format!("relay:{}", x.name),
            None => format!("relay:#{}", r.0),
        },
    }
}

/// One peer's path state.
#[derive(Debug, Clone)]
pub(super) struct PathState {
    pub(super) current: Path,
    /// Last authenticated packet from the peer over UDP.
    udp_auth_at: Option<Instant>,
    /// The relay an authenticated packet from the peer last arrived on, and when.
    last_relay: Option<(RelayId, Instant)>,
    /// While on a relay: the last authenticated packet that arrived on it, or the switch to it
    /// (a new relay path gets `direct_timeout` to carry something). A target leaves a relay
    /// for another one its peer uses only when this is older than `direct_timeout`: arrivals
    /// interleaved on two relays (the hub moved, stragglers still come on the old one) must
    /// not make it flap.
    current_relay_heard: Option<Instant>,
    /// The relay this peer last left for another relay, and when: a hub does not follow its
    /// peer back to it within [`FOLLOW_BACK_GRACE`] (stragglers still queued in the old relay).
    left_relay: Option<(RelayId, Instant)>,
    /// First handshake initiation sent on the current path since the last authenticated packet
    /// on it.
    hs_unanswered_since: Option<Instant>,
    /// First data packet sent on the current path since the last authenticated packet on it.
    data_unanswered_since: Option<Instant>,
    /// The first inner TCP segment that asks for an answer (payload, SYN or FIN) sent since the
    /// path last answered: the peer's stack acknowledges it within a round trip, so silence for
    /// `direct_timeout` means the path is gone (no extra probes; idle peers send none).
    reply_unanswered_since: Option<Instant>,
    /// Relays tried (bit per id) since the last authenticated packet on the current path.
    tried: u64,
    /// When this round of relays began (the peer left direct).
    round_started: Option<Instant>,
    /// Left on direct by a relay going down, and nothing authenticated over UDP since.
    pub(super) stranded: bool,
    /// Switched, and nothing authenticated has arrived on the new path yet.
    unconfirmed: bool,
    /// The first authenticated packet on the new path just arrived.
    confirmed: bool,
    /// When the next probe is due (only while on a relay).
    next_probe: Option<Instant>,
}

/// What a path decision asks the node to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// Nothing.
    Stay,
    /// Switch to this path.
    Switch(Path),
}

/// How long a data packet may go without any authenticated answer before the direct path counts
/// as broken: the peer's passive keepalive is due after 10 s (WireGuard's KEEPALIVE_TIMEOUT).
const PASSIVE_KEEPALIVE: Duration = Duration::from_secs(10);

/// How long after following its peer from relay A to relay B a hub ignores datagrams still
/// arriving on A (they were queued there before the peer moved) instead of following back.
const FOLLOW_BACK_GRACE: Duration = Duration::from_secs(2);

/// When no relay worked either, direct is tried again this long after the peer left it.
const RETRY_ROUND: Duration = Duration::from_secs(60);

impl PathState {
    /// A new peer: direct.
    pub(super) fn new() -> Self {
        PathState {
            current: Path::Direct,
            udp_auth_at: None,
            last_relay: None,
            current_relay_heard: None,
            left_relay: None,
            hs_unanswered_since: None,
            data_unanswered_since: None,
            reply_unanswered_since: None,
            tried: 0,
            round_started: None,
            stranded: false,
            unconfirmed: false,
            confirmed: false,
            next_probe: None,
        }
    }

    /// Moves to `to` at `now` (the caller emits the event); resets the per-path timers.
    pub(super) fn switch(&mut self, to: Path, now: Instant, cfg: &PathConfig) {
        self.tried = match (self.current, to) {
            (_, Path::Direct) => 0,
            (Path::Direct, Path::Relay(r)) => {
                self.round_started = Some(now);
                bit(r)
            }
            (Path::Relay(_), Path::Relay(r)) => self.tried | bit(r),
        };
        if let Path::Relay(_) = to {
            self.stranded = false;
        }
        self.unconfirmed = true;
        self.left_relay = match (self.current, to) {
            (Path::Relay(c), Path::Relay(r)) if c != r => Some((c, now)),
            _ => None,
        };
        self.current = to;
        self.current_relay_heard = match to {
            Path::Relay(_) => Some(now),
            Path::Direct => None,
        };
        self.hs_unanswered_since = None;
        self.data_unanswered_since = None;
        self.reply_unanswered_since = None;
        self.next_probe = match to {
            Path::Direct => None,
            Path::Relay(_) => Some(now + cfg.probe_interval),
        };
    }

    /// A datagram of WireGuard type `msg_type` and `len` bytes went out on the current path.
    pub(super) fn sent(&mut self, msg_type: u8, len: usize, now: Instant) {
        match msg_type {
            1 => {
                self.hs_unanswered_since.get_or_insert(now);
            }
            4 if len > 32 => {
                self.data_unanswered_since.get_or_insert(now);
            }
            _ => {}
        }
    }

    /// An inner TCP segment that the peer's stack must acknowledge (payload, SYN or FIN) went
    /// out on the current path.
    pub(super) fn expects_reply(&mut self, now: Instant) {
        self.reply_unanswered_since.get_or_insert(now);
    }

    /// An authenticated packet arrived over UDP: direct works.
    pub(super) fn udp_auth(&mut self, now: Instant) -> Decision {
        self.udp_auth_at = Some(now);
        self.stranded = false;
        self.answered();
        match self.current {
            Path::Direct => Decision::Stay,
            Path::Relay(_) => Decision::Switch(Path::Direct),
        }
    }

    /// An authenticated packet arrived on `relay`.
    pub(super) fn relay_auth(
        &mut self,
        relay: RelayId,
        now: Instant,
        has_endpoint: bool,
        follow: bool,
        relays: &Relays,
        cfg: &PathConfig,
    ) -> Decision {
        let on_current_recently = matches!(self.current, Path::Relay(_))
            && self
                .current_relay_heard
                .is_some_and(|t| now.saturating_duration_since(t) < cfg.direct_timeout);
        self.last_relay = Some((relay, now));
        if self.current == Path::Relay(relay) {
            self.current_relay_heard = Some(now);
            self.answered();
        }
        if !is_up(relays, relay) {
            return Decision::Stay;
        }
        match self.current {
            Path::Direct => {
                let udp_fresh = self
                    .udp_auth_at
                    .is_some_and(|t| now.saturating_duration_since(t) < cfg.direct_timeout);
                if !has_endpoint || !udp_fresh {
                    Decision::Switch(Path::Relay(relay))
                } else {
                    Decision::Stay
                }
            }
            Path::Relay(c) if c == relay => Decision::Stay,
            Path::Relay(c) => {
                let straggler = self.left_relay.is_some_and(|(l, t)| {
                    l == relay && now.saturating_duration_since(t) < FOLLOW_BACK_GRACE
                });
                if !is_up(relays, c) || (follow && !straggler) || (!follow && !on_current_recently)
                {
                    Decision::Switch(Path::Relay(relay))
                } else {
                    Decision::Stay
                }
            }
        }
    }

    /// The relay to use when leaving direct or a relay that went down.
    pub(super) fn choose_relay(&self, relays: &Relays, except: Option<RelayId>) -> Option<RelayId> {
        pick(relays, self.last_relay.map(|(r, _)| r), except)
    }

    /// The current path works: forget what was expected on it.
    fn answered(&mut self) {
        self.hs_unanswered_since = None;
        self.data_unanswered_since = None;
        self.reply_unanswered_since = None;
        self.tried = 0;
        if self.unconfirmed {
            self.unconfirmed = false;
            self.confirmed = true;
        }
    }

    /// Whether the path switched to last has just carried its first authenticated packet (once):
    /// streams that retransmitted into it before the other end was there retransmit again.
    pub(super) fn take_confirmed(&mut self) -> bool {
        std::mem::take(&mut self.confirmed)
    }

    /// The periodic check (once per node tick): whether to leave direct, or (unless `follow`,
    /// as a hub does) a relay that does not work either.
    pub(super) fn tick(
        &self,
        now: Instant,
        relays: &Relays,
        cfg: &PathConfig,
        follow: bool,
    ) -> Decision {
        let hs = self
            .hs_unanswered_since
            .is_some_and(|t| now.saturating_duration_since(t) >= cfg.direct_timeout);
        let data = self.data_unanswered_since.is_some_and(|t| {
            now.saturating_duration_since(t) >= PASSIVE_KEEPALIVE + cfg.direct_timeout
        });
        let reply = self
            .reply_unanswered_since
            .is_some_and(|t| now.saturating_duration_since(t) >= cfg.direct_timeout);
        if !(hs || data || reply) {
            return Decision::Stay;
        }
        let next = match self.current {
            Path::Direct => self.choose_relay(relays, None),
            Path::Relay(_) if follow => None,
            Path::Relay(c) => {
                // The next relay after `c` in order (wrapping) that is up and not yet tried.
                let n = relays.len();
                let untried = (1..n)
                    .map(|k| (usize::from(c.0) + k) % n)
                    .map(|i| RelayId(i as u16))
                    .find(|r| is_up(relays, *r) && self.tried & bit(*r) == 0);
                let round_over = self
                    .round_started
                    .is_none_or(|t| now.saturating_duration_since(t) >= RETRY_ROUND);
                if untried.is_none() && round_over {
                    return Decision::Switch(Path::Direct);
                }
                untried
            }
        };
        match next {
            Some(r) => Decision::Switch(Path::Relay(r)),
            None => Decision::Stay,
        }
    }

    /// Whether a direct probe is due at `now` (on a relay only); schedules the next one.
    pub(super) fn probe_due(&mut self, now: Instant, cfg: &PathConfig) -> bool {
        match self.next_probe {
            Some(t) if now >= t => {
                self.next_probe = Some(now + cfg.probe_interval);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn relays(up: &[bool]) -> Vec<RelayInfo> {
        up.iter()
            .enumerate()
            .map(|(i, u)| RelayInfo {
                name: format!("r{i}"),
                up: *u,
            })
            .collect()
    }

    #[test]
    fn pick_prefers_the_last_relay_then_order() {
        let rs = relays(&[false, true, true]);
        assert_eq!(pick(&rs, None, None), Some(RelayId(1)));
        assert_eq!(pick(&rs, Some(RelayId(2)), None), Some(RelayId(2)));
        assert_eq!(pick(&rs, Some(RelayId(0)), None), Some(RelayId(1)));
        assert_eq!(
            pick(&rs, Some(RelayId(1)), Some(RelayId(1))),
            Some(RelayId(2))
        );
        assert_eq!(pick(&relays(&[false]), None, None), None);
        assert_eq!(label(&rs, Path::Relay(RelayId(2))), "relay:r2");
        assert_eq!(label(&rs, Path::Direct), "direct");
    }

    #[test]
    fn an_unanswered_handshake_leaves_direct_after_the_timeout_only_with_a_relay_up() {
        let cfg = PathConfig::default();
        let t0 = Instant::now();
        let mut p = PathState::new();
        p.sent(1, 148, t0);
        let up = relays(&[true]);
        assert_eq!(
            p.tick(t0 + Duration::from_secs(4), &up, &cfg, false),
            Decision::Stay
        );
        assert_eq!(
            p.tick(t0 + Duration::from_secs(5), &relays(&[false]), &cfg, false),
            Decision::Stay
        );
        assert_eq!(
            p.tick(t0 + Duration::from_secs(5), &up, &cfg, false),
            Decision::Switch(Path::Relay(RelayId(0)))
        );
        // An answer over UDP clears the expectation.
        p.udp_auth(t0 + Duration::from_secs(5));
        assert_eq!(
            p.tick(t0 + Duration::from_secs(60), &up, &cfg, false),
            Decision::Stay
        );
    }

    #[test]
    fn an_unacknowledged_tcp_segment_leaves_direct_after_the_direct_timeout() {
        let cfg = PathConfig::default();
        let t0 = Instant::now();
        let up = relays(&[true]);
        let mut p = PathState::new();
        p.sent(4, 200, t0);
        p.expects_reply(t0);
        assert_eq!(
            p.tick(t0 + Duration::from_millis(4900), &up, &cfg, false),
            Decision::Stay
        );
        assert_eq!(
            p.tick(t0 + cfg.direct_timeout, &up, &cfg, false),
            Decision::Switch(Path::Relay(RelayId(0)))
        );
        // Acknowledged in time: nothing is expected any more.
        let mut q = PathState::new();
        q.expects_reply(t0);
        q.udp_auth(t0 + Duration::from_millis(30));
        assert_eq!(
            q.tick(t0 + Duration::from_secs(6), &up, &cfg, false),
            Decision::Stay
        );
    }

    #[test]
    fn an_unanswered_keepalive_expects_nothing_and_data_waits_for_the_passive_keepalive() {
        let cfg = PathConfig::default();
        let t0 = Instant::now();
        let up = relays(&[true]);
        let mut p = PathState::new();
        p.sent(4, 32, t0);
        assert_eq!(
            p.tick(t0 + Duration::from_secs(60), &up, &cfg, false),
            Decision::Stay
        );
        p.sent(4, 200, t0);
        assert_eq!(
            p.tick(t0 + Duration::from_secs(14), &up, &cfg, false),
            Decision::Stay
        );
        assert_eq!(
            p.tick(t0 + Duration::from_secs(15), &up, &cfg, false),
            Decision::Switch(Path::Relay(RelayId(0)))
        );
    }

    #[test]
    fn relay_packets_move_a_direct_peer_only_when_direct_is_not_working() {
        let cfg = PathConfig::default();
        let t0 = Instant::now();
        let up = relays(&[true, true]);
        let mut p = PathState::new();
        p.udp_auth(t0);
        let r1 = RelayId(1);
        assert_eq!(
            p.relay_auth(r1, t0 + Duration::from_secs(1), true, false, &up, &cfg),
            Decision::Stay
        );
        assert_eq!(
            p.relay_auth(r1, t0 + Duration::from_secs(6), true, false, &up, &cfg),
            Decision::Switch(Path::Relay(r1))
        );
        let mut q = PathState::new();
        assert_eq!(
            q.relay_auth(r1, t0, false, false, &up, &cfg),
            Decision::Switch(Path::Relay(r1))
        );
        q.switch(Path::Relay(r1), t0, &cfg);
        assert_eq!(q.choose_relay(&up, None), Some(r1));
        // A hub follows the relay its peer uses.
        assert_eq!(
            q.relay_auth(RelayId(0), t0, false, true, &up, &cfg),
            Decision::Switch(Path::Relay(RelayId(0)))
        );
    }

    #[test]
    fn a_target_on_a_relay_that_still_delivers_does_not_flap_between_relays() {
        // The hub moved from r0 to r1 (r0 said it is going away to the hub first) while the
        // target still hears the hub's last datagrams on r0: interleaved arrivals on both. The
        // target stays on r0 while r0 still delivers, and moves once, when r0 has been quiet
        // for `direct_timeout` (or goes down); a straggler on r0 then does not pull it back.
        let cfg = PathConfig::default();
        let t0 = Instant::now();
        let up = relays(&[true, true]);
        let (r0, r1) = (RelayId(0), RelayId(1));
        let mut p = PathState::new();
        p.switch(Path::Relay(r0), t0, &cfg);
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut switches = Vec::new();
        for (i, relay) in [r0, r1, r1, r0, r0, r1, r1, r0].into_iter().enumerate() {
            let now = ms(1_000 + i as u64);
            if let Decision::Switch(to) = p.relay_auth(relay, now, false, false, &up, &cfg) {
                p.switch(to, now, &cfg);
                switches.push(to);
            }
        }
        assert_eq!(switches, vec![], "r0 still delivers: stay");
        // r0 quiet for direct_timeout: the next datagram on r1 moves the target, once.
        let later = ms(1_007) + cfg.direct_timeout;
        assert_eq!(p.current, Path::Relay(r0));
        assert_eq!(
            p.relay_auth(r1, later, false, false, &up, &cfg),
            Decision::Switch(Path::Relay(r1))
        );
        p.switch(Path::Relay(r1), later, &cfg);
        for (i, relay) in [r0, r1, r0, r0, r1].into_iter().enumerate() {
            let now = later + Duration::from_millis(1 + i as u64);
            assert_eq!(
                p.relay_auth(relay, now, false, false, &up, &cfg),
                Decision::Stay,
                "a straggler on r0 (#{i}) while r1 delivers"
            );
        }
        // A hub follows at once, but not back to the relay it just left: datagrams still
        // queued there arrive after the first ones on the new relay.
        let mut h = PathState::new();
        h.switch(Path::Relay(r0), t0, &cfg);
        assert_eq!(
            h.relay_auth(r1, ms(1), false, true, &up, &cfg),
            Decision::Switch(Path::Relay(r1))
        );
        h.switch(Path::Relay(r1), ms(1), &cfg);
        for (i, relay) in [r0, r0, r1, r0].into_iter().enumerate() {
            assert_eq!(
                h.relay_auth(relay, ms(2 + i as u64), false, true, &up, &cfg),
                Decision::Stay,
                "hub, straggler #{i}"
            );
        }
        // The peer really went back: the hub follows once the grace is over.
        let back = ms(1) + FOLLOW_BACK_GRACE;
        assert_eq!(
            h.relay_auth(r0, back, false, true, &up, &cfg),
            Decision::Switch(Path::Relay(r0))
        );
        // And at once when the relay it is on is down.
        let mut d = PathState::new();
        d.switch(Path::Relay(r0), t0, &cfg);
        d.switch(Path::Relay(r1), ms(1), &cfg);
        let r1_down = relays(&[true, false]);
        assert_eq!(
            d.relay_auth(r0, ms(2), false, true, &r1_down, &cfg),
            Decision::Switch(Path::Relay(r0))
        );
    }

    #[test]
    fn probes_run_only_on_a_relay() {
        let cfg = PathConfig::default();
        let t0 = Instant::now();
        let mut p = PathState::new();
        assert!(!p.probe_due(t0 + Duration::from_secs(10), &cfg));
        p.switch(Path::Relay(RelayId(0)), t0, &cfg);
        assert!(!p.probe_due(t0 + Duration::from_secs(2), &cfg));
        assert!(p.probe_due(t0 + Duration::from_secs(3), &cfg));
        assert!(!p.probe_due(t0 + Duration::from_secs(4), &cfg));
        assert_eq!(p.udp_auth(t0), Decision::Switch(Path::Direct));
    }
}
