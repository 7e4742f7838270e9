//! The sans-IO core in simulated time over a fault-injecting link: no sockets, no sleeps.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tether_tunnel::{
    Dest, DropReason, Event, Node, NodeConfig, NodeRole, PeerConfig, PeerId, PublicKey, RelayId,
    SecretKey, StreamId,
};

/// Deterministic xorshift PRNG (seeded per test).
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() % 1_000_000) as f64 / 1_000_000.0 < p
    }
}

pub struct Faults {
    pub loss: f64,
    pub dup: f64,
    pub latency: Duration,
    /// Probability that a datagram is held back by an extra random delay in [0, jitter)
    /// (it then arrives after datagrams sent later: reordering).
    pub reorder: f64,
    pub jitter: Duration,
    /// Link rate in bytes per second per sender (datagrams serialise; 0 = infinite).
    pub rate: u64,
    /// Bottleneck queue: a datagram that would wait longer than this for the link is dropped
    /// (tail drop). Zero = unbounded queue.
    pub queue: Duration,
}

impl Faults {
    pub fn clean() -> Self {
        Faults {
            loss: 0.0,
            dup: 0.0,
            latency: Duration::from_millis(200),
            reorder: 0.0,
            jitter: Duration::ZERO,
            rate: 12_500_000,
            queue: Duration::ZERO,
        }
    }
    /// 1% loss, 1% duplication, 2% reordered by up to 20 ms, 200 ms latency, 100 Mbit/s.
    pub fn bad() -> Self {
        Faults {
            loss: 0.01,
            dup: 0.01,
            reorder: 0.02,
            jitter: Duration::from_millis(20),
            ..Faults::clean()
        }
    }
}

/// Where a datagram in flight goes.
#[derive(Clone, Copy)]
enum To {
    /// Over UDP to this address.
    Udp(SocketAddr),
    /// Through a relay to node `node`, which knows that relay as `relay`; sent by `src`.
    Relay {
        node: usize,
        relay: RelayId,
        src: PublicKey,
    },
}

struct InFlight {
    at: Instant,
    seq: u64,
    to: To,
    from: SocketAddr,
    payload: Vec<u8>,
}

/// A simulated relay: which nodes registered it (and under which id) and which are connected.
pub struct SimRelay {
    pub name: String,
    /// Per node: its id for this relay, if it registered it.
    pub ids: Vec<Option<RelayId>>,
    /// Per node: connected now.
    pub up: Vec<bool>,
    /// Datagrams forwarded.
    pub forwarded: u64,
}

/// Nodes on a simulated network with a fake clock.
pub struct Sim {
    pub now: Instant,
    start: Instant,
    pub nodes: Vec<(SocketAddr, Option<Node>)>,
    flight: Vec<InFlight>,
    seq: u64,
    rng: Rng,
    pub faults: Faults,
    /// handle_timeout calls per node.
    pub timeouts: Vec<u64>,
    /// datagrams sent per node.
    pub sent: Vec<u64>,
    link_free: Vec<Instant>,
    pub events: Vec<(usize, Event)>,
    /// TCP buffer (floor) for nodes added from now on.
    pub buffer: usize,
    /// TCP buffer cap for nodes added from now on (at or below `buffer`: fixed buffers).
    pub buffer_max: usize,
    /// Node budget for stream buffer growth, for nodes added from now on.
    pub budget: usize,
    /// Datagrams dropped by the bottleneck queue.
    pub queue_drops: u64,
    /// Public key per node.
    pub keys: Vec<PublicKey>,
    /// Simulated relays.
    pub relays: Vec<SimRelay>,
    /// Per node: drop every UDP datagram from or to it (a firewall that blocks UDP).
    pub udp_blocked: Vec<bool>,
    /// Every UDP datagram sent (blocked or not): time, sender node, destination, payload.
    pub udp_log: Vec<(Instant, usize, SocketAddr, Vec<u8>)>,
    /// UDP datagrams dropped because UDP was blocked.
    pub udp_blocked_drops: u64,
    /// Relayed datagrams dropped (an end not connected to that relay).
    pub relay_drops: u64,
}

