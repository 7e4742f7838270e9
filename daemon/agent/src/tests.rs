//! Hub and target machines driven against each other over a simulated tunnel with simulated
//! time: whole rotations, lost messages, timeouts, replays, version mismatches and v1↔v2 interop.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::*;

const HUB_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const T_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

fn key(n: u8) -> String {
    STANDARD.encode([n; 32])
}

fn range(a: u16, b: u16) -> VersionRange {
    VersionRange::new(Version(a), Version(b)).unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    Hub,
    Target,
}

type DropFn = Box<dyn FnMut(From, &[u8]) -> bool>;

/// One hub, one target, the tunnel between them and the state the drivers would keep.
struct Sim {
    start: Instant,
    now: Instant,
    hub: Hub,
    target: Target,
    /// hub conn -> target conn, and back.
    h2t: HashMap<ConnId, ConnId>,
    t2h: HashMap<ConnId, ConnId>,
    inventory_key: String,
    hub_peer_key: String,
    target_key: String,
    staged: Option<String>,
    next_key: u8,
    record_fails: bool,
    stage_hangs: bool,
    black_hole: bool,
    hub_audit: Vec<String>,
    target_audit: Vec<String>,
    drop: Option<DropFn>,
    /// Every line sent, by whom.
    wire: Vec<(From, Vec<u8>)>,
    hub_done: Vec<(RotationId, Result<String, AgentError>)>,
    target_done: Vec<(RotationId, bool, Result<String, AgentError>)>,
    hub_failures: Vec<AgentError>,
    target_failures: Vec<AgentError>,
    confirmed: usize,
}

impl Sim {
    fn new(hub_versions: VersionRange, target_versions: VersionRange) -> Sim {
        let now = Instant::now();
        let mut tcfg = TargetConfig::new(HUB_IP);
        tcfg.versions = target_versions;
        Sim {
            start: now,
            now,
            hub: Hub::new(HubConfig {
                versions: hub_versions,
                ..HubConfig::default()
            }),
            target: Target::new(tcfg),
            h2t: HashMap::new(),
            t2h: HashMap::new(),
            inventory_key: key(1),
            hub_peer_key: key(1),
            target_key: key(1),
            staged: None,
            next_key: 2,
            record_fails: false,
            stage_hangs: false,
            black_hole: false,
            hub_audit: Vec::new(),
            target_audit: Vec::new(),
            drop: None,
            wire: Vec::new(),
            hub_done: Vec::new(),
            target_done: Vec::new(),
            hub_failures: Vec::new(),
            target_failures: Vec::new(),
            confirmed: 0,
        }
    }

    fn host(&self) -> HostInfo {
        HostInfo {
            name: "t1".into(),
            overlay_ip: T_IP,
            wg_public_key: self.inventory_key.clone(),
        }
    }

    fn tunnel_works(&self) -> bool {
        self.hub_peer_key == self.target_key && !self.black_hole
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Performs every pending action of both machines.
    fn pump(&mut self) {
        loop {
            if let Some(a) = self.hub.poll_action() {
                self.hub_action(a);
            } else if let Some(a) = self.target.poll_action() {
                self.target_action(a);
            } else {
                return;
            }
        }
    }

    fn deliver(&mut self, from: From, conn: ConnId, bytes: Vec<u8>) {
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            self.wire.push((from, line.to_vec()));
        }
        if let Some(d) = &mut self.drop
            && d(from, &bytes)
        {
            return;
        }
        let now = self.now;
        match from {
            From::Hub => {
                if let Some(t) = self.h2t.get(&conn) {
                    self.target.received(*t, &bytes, now);
                }
            }
            From::Target => {
                if let Some(h) = self.t2h.get(&conn) {
                    self.hub.received(*h, &bytes, now);
                }
            }
        }
    }