pub fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1 + i as u8], 51820))
}

pub fn overlay(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, 1 + i as u8)
}

impl Sim {
    pub fn new(seed: u64, faults: Faults) -> Self {
        let now = Instant::now();
        Sim {
            now,
            start: now,
            nodes: Vec::new(),
            flight: Vec::new(),
            seq: 0,
            rng: Rng::new(seed),
            faults,
            timeouts: Vec::new(),
            sent: Vec::new(),
            link_free: Vec::new(),
            events: Vec::new(),
            buffer: tether_tunnel::DEFAULT_TCP_BUFFER,
            buffer_max: tether_tunnel::DEFAULT_TCP_BUFFER_MAX,
            budget: tether_tunnel::DEFAULT_TCP_MEMORY_BUDGET,
            queue_drops: 0,
            keys: Vec::new(),
            relays: Vec::new(),
            udp_blocked: Vec::new(),
            udp_log: Vec::new(),
            udp_blocked_drops: 0,
            relay_drops: 0,
        }
    }

    /// A new relay nobody has registered yet.
    pub fn add_relay(&mut self, name: &str) -> usize {
        self.relays.push(SimRelay {
            name: name.to_owned(),
            ids: vec![None; self.nodes.len()],
            up: vec![false; self.nodes.len()],
            forwarded: 0,
        });
        self.relays.len() - 1
    }

    /// Node `i` registers relay `r` (down until [`Sim::relay_conn`]).
    pub fn join_relay(&mut self, r: usize, i: usize) -> RelayId {
        let name = self.relays[r].name.clone();
        let id = self.node(i).add_relay(name);
        self.relays[r].ids[i] = Some(id);
        id
    }

    /// Node `i`'s connection to relay `r` comes up or goes down.
    pub fn relay_conn(&mut self, r: usize, i: usize, up: bool) {
        let id = self.relays[r].ids[i].expect("node registered the relay");
        self.relays[r].up[i] = up;
        let now = self.now;
        if up {
            self.node(i).relay_up(id, now);
        } else {
            self.node(i).relay_down(id, now);
        }
    }

    pub fn add_node(&mut self, key: &SecretKey, role: NodeRole) -> usize {
        let i = self.nodes.len();
        let mut cfg = NodeConfig::new(key.clone(), overlay(i), role);
        cfg.tcp_buffer = self.buffer;
        cfg.tcp_buffer_max = self.buffer_max;
        cfg.tcp_memory_budget = self.budget;
        let node = Node::new(cfg, self.now).unwrap();
        self.keys.push(node.public_key());
        self.nodes.push((addr(i), Some(node)));
        for r in &mut self.relays {
            r.ids.push(None);
            r.up.push(false);
        }
        self.udp_blocked.push(false);
        self.timeouts.push(0);
        self.sent.push(0);
        self.link_free.push(self.now);
        i
    }

    pub fn status(&mut self, i: usize) -> Vec<tether_tunnel::PeerStatus> {
        let now = self.now;
        self.node(i).status(now)
    }

    pub fn node(&mut self, i: usize) -> &mut Node {
        self.nodes[i].1.as_mut().unwrap()
    }

    /// Replaces node `i` (a restart: all state lost, same key and address).
    pub fn replace(&mut self, i: usize, node: Node) {
        self.nodes[i].1 = Some(node);
    }

    fn collect(&mut self) {
        for i in 0..self.nodes.len() {
            let from = self.nodes[i].0;
            let Some(node) = self.nodes[i].1.as_mut() else {
                continue;
            };
            while let Some(t) = node.poll_transmit() {
                self.sent[i] += 1;
                let to = match t.dst {
                    Dest::Udp(a) => {
                        self.udp_log.push((self.now, i, a, t.payload.clone()));
                        let to_blocked = (0..self.udp_blocked.len())
                            .any(|j| self.udp_blocked[j] && addr(j) == a);
                        if self.udp_blocked[i] || to_blocked {
                            self.udp_blocked_drops += 1;
                            continue;
                        }
                        To::Udp(a)
                    }
                    Dest::Relay { relay, key } => {
                        let dst = self.keys.iter().position(|k| *k == key);
                        let via = self.relays.iter_mut().find(|r| r.ids[i] == Some(relay));
                        match (via, dst) {
                            (Some(r), Some(j)) if r.up[i] && r.up[j] && r.ids[j].is_some() => {
                                r.forwarded += 1;
                                To::Relay {
                                    node: j,
                                    relay: r.ids[j].unwrap(),
                                    src: self.keys[i],
                                }
                            }
                            _ => {
                                self.relay_drops += 1;
                                continue;
                            }
                        }
                    }
                };
                let depart =
                    match (t.payload.len() as u64 * 1_000_000_000).checked_div(self.faults.rate) {
                        None => self.now,
                        Some(ns) => {
                            let start = self.link_free[i].max(self.now);
                            if !self.faults.queue.is_zero()
                                && start.saturating_duration_since(self.now) > self.faults.queue
                            {
                                self.queue_drops += 1;
                                continue;
                            }
                            let d = start + Duration::from_nanos(ns);
                            self.link_free[i] = d;
                            d
                        }
                    };
                if self.rng.chance(self.faults.loss) {
                    continue;
                }
                let copies = if self.rng.chance(self.faults.dup) {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let jitter =
                        if self.faults.jitter.is_zero() || !self.rng.chance(self.faults.reorder) {
                            Duration::ZERO
                        } else {
                            Duration::from_micros(
                                self.rng.next() % self.faults.jitter.as_micros() as u64,
                            )
                        };
                    self.seq += 1;
                    // Arrivals are batched per simulated millisecond (as a driver batches recvmmsg).
                    let at = depart + self.faults.latency + jitter;
                    let off = at.saturating_duration_since(self.start).as_micros() as u64;
                    let at = self.start + Duration::from_micros(off.div_ceil(1000) * 1000);
                    self.flight.push(InFlight {
                        at,
                        seq: self.seq,
                        to,
                        from,
                        payload: t.payload.clone(),
                    });
                }
            }
            while let Some(ev) = node.poll_event() {
                self.events.push((i, ev));
            }
        }
    }