    fn hub_action(&mut self, a: HubAction) {
        let now = self.now;
        match a {
            HubAction::Io(Io::Connect { conn, ip }) => {
                assert_eq!(ip, T_IP);
                if self.black_hole {
                    return;
                }
                if !self.tunnel_works() {
                    return self.hub.failed(conn, "no WireGuard session".into(), now);
                }
                if let Some(t) = self.target.accept(HUB_IP, now) {
                    self.h2t.insert(conn, t);
                    self.t2h.insert(t, conn);
                    self.hub.connected(conn, now);
                }
            }
            HubAction::Io(Io::Send { conn, bytes }) => self.deliver(From::Hub, conn, bytes),
            HubAction::Io(Io::Close { conn }) => {
                if let Some(t) = self.h2t.remove(&conn) {
                    self.t2h.remove(&t);
                    self.target.closed(t, now);
                }
            }
            HubAction::RecordRotation {
                conn,
                host,
                old_public_key,
                new_public_key,
            } => {
                assert_eq!(host, "t1");
                assert_eq!(old_public_key, self.inventory_key);
                if self.record_fails {
                    return self.hub.recorded(
                        conn,
                        Err(EffectError::Audit {
                            reason: "disk full".into(),
                        }),
                        now,
                    );
                }
                self.hub_audit.push(new_public_key.clone());
                self.inventory_key = new_public_key;
                self.hub.recorded(conn, Ok(()), now);
            }
            HubAction::InstallPeerKey { host } => {
                assert_eq!(host.wg_public_key, self.inventory_key);
                self.hub_peer_key = host.wg_public_key;
            }
            HubAction::KeyConfirmed { .. } => self.confirmed += 1,
            HubAction::RotationFinished {
                rotation, result, ..
            } => self.hub_done.push((rotation, result)),
            HubAction::ConversationFailed { error, .. } => self.hub_failures.push(error),
        }
    }

    fn target_action(&mut self, a: TargetAction) {
        let now = self.now;
        match a {
            TargetAction::Io(Io::Connect { conn, ip }) => {
                assert_eq!(ip, HUB_IP);
                if self.black_hole {
                    return;
                }
                if !self.tunnel_works() {
                    return self.target.failed(conn, "no WireGuard session".into(), now);
                }
                let h = self.hub.accept(T_IP, Some(self.host()), now);
                self.h2t.insert(h, conn);
                self.t2h.insert(conn, h);
                self.target.connected(conn, now);
            }
            TargetAction::Io(Io::Send { conn, bytes }) => self.deliver(From::Target, conn, bytes),
            TargetAction::Io(Io::Close { conn }) => {
                if let Some(h) = self.t2h.remove(&conn) {
                    self.h2t.remove(&h);
                    self.hub.closed(h, now);
                }
            }
            TargetAction::StageKey => {
                if self.stage_hangs {
                    return;
                }
                let k = key(self.next_key);
                self.next_key += 1;
                self.staged = Some(k.clone());
                self.target.staged(Ok(k), now);
            }
            TargetAction::DiscardStagedKey => self.staged = None,
            TargetAction::PromoteKey { new_public_key } => {
                assert_eq!(self.staged.take(), Some(new_public_key.clone()));
                self.target_audit.push(new_public_key.clone());
                self.target_key = new_public_key;
                self.target.promoted(Ok(()), now);
            }
            TargetAction::RotationFinished {
                rotation,
                asked_by_hub,
                result,
            } => self.target_done.push((rotation, asked_by_hub, result)),
            TargetAction::ConversationFailed { error } => self.target_failures.push(error),
        }
    }

    /// Runs (advancing simulated time to each deadline) until `done` or `limit` has passed.
    fn run_until(&mut self, limit: Duration, done: impl Fn(&Sim) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            self.pump();
            if done(self) {
                return true;
            }
            let next = [self.hub.poll_timeout(), self.target.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    self.hub.handle_timeout(now);
                    self.target.handle_timeout(now);
                }
                _ => return false,
            }
        }
    }

    fn hub_rotation(&mut self) -> Result<String, AgentError> {
        let now = self.now;
        let id = self.hub.start_rotation(self.host(), now);
        assert!(self.run_until(Duration::from_secs(60), |s| !s.hub_done.is_empty()));
        let (done, result) = self.hub_done.remove(0);
        assert_eq!(done, id);
        // The target's own view of the rotation it was asked for.
        self.run_until(Duration::from_secs(60), |s| !s.target.is_rotating());
        result
    }

    fn target_rotation(&mut self) -> Result<String, AgentError> {
        let now = self.now;
        let id = self.target.start_rotation(now);
        assert!(self.run_until(Duration::from_secs(60), |s| {
            s.target_done.iter().any(|(r, ..)| *r == id)
        }));
        let i = self
            .target_done
            .iter()
            .position(|(r, ..)| *r == id)
            .unwrap();
        self.target_done.remove(i).2
    }

    fn sent_by(&self, from: From) -> Vec<String> {
        self.wire
            .iter()
            .filter(|(f, _)| *f == from)
            .map(|(_, l)| String::from_utf8_lossy(l).into_owned())
            .collect()
    }

    fn assert_consistent(&self) {
        assert_eq!(self.inventory_key, self.target_key, "inventory vs target");
        assert_eq!(self.hub_peer_key, self.target_key, "hub tunnel vs target");
        assert!(self.staged.is_none(), "a staged key was left behind");
    }
}