    /// Advances to the next thing that happens (a delivery or a timer), no further than `limit`.
    pub fn step(&mut self, limit: Instant) {
        self.collect();
        let mut next = limit;
        for f in &self.flight {
            next = next.min(f.at);
        }
        for (_, n) in self.nodes.iter_mut() {
            if let Some(n) = n
                && let Some(t) = n.poll_timeout()
            {
                next = next.min(t);
            }
        }
        // Timers may be "due now"; never go backwards.
        self.now = self.now.max(next);
        let now = self.now;
        // Deliver everything due, in arrival order.
        let mut due: Vec<InFlight> = Vec::new();
        let mut i = 0;
        while i < self.flight.len() {
            if self.flight[i].at <= now {
                due.push(self.flight.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|f| (f.at, f.seq));
        for f in due {
            match f.to {
                To::Udp(to) => {
                    if let Some((_, Some(node))) = self.nodes.iter_mut().find(|(a, _)| *a == to) {
                        node.handle_datagram(f.from, &f.payload, now);
                    }
                }
                To::Relay { node, relay, src } => {
                    if let Some((_, Some(n))) = self.nodes.get_mut(node) {
                        n.handle_relayed(relay, src, &f.payload, now);
                    }
                }
            }
        }
        for (i, (_, n)) in self.nodes.iter_mut().enumerate() {
            if let Some(n) = n
                && n.poll_timeout().is_some_and(|t| t <= now)
            {
                self.timeouts[i] += 1;
                n.handle_timeout(now);
            }
        }
        self.collect();
    }

    /// Runs until `done` returns true or `max` simulated time passes. Returns whether done.
    pub fn run_until(&mut self, max: Duration, mut done: impl FnMut(&mut Sim) -> bool) -> bool {
        let end = self.now + max;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.step(end);
        }
        done(self)
    }

    pub fn peer(&self, key: &SecretKey, i: usize, keepalive: Option<u16>) -> PeerConfig {
        PeerConfig {
            name: format!("node{i}"),
            public_key: key.public_key(),
            overlay_ip: overlay(i),
            endpoint: Some(addr(i)),
            persistent_keepalive: keepalive,
        }
    }
}

/// A hub (node 0) and one target (node 1), peered both ways.
fn hub_and_target(seed: u64, faults: Faults) -> (Sim, SecretKey, SecretKey, PeerId, PeerId) {
    let hk = SecretKey::generate().unwrap();
    let tk = SecretKey::generate().unwrap();
    let mut sim = Sim::new(seed, faults);
    let h = sim.add_node(&hk, NodeRole::Hub);
    let t = sim.add_node(&tk, NodeRole::Target);
    let now = sim.now;
    let tp = sim.peer(&tk, t, None);
    let hp = sim.peer(&hk, h, None);
    let t_on_hub = sim.node(h).add_peer(tp, now).unwrap();
    let h_on_t = sim.node(t).add_peer(hp, now).unwrap();
    (sim, hk, tk, t_on_hub, h_on_t)
}

pub fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}

pub fn connect(
    sim: &mut Sim,
    from: usize,
    to_ip: Ipv4Addr,
    port: u16,
    max: Duration,
) -> Option<StreamId> {
    let id = sim.node(from).connect(to_ip, port).unwrap();
    let ok = sim.run_until(max, |s| s.node(from).readiness(id).connected);
    (ok && !sim.node(from).readiness(id).closed).then_some(id)
}

#[test]
fn ten_megabytes_cross_a_lossy_reordering_duplicating_link_intact() {
    transfer(Faults::bad(), 10 * 1024 * 1024);
}

#[test]
#[ignore]
fn debug_fault_kinds() {
    let d = Duration::from_millis(200);
    for (name, f) in [
        ("clean", Faults::clean()),
        (
            "loss",
            Faults {
                loss: 0.01,
                ..Faults::clean()
            },
        ),
        (
            "dup",
            Faults {
                dup: 0.01,
                ..Faults::clean()
            },
        ),
        (
            "reorder",
            Faults {
                reorder: 0.02,
                jitter: d / 10,
                ..Faults::clean()
            },
        ),
        (
            "shuffle",
            Faults {
                reorder: 1.0,
                jitter: d / 5,
                rate: 0,
                ..Faults::clean()
            },
        ),
        ("bad", Faults::bad()),
    ] {
        eprintln!("{name}");
        transfer(f, 2 * 1024 * 1024);
    }
}

fn transfer(faults: Faults, total: usize) {
    let start = std::time::Instant::now();
    let (mut sim, ..) = hub_and_target(0x5eed_0007, faults);
    let t0 = sim.now;
    sim.node(1).listen(7000).unwrap();
    let client = connect(&mut sim, 0, overlay(1), 7000, Duration::from_secs(60)).expect("connect");
    let mut server = None;
    let (mut sent, mut received) = (0usize, 0usize);
    let mut buf = vec![0u8; 64 * 1024];
    let mut chunk = vec![0u8; 64 * 1024];
    let mut mismatch = None;
    let done = sim.run_until(Duration::from_secs(1800), |s| {
        // Writer: fill the send buffer (back-pressure: WouldBlock when full).
        while sent < total {
            let n = chunk.len().min(total - sent);
            for (k, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern(sent + k);
            }
            match s.node(0).send(client, &chunk[..n]) {
                Ok(w) => sent += w,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("send failed: {e}"),
            }
        }
        if server.is_none() {
            server = s.node(1).accept(7000);
        }
        if let Some(sv) = server {
            loop {
                match s.node(1).recv(sv, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        for (k, b) in buf[..n].iter().enumerate() {
                            if *b != pattern(received + k) && mismatch.is_none() {
                                mismatch = Some(received + k);
                            }
                        }
                        received += n;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("recv failed: {e}"),
                }
            }
        }
        received >= total
    });
    eprintln!("received {received} in {:?} sim", sim.now - t0);
    assert_eq!(mismatch, None, "corrupted byte at offset {mismatch:?}");
    assert!(
        done,
        "only {received} of {total} bytes arrived in 30 simulated minutes"
    );
    assert_eq!(received, total);
    let st = sim.status(0);
    assert!(
        st[0].handshakes >= 1 && st[0].tx_bytes > total as u64,
        "{st:?}"
    );
    eprintln!(
        "{total} bytes in {:?} simulated, {:?} real",
        sim.now - t0,
        start.elapsed()
    );
}

#[test]
fn handshake_recovers_after_the_hub_restarts() {
    let (mut sim, hk, tk, _, _) = hub_and_target(7, Faults::clean());
    sim.node(0).listen(22).unwrap();
    let s1 = connect(&mut sim, 1, overlay(0), 22, Duration::from_secs(30)).expect("first connect");
    sim.node(1).send(s1, b"hello").unwrap();
    sim.run_until(Duration::from_secs(2), |_| false);

    // The hub restarts: same key and address, all sessions lost.
    let now = sim.now;
    let mut hub = Node::new(NodeConfig::new(hk.clone(), overlay(0), NodeRole::Hub), now).unwrap();
    hub.add_peer(
        PeerConfig {
            endpoint: None,
            ..sim.peer(&tk, 1, None)
        },
        now,
    )
    .unwrap();
    hub.listen(22).unwrap();
    sim.replace(0, hub);
    let before = sim.now;
    // The target's old session is dead; its next connection must trigger a new handshake.
    let s2 = connect(&mut sim, 1, overlay(0), 22, Duration::from_secs(120))
        .expect("target could not reconnect after the hub restarted");
    let took = sim.now - before;
    assert!(took < Duration::from_secs(60), "recovery took {took:?}");
    let st = sim.status(0);
    assert_eq!(st[0].handshakes, 1, "{st:?}");
    assert_eq!(st[0].endpoint, Some(addr(1)), "endpoint learnt by roaming");
    let _ = s2;
}

#[test]
fn idle_nodes_do_not_busy_loop() {
    let (mut sim, ..) = hub_and_target(11, Faults::clean());
    sim.node(1).listen(22).unwrap();
    let c = connect(&mut sim, 0, overlay(1), 22, Duration::from_secs(30)).expect("connect");
    sim.node(0).send(c, b"ping").unwrap();
    sim.run_until(Duration::from_secs(15), |_| false);
    let t0 = sim.timeouts.clone();
    let s0 = sim.sent.clone();
    sim.run_until(Duration::from_secs(60), |_| false);
    for i in 0..2 {
        let wakeups = sim.timeouts[i] - t0[i];
        let sent = sim.sent[i] - s0[i];
        // One 1 Hz WireGuard tick plus one health check per minute.
        assert!(
            wakeups <= 65,
            "node {i} woke {wakeups} times in an idle simulated minute"
        );
        assert_eq!(
            sent, 0,
            "node {i} sent {sent} datagrams while idle without keepalive"
        );
    }
}