#[test]
fn a_rotation_the_hub_asks_for_completes_on_v2() {
    let mut sim = Sim::new(VersionRange::SUPPORTED, VersionRange::SUPPORTED);
    let new = sim.hub_rotation().unwrap();
    assert_eq!(new, key(2));
    sim.assert_consistent();
    assert_eq!(sim.target_key, key(2));
    assert_eq!(sim.hub_audit, [key(2)]);
    assert_eq!(sim.target_audit, [key(2)]);
    assert_eq!(sim.confirmed, 1);
    let (_, asked_by_hub, result) = &sim.target_done[0];
    assert!(asked_by_hub);
    assert_eq!(result.as_ref().unwrap(), &key(2));
    // Every line both sides sent is a v2 envelope.
    for line in sim
        .sent_by(From::Hub)
        .iter()
        .chain(&sim.sent_by(From::Target))
    {
        assert!(line.starts_with("{\"v\":2,"), "{line}");
    }
    assert!(
        sim.elapsed() < Duration::from_secs(1),
        "no waiting on the happy path"
    );
    assert!(sim.hub.poll_timeout().is_none(), "nothing left pending");
}

#[test]
fn a_rotation_the_target_starts_completes_and_a_second_one_follows() {
    let mut sim = Sim::new(VersionRange::SUPPORTED, VersionRange::SUPPORTED);
    assert_eq!(sim.target_rotation().unwrap(), key(2));
    sim.assert_consistent();
    assert_eq!(sim.target_rotation().unwrap(), key(3));
    sim.assert_consistent();
    assert_eq!(sim.hub_audit, [key(2), key(3)]);
    assert!(sim.hub_failures.is_empty(), "{:?}", sim.hub_failures);
}

#[test]
fn requests_during_a_rotation_wait_for_it_then_get_their_own() {
    let mut sim = Sim::new(VersionRange::SUPPORTED, VersionRange::SUPPORTED);
    let now = sim.now;
    let a = sim.target.start_rotation(now);
    let b = sim.target.start_rotation(now);
    assert!(sim.run_until(Duration::from_secs(60), |s| s.target_done.len() == 2));
    assert_eq!(sim.target_done[0].0, a);
    assert_eq!(sim.target_done[1].0, b);
    assert_eq!(sim.target_key, key(3));
    sim.assert_consistent();
}

#[test]
fn a_v2_hub_rotates_a_v1_target_and_the_reverse() {
    for (hub, target) in [
        (VersionRange::SUPPORTED, VersionRange::only(Version::V1)),
        (VersionRange::only(Version::V1), VersionRange::SUPPORTED),
    ] {
        let mut sim = Sim::new(hub, target);
        assert_eq!(sim.hub_rotation().unwrap(), key(2), "{hub} / {target}");
        sim.assert_consistent();
        assert_eq!(sim.target_rotation().unwrap(), key(3), "{hub} / {target}");
        sim.assert_consistent();
        let v1_side = if hub.max == Version::V1 {
            From::Hub
        } else {
            From::Target
        };
        // The v1 side never sent an envelope; after the fallback nobody did.
        for line in sim.sent_by(v1_side) {
            assert!(!line.contains("\"v\":"), "{line}");
        }
        let wire: Vec<_> = sim.wire.iter().map(|(_, l)| l.clone()).collect();
        let envelopes = wire.iter().filter(|l| l.starts_with(b"{\"v\":")).count();
        assert!(
            envelopes <= 2,
            "only one probing hello per rotation ({envelopes})"
        );
    }
}