#[test]
fn persistent_keepalive_keeps_sending_and_rekeys() {
    let hk = SecretKey::generate().unwrap();
    let tk = SecretKey::generate().unwrap();
    let mut sim = Sim::new(3, Faults::clean());
    sim.add_node(&hk, NodeRole::Hub);
    sim.add_node(&tk, NodeRole::Target);
    let now = sim.now;
    let tp = PeerConfig {
        endpoint: None,
        ..sim.peer(&tk, 1, None)
    };
    let hp = sim.peer(&hk, 0, Some(25));
    sim.node(0).add_peer(tp, now).unwrap();
    sim.node(1).add_peer(hp, now).unwrap();
    sim.node(0).listen(22).unwrap();
    // The target (keepalive side) opens a connection, so it is the initiator first...
    connect(&mut sim, 1, overlay(0), 22, Duration::from_secs(10)).expect("connect");
    sim.run_until(Duration::from_secs(600), |_| false);
    let st = sim.status(0);
    // Handshake at start plus a rekey every ~2 minutes driven by the keepalives.
    assert!(st[0].handshakes >= 4, "{st:?}");
    assert!(
        st[0].up && st[0].last_handshake_secs.unwrap() < 180,
        "{st:?}"
    );
    assert_eq!(st[0].health, tether_tunnel::HealthState::Healthy);
    let unhealthy = sim
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::PeerUnhealthy(_)))
        .count();
    assert_eq!(unhealthy, 0);
}

#[test]
fn keepalive_side_refreshes_a_session_the_hub_initiated() {
    let hk = SecretKey::generate().unwrap();
    let tk = SecretKey::generate().unwrap();
    let mut sim = Sim::new(4, Faults::clean());
    sim.add_node(&hk, NodeRole::Hub);
    sim.add_node(&tk, NodeRole::Target);
    let now = sim.now;
    let tp = sim.peer(&tk, 1, None);
    // The target does not know the hub's endpoint yet (it learns it by roaming), so the hub is
    // the initiator; then the hub stays idle and the target must keep handshakes coming.
    let hp = PeerConfig {
        endpoint: None,
        ..sim.peer(&hk, 0, Some(25))
    };
    sim.node(0).add_peer(tp, now).unwrap();
    sim.node(1).add_peer(hp, now).unwrap();
    sim.node(1).listen(22).unwrap();
    connect(&mut sim, 0, overlay(1), 22, Duration::from_secs(10)).expect("connect");
    sim.run_until(Duration::from_secs(900), |_| false);
    let st = sim.status(0);
    assert!(st[0].handshakes >= 6, "{st:?}");
    let unhealthy = sim
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::PeerUnhealthy(_) | Event::PeerDown(_)))
        .count();
    assert_eq!(unhealthy, 0, "{:?}", sim.events);
}

#[test]
fn rotating_the_hub_key_keeps_targets_that_learnt_it() {
    let (mut sim, hk, _tk, _, h_on_t) = hub_and_target(12, Faults::clean());
    sim.node(1).listen(22).unwrap();
    connect(&mut sim, 0, overlay(1), 22, Duration::from_secs(10)).expect("connect");
    let new = SecretKey::generate().unwrap();
    assert_ne!(new.public_key(), hk.public_key());
    sim.node(0).set_private_key(&new);
    // The target learns the new key (enrollment channel) and re-adds the hub.
    let now = sim.now;
    sim.node(1).remove_peer(h_on_t).unwrap();
    let hp = sim.peer(&new, 0, None);
    sim.node(1).add_peer(hp, now).unwrap();
    connect(&mut sim, 0, overlay(1), 22, Duration::from_secs(30))
        .expect("connect under the new key");
}

fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&28u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17; // UDP
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p
}