#[test]
fn a_new_target_falls_back_to_v1_when_a_first_release_hub_hangs_up_on_its_hello() {
    // The first release's hub closes a stream whose first line it cannot read. This drives
    // the target machine byte by byte against that behaviour.
    let mut t = Target::new(TargetConfig::new(HUB_IP));
    let now = Instant::now();
    t.start_rotation(now);
    assert_eq!(t.poll_action(), Some(TargetAction::StageKey));
    t.staged(Ok(key(9)), now);
    let Some(TargetAction::Io(Io::Connect { conn, .. })) = t.poll_action() else {
        panic!()
    };
    t.connected(conn, now);
    let Some(TargetAction::Io(Io::Send { bytes, .. })) = t.poll_action() else {
        panic!()
    };
    assert!(bytes.starts_with(b"{\"v\":2,\"seq\":0,\"msg\":{\"type\":\"hello\""));
    t.closed(conn, now);
    assert_eq!(t.poll_action(), Some(TargetAction::Io(Io::Close { conn })));
    let Some(TargetAction::Io(Io::Connect { conn, .. })) = t.poll_action() else {
        panic!()
    };
    t.connected(conn, now);
    let expected = format!(
        "{{\"op\":\"rotate_wg_key\",\"new_public_key\":\"{}\"}}\n",
        key(9)
    );
    assert_eq!(
        t.poll_action(),
        Some(TargetAction::Io(Io::Send {
            conn,
            bytes: expected.into_bytes()
        }))
    );
    t.received(conn, b"{\"ok\":true}\n", now);
    assert_eq!(t.poll_action(), Some(TargetAction::Io(Io::Close { conn })));
    assert_eq!(
        t.poll_action(),
        Some(TargetAction::PromoteKey {
            new_public_key: key(9)
        })
    );
}

#[test]
fn a_new_hub_serves_the_exact_bytes_of_a_first_release_target() {
    let mut hub = Hub::new(HubConfig::default());
    let now = Instant::now();
    let host = HostInfo {
        name: "old".into(),
        overlay_ip: T_IP,
        wg_public_key: key(1),
    };
    let conn = hub.accept(T_IP, Some(host), now);
    let line = format!(
        "{{\"op\":\"rotate_wg_key\",\"new_public_key\":\"{}\"}}\n",
        key(2)
    );
    hub.received(conn, line.as_bytes(), now);
    assert!(matches!(
        hub.poll_action(),
        Some(HubAction::RecordRotation { .. })
    ));
    hub.recorded(conn, Ok(()), now);
    assert_eq!(
        hub.poll_action(),
        Some(HubAction::Io(Io::Send {
            conn,
            bytes: b"{\"ok\":true}\n".to_vec()
        }))
    );
}

#[test]
fn versions_too_old_or_too_new_fail_with_both_ranges_named() {
    // A future hub that dropped v1, against a first-release target.
    let mut sim = Sim::new(range(2, 3), VersionRange::only(Version::V1));
    assert_eq!(
        sim.hub_rotation().unwrap_err(),
        AgentError::UnsupportedVersion {
            ours: range(2, 3),
            theirs: range(1, 1)
        }
    );
    // The same target starting a rotation is refused by that hub, in words it can read.
    let e = sim.target_rotation().unwrap_err();
    let AgentError::Refused { message, .. } = &e else {
        panic!("{e:?}")
    };
    assert!(message.contains("protocols v2 to v3"), "{message}");
    assert!(sim.staged.is_none());
    assert_eq!(sim.target_key, key(1));

    // This hub against a target two releases newer, both directions.
    let mut sim = Sim::new(VersionRange::SUPPORTED, range(3, 4));
    assert_eq!(
        sim.hub_rotation().unwrap_err(),
        AgentError::UnsupportedVersion {
            ours: range(1, 2),
            theirs: range(3, 4)
        }
    );
    assert_eq!(
        sim.target_rotation().unwrap_err(),
        AgentError::UnsupportedVersion {
            ours: range(3, 4),
            theirs: range(1, 2)
        }
    );
    assert!(sim.hub_failures.iter().any(|e| *e
        == AgentError::UnsupportedVersion {
            ours: range(1, 2),
            theirs: range(3, 4)
        }));
    assert_eq!(sim.inventory_key, key(1));
    assert_eq!(sim.target_key, key(1));
}

#[test]
fn a_newer_peer_within_range_negotiates_the_highest_common_version() {
    let mut sim = Sim::new(VersionRange::SUPPORTED, range(2, 3));
    assert_eq!(sim.hub_rotation().unwrap(), key(2));
    sim.assert_consistent();
    assert!(
        sim.sent_by(From::Target)
            .iter()
            .any(|l| l.contains("\"type\":\"hello_ack\",\"version\":2"))
    );
}

#[test]
fn a_lost_rotate_now_times_out_and_changes_nothing() {
    let mut sim = Sim::new(VersionRange::SUPPORTED, VersionRange::SUPPORTED);
    sim.drop = Some(Box::new(|from, bytes| {
        from == From::Hub && String::from_utf8_lossy(bytes).contains("rotate_now")
    }));
    let e = sim.hub_rotation().unwrap_err();
    assert!(matches!(e, AgentError::Timeout { .. }), "{e:?}");
    assert_eq!(sim.elapsed(), Duration::from_secs(10));
    assert_eq!(sim.inventory_key, key(1));
    sim.assert_consistent();
    assert_eq!(sim.hub.rotations_in_progress(), 0);
}

#[test]
fn a_lost_confirmation_is_retried_on_a_new_connection() {
    let mut sim = Sim::new(VersionRange::SUPPORTED, VersionRange::SUPPORTED);
    let mut dropped = false;
    sim.drop = Some(Box::new(move |from, bytes| {
        let hit = from == From::Target
            && !dropped
            && String::from_utf8_lossy(bytes).contains("confirm_key");
        dropped |= hit;
        hit
    }));
    assert_eq!(sim.hub_rotation().unwrap(), key(2));
    sim.assert_consistent();
    // 10 s for the first attempt to time out, 0.5 s pause, then the retry.
    assert_eq!(sim.elapsed(), Duration::from_millis(10_500));
    assert_eq!(sim.confirmed, 1);
}

#[test]
fn an_unreachable_target_or_a_stuck_one_time_out() {
    let mut sim = Sim::new(VersionRange::SUPPORTED, VersionRange::SUPPORTED);
    sim.black_hole = true;
    let e = sim.hub_rotation().unwrap_err();
    assert!(
        matches!(
            e,
            AgentError::Timeout {
                what: "asking the target to rotate",
                ..
            }
        ),
        "{e:?}"
    );

    // The target acks but never sends its key: the whole rotation times out at 30 s.
    let mut sim = Sim::new(VersionRange::SUPPORTED, VersionRange::SUPPORTED);
    sim.stage_hangs = true;
    let now = sim.now;
    sim.hub.start_rotation(sim.host(), now);
    assert!(sim.run_until(Duration::from_secs(60), |s| !s.hub_done.is_empty()));
    assert_eq!(
        sim.hub_done[0].1,
        Err(AgentError::RotationTimeout {
            after: Duration::from_secs(30)
        })
    );
    assert_eq!(sim.elapsed(), Duration::from_secs(30));
}

#[test]
fn a_replayed_rotation_is_refused_and_changes_nothing() {
    let mut sim = Sim::new(VersionRange::SUPPORTED, VersionRange::SUPPORTED);
    sim.target_rotation().unwrap();
    sim.target_rotation().unwrap();
    // Everything the target sent in its first rotate_wg_key conversation, replayed.
    let first: Vec<u8> = sim
        .wire
        .iter()
        .filter(|(f, _)| *f == From::Target)
        .take(2)
        .flat_map(|(_, l)| l.clone())
        .collect();
    assert!(String::from_utf8_lossy(&first).contains(&key(2)));
    let now = sim.now;
    let conn = sim.hub.accept(T_IP, Some(sim.host()), now);
    sim.hub.received(conn, &first, now);
    let mut refused = None;
    while let Some(a) = sim.hub.poll_action() {
        assert!(!matches!(a, HubAction::RecordRotation { .. }));
        if let HubAction::ConversationFailed { error, .. } = a {
            refused = Some(error);
        }
    }
    assert_eq!(refused, Some(AgentError::KeyReused));
    assert_eq!(sim.inventory_key, key(3));

    // A line replayed inside a conversation is caught by its sequence number.
    let conn = sim.hub.accept(T_IP, Some(sim.host()), now);
    let hello = b"{\"v\":2,\"seq\":0,\"msg\":{\"type\":\"hello\",\"min\":1,\"max\":2}}\n";
    sim.hub.received(conn, hello, now);
    sim.hub.received(conn, hello, now);
    let failed: Vec<_> = std::iter::from_fn(|| sim.hub.poll_action())
        .filter_map(|a| match a {
            HubAction::ConversationFailed { error, .. } => Some(error),
            _ => None,
        })
        .collect();
    assert_eq!(
        failed,
        [AgentError::Sequence {
            got: 0,
            expected: 1
        }]
    );
}

#[test]
fn an_old_confirmation_does_not_complete_a_rotation() {
    let mut sim = Sim::new(VersionRange::SUPPORTED, VersionRange::SUPPORTED);
    sim.stage_hangs = true;
    let now = sim.now;
    sim.hub.start_rotation(sim.host(), now);
    sim.pump();
    // A confirm_key (say, from the previous rotation) arrives before any new key.
    let conn = sim.hub.accept(T_IP, Some(sim.host()), now);
    sim.hub.received(conn, b"{\"op\":\"confirm_key\"}\n", now);
    sim.pump();
    assert_eq!(sim.confirmed, 1);
    assert!(sim.hub_done.is_empty());
    assert_eq!(sim.hub.rotations_in_progress(), 1);
}