#[test]
fn star_a_target_cannot_reach_another_target_through_the_hub() {
    let hk = SecretKey::generate().unwrap();
    let k1 = SecretKey::generate().unwrap();
    let k2 = SecretKey::generate().unwrap();
    let mut sim = Sim::new(5, Faults::clean());
    let h = sim.add_node(&hk, NodeRole::Hub);
    let t1 = sim.add_node(&k1, NodeRole::Target);
    let t2 = sim.add_node(&k2, NodeRole::Target);
    let now = sim.now;
    let p1 = sim.peer(&k1, t1, None);
    let p2 = sim.peer(&k2, t2, None);
    let ph = sim.peer(&hk, h, None);
    let t1_on_hub = sim.node(h).add_peer(p1, now).unwrap();
    sim.node(h).add_peer(p2, now).unwrap();
    sim.node(t1).add_peer(ph.clone(), now).unwrap();
    sim.node(t2).add_peer(ph, now).unwrap();
    sim.node(t2).listen(22).unwrap();

    // T1 routes the overlay subnet to the hub, so this SYN reaches the hub... and stops there.
    let c = sim.node(t1).connect(overlay(t2), 22).unwrap();
    sim.run_until(Duration::from_secs(20), |_| false);
    assert!(
        !sim.node(t1).readiness(c).connected,
        "target reached another target"
    );
    assert_eq!(sim.node(t2).accept(22), None);
    let hub_st = sim.status(h);
    let t1_st = hub_st.iter().find(|s| s.id == t1_on_hub).unwrap();
    assert!(
        t1_st
            .drops
            .get(DropReason::ForwardDenied.as_str())
            .copied()
            .unwrap_or(0)
            >= 1,
        "{hub_st:?}"
    );
    let t2_st = hub_st.iter().find(|s| s.overlay_ip == overlay(t2)).unwrap();
    assert_eq!(t2_st.tx_bytes, 0, "hub sent something to T2: {t2_st:?}");

    // A packet with a forged source (T2's address) from T1 is dropped as spoofed.
    let before = sim.node(h).totals().drops[DropReason::SpoofedSource as usize];
    let hub_id_on_t1 = sim.node(t1).peer_by_ip(overlay(h)).unwrap();
    let now = sim.now;
    sim.node(t1)
        .inject_ip_packet(hub_id_on_t1, &ipv4_packet(overlay(t2), overlay(h)), now);
    sim.run_until(Duration::from_secs(1), |_| false);
    assert_eq!(
        sim.node(h).totals().drops[DropReason::SpoofedSource as usize],
        before + 1
    );
}

#[test]
fn watchdog_marks_unhealthy_rebuilds_and_cools_down() {
    let hk = SecretKey::generate().unwrap();
    let tk = SecretKey::generate().unwrap();
    let mut sim = Sim::new(9, Faults::clean());
    sim.add_node(&hk, NodeRole::Hub);
    let now = sim.now;
    // A target that never answers (no node at its address).
    let p = PeerConfig {
        endpoint: Some(addr(5)),
        ..sim.peer(&tk, 1, None)
    };
    let id = sim.node(0).add_peer(p, now).unwrap();
    let count = |sim: &Sim, want: &dyn Fn(&Event) -> bool| {
        sim.events.iter().filter(|(_, e)| want(e)).count()
    };
    sim.run_until(Duration::from_secs(170), |_| false);
    assert_eq!(count(&sim, &|e| *e == Event::PeerUnhealthy(id)), 0);
    sim.run_until(Duration::from_secs(15), |_| false);
    assert_eq!(
        count(&sim, &|e| *e == Event::PeerUnhealthy(id)),
        1,
        "unhealthy after 3 minutes"
    );
    // Checks every 60 s, rebuild after 2 failed checks, 5 rebuilds, then a 30-minute pause.
    sim.run_until(Duration::from_secs(2300), |_| false); // t ~ 2485 s
    assert_eq!(count(&sim, &|e| *e == Event::PeerRebuilt(id)), 5);
    assert_eq!(
        sim.status(0)[0].health,
        tether_tunnel::HealthState::CoolingDown
    );
    sim.run_until(Duration::from_secs(150), |_| false); // past the cool-down
    assert_eq!(count(&sim, &|e| *e == Event::PeerRebuilt(id)), 6);
    assert_eq!(
        count(&sim, &|e| *e == Event::PeerUnhealthy(id)),
        1,
        "alert raised once per episode"
    );
}

#[test]
fn garbage_datagrams_are_dropped_and_counted_never_panic() {
    let (mut sim, ..) = hub_and_target(21, Faults::clean());
    sim.node(1).listen(22).unwrap();
    connect(&mut sim, 0, overlay(1), 22, Duration::from_secs(10)).expect("connect");
    // Capture real datagrams to mutate.
    let c = sim.node(0).connect(overlay(1), 22).unwrap();
    let _ = c;
    let mut real = Vec::new();
    while let Some(t) = sim.node(0).poll_transmit() {
        real.push(t.payload);
    }
    assert!(!real.is_empty());
    let mut rng = Rng::new(99);
    let now = sim.now;
    let stranger = SocketAddr::from(([198, 51, 100, 7], 4444));
    let before: u64 = sim.node(1).totals().drops.iter().sum();
    for i in 0..3000 {
        let mut d = if i % 2 == 0 {
            let len = (rng.next() % 300) as usize;
            let mut v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if len >= 4 && i % 4 == 0 {
                v[0] = 1 + (rng.next() % 4) as u8; // plausible message type
                v[1..4].fill(0);
            }
            v
        } else {
            real[i % real.len()].clone()
        };
        if i % 2 == 1 && !d.is_empty() {
            let k = (rng.next() as usize) % d.len();
            d[k] ^= 1 << (rng.next() % 8);
        }
        sim.node(1).handle_datagram(stranger, &d, now);
    }
    let after: u64 = sim.node(1).totals().drops.iter().sum();
    assert!(
        after - before >= 2900,
        "only {} of 3000 garbage datagrams counted",
        after - before
    );
    // The endpoint did not roam to the stranger, and the tunnel still works.
    assert_eq!(sim.status(1)[0].endpoint, Some(addr(0)));
    connect(&mut sim, 0, overlay(1), 22, Duration::from_secs(10)).expect("still connects");
}

/// A peer cannot pin unbounded streams (and their 2 × 256 KiB buffers) on a node: incoming
/// streams over MAX_STREAMS_PER_PEER are reset and never reach the application, and a
/// released stream's buffers are freed once TCP is done, so the peer can open new ones.
#[test]
fn streams_per_peer_are_capped_and_released_ones_are_freed() {
    use tether_tunnel::MAX_STREAMS_PER_PEER;
    let (mut sim, ..) = hub_and_target(23, Faults::clean());
    sim.node(0).listen(22).unwrap();
    let mut opened = Vec::new();
    for _ in 0..MAX_STREAMS_PER_PEER + 8 {
        let id = sim.node(1).connect(overlay(0), 22).unwrap();
        opened.push(id);
        sim.run_until(Duration::from_millis(200), |_| false);
        while sim.node(0).accept(22).is_some() {}
    }
    sim.run_until(Duration::from_secs(3), |_| false);
    let held: Vec<_> = opened
        .iter()
        .filter(|id| !sim.node(1).readiness(**id).closed)
        .copied()
        .collect();
    assert_eq!(
        held.len(),
        MAX_STREAMS_PER_PEER,
        "the ones over the cap were reset"
    );
    let refused = sim.node(0).streams_refused_over_cap();
    assert!((1..=8).contains(&refused), "{refused}");
    assert!(sim.node(0).stream_count() <= MAX_STREAMS_PER_PEER + 8);
    // the target closes its streams: the hub frees them, and new ones are accepted again
    for id in &opened {
        sim.node(1).release(*id);
    }
    sim.run_until(Duration::from_secs(5), |_| false);
    let hub_held = sim.node(0).stream_count();
    // the hub's application never released its accepted streams: they are closed by the
    // remote and freed when the application drops them; the reset ones are freed already
    assert!(hub_held <= MAX_STREAMS_PER_PEER, "{hub_held}");
}