#[test]
fn a_hub_that_cannot_record_refuses_and_the_target_keeps_its_key() {
    let mut sim = Sim::new(VersionRange::SUPPORTED, VersionRange::SUPPORTED);
    sim.record_fails = true;
    let e = sim.hub_rotation().unwrap_err();
    assert!(
        matches!(
            &e,
            AgentError::Local {
                cause: EffectError::Audit { reason },
                ..
            } if reason == "disk full"
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("disk full"), "{e}");
    let (_, _, target) = &sim.target_done[0];
    let Err(AgentError::Refused { code, message }) = target else {
        panic!("{target:?}")
    };
    assert_eq!(code, "local");
    assert!(message.contains("disk full"));
    sim.assert_consistent();
    assert_eq!(sim.target_key, key(1));
}

#[test]
fn strangers_and_unknown_requests_are_refused() {
    let now = Instant::now();
    let mut hub = Hub::new(HubConfig::default());
    let conn = hub.accept(Ipv4Addr::new(10, 99, 0, 9), None, now);
    hub.received(conn, b"{\"op\":\"confirm_key\"}\n", now);
    let actions: Vec<_> = std::iter::from_fn(|| hub.poll_action()).collect();
    assert!(actions.iter().any(|a| matches!(
        a,
        HubAction::ConversationFailed {
            error: AgentError::UnknownHost { .. },
            ..
        }
    )));

    // A newer peer's message kind is refused in-protocol, not by hanging up.
    let host = HostInfo {
        name: "t".into(),
        overlay_ip: T_IP,
        wg_public_key: key(1),
    };
    let conn = hub.accept(T_IP, Some(host), now);
    hub.received(
        conn,
        b"{\"v\":2,\"seq\":0,\"msg\":{\"type\":\"hello\",\"min\":2,\"max\":3}}\n{\"v\":2,\"seq\":1,\"msg\":{\"type\":\"exec_start\",\"argv\":[\"ls\"]}}\n",
        now,
    );
    let sent: Vec<u8> = std::iter::from_fn(|| hub.poll_action())
        .filter_map(|a| match a {
            HubAction::Io(Io::Send { bytes, .. }) => Some(bytes),
            _ => None,
        })
        .flatten()
        .collect();
    let sent = String::from_utf8(sent).unwrap();
    assert!(
        sent.contains("\"type\":\"hello_ack\",\"version\":2"),
        "{sent}"
    );
    assert!(
        sent.contains("\"type\":\"refused\",\"code\":\"unexpected\""),
        "{sent}"
    );

    // A target serves only its hub.
    let mut t = Target::new(TargetConfig::new(HUB_IP));
    assert!(t.accept(Ipv4Addr::new(10, 99, 0, 3), now).is_none());
}

/// A target cannot rotate its key at will: at most MAX_TARGET_ROTATIONS_PER_HOUR rotations it
/// starts itself per hour (each is an audit record, an inventory write and a peer swap); the
/// next is refused with nothing recorded; an hour later it may again; a rotation the hub asks
/// for is never limited.
#[test]
fn self_started_rotations_are_limited_per_hour() {
    use crate::hub::MAX_TARGET_ROTATIONS_PER_HOUR;
    let mut sim = Sim::new(VersionRange::SUPPORTED, VersionRange::SUPPORTED);
    for _ in 0..MAX_TARGET_ROTATIONS_PER_HOUR {
        sim.target_rotation().unwrap();
    }
    let audited = sim.hub_audit.len();
    let key_before = sim.inventory_key.clone();
    let e = sim.target_rotation().unwrap_err();
    assert!(
        matches!(&e, AgentError::Refused { code, .. } if code == "rate_limited"),
        "{e:?}"
    );
    assert_eq!(sim.hub_audit.len(), audited, "nothing recorded");
    assert_eq!(sim.inventory_key, key_before);
    sim.assert_consistent();
    // the admin can still force one
    sim.hub_rotation().unwrap();
    sim.assert_consistent();
    // an hour later the target may rotate again
    sim.now += Duration::from_secs(3601);
    sim.target_rotation().unwrap();
    sim.assert_consistent();
}
