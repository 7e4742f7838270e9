//! Simulated-time tests of the sharded stack (issue #21): hub and peer stacks exchange IP
//! packets directly (no WireGuard), with an injected clock. Also the micro-benchmark against
//! main's unsharded stack (`stack_flat`), an ignored test run in release:
//! `cargo test --release -p tether-tunnel --lib shard_bench -- --ignored --nocapture`.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::types::{Event, StreamId};
use super::{stack, stack_flat};

const HUB: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const PORT: u16 = 22;

fn peer_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 1 + (i / 200) as u8, 1 + (i % 200) as u8)
}

fn ipv4_dst(p: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(p[16], p[17], p[18], p[19])
}

/// What the tests and the benchmark need of a stack, for both the sharded and main's stack.
trait Tcp: Sized {
    fn make(ip: Ipv4Addr, floor: usize, max: usize, epoch: Instant) -> Self;
    fn rx(&mut self, p: Vec<u8>);
    fn tx(&mut self) -> Option<Vec<u8>>;
    /// What `Node::pump` does.
    fn pump(&mut self, now: Instant, ev: &mut VecDeque<Event>);
    fn mark(&mut self);
    fn next(&mut self, now: Instant) -> Option<Instant>;
    fn conn(&mut self, ip: Ipv4Addr, port: u16) -> StreamId;
    fn lis(&mut self, port: u16, ev: &mut VecDeque<Event>);
    fn acc(&mut self, port: u16) -> Option<StreamId>;
    fn snd(&mut self, id: StreamId, d: &[u8]) -> io::Result<usize>;
    fn rcv(&mut self, id: StreamId, b: &mut [u8]) -> io::Result<usize>;
}

macro_rules! impl_tcp {
    ($m:ident, $lis:expr) => {
        impl Tcp for $m::Stack {
            fn make(ip: Ipv4Addr, floor: usize, max: usize, epoch: Instant) -> Self {
                let limits = $m::BufferLimits {
                    floor,
                    max,
                    budget: 1 << 30,
                };
                $m::Stack::new(ip, 16, 1420, limits, 7, u64::from(ip.to_bits()), epoch)
            }
            fn rx(&mut self, p: Vec<u8>) {
                self.receive(p)
            }
            fn tx(&mut self) -> Option<Vec<u8>> {
                self.pop_outbound()
            }
            fn pump(&mut self, now: Instant, ev: &mut VecDeque<Event>) {
                if self.take_dirty() {
                    self.poll(now);
                    self.update_streams(ev);
                    self.tune(now);
                }
            }
            fn mark(&mut self) {
                self.mark_dirty()
            }
            fn next(&mut self, now: Instant) -> Option<Instant> {
                self.poll_at(now)
            }
            fn conn(&mut self, ip: Ipv4Addr, port: u16) -> StreamId {
                self.connect(ip, port).unwrap()
            }
            fn lis(&mut self, port: u16, ev: &mut VecDeque<Event>) {
                let f: fn(&mut Self, u16, &mut VecDeque<Event>) = $lis;
                f(self, port, ev)
            }
            fn acc(&mut self, port: u16) -> Option<StreamId> {
                self.accept(port)
            }
            fn snd(&mut self, id: StreamId, d: &[u8]) -> io::Result<usize> {
                self.send(id, d)
            }
            fn rcv(&mut self, id: StreamId, b: &mut [u8]) -> io::Result<usize> {
                self.recv(id, b)
            }
        }
    };
}

impl_tcp!(stack, |s, p, _| s.listen(p).unwrap());
impl_tcp!(stack_flat, |s, p, ev| s.listen(p, ev).unwrap());

/// A hub and its peers on one simulated link with no delay.
struct Net<S: Tcp> {
    now: Instant,
    hub: S,
    hub_ev: VecDeque<Event>,
    peers: HashMap<Ipv4Addr, (S, VecDeque<Event>)>,
}

impl<S: Tcp> Net<S> {
    fn new(epoch: Instant) -> Self {
        Net {
            now: epoch,
            hub: S::make(HUB, 4096, 64 * 1024, epoch),
            hub_ev: VecDeque::new(),
            peers: HashMap::new(),
        }
    }

    fn add_peer(&mut self, ip: Ipv4Addr, listen: bool) {
        let mut p = S::make(ip, 4096, 4096, self.now);
        let mut ev = VecDeque::new();
        if listen {
            p.lis(PORT, &mut ev);
        }
        self.peers.insert(ip, (p, ev));
    }

    /// Moves packets until nothing moves, advancing the clock to each due timer (at most
    /// `limit` of simulated time).
    fn settle(&mut self, limit: Duration) {
        let end = self.now + limit;
        loop {
            let mut moved = true;
            while moved {
                moved = false;
                self.hub.pump(self.now, &mut self.hub_ev);
                while let Some(p) = self.hub.tx() {
                    if let Some((peer, _)) = self.peers.get_mut(&ipv4_dst(&p)) {
                        peer.rx(p);
                        moved = true;
                    }
                }
                for (peer, ev) in self.peers.values_mut() {
                    peer.pump(self.now, ev);
                    while let Some(p) = peer.tx() {
                        self.hub.rx(p);
                        moved = true;
                    }
                }
            }
            let mut next = self.hub.next(self.now);
            for (peer, _) in self.peers.values_mut() {
                next = match (next, peer.next(self.now)) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.hub.mark();
                    for (peer, _) in self.peers.values_mut() {
                        peer.mark();
                    }
                }
                _ => return,
            }
        }
    }
}

#[test]
fn streams_to_two_hundred_peers_all_carry_data_both_ways() {
    let mut net: Net<stack::Stack> = Net::new(Instant::now());
    let mut ids = Vec::new();
    for i in 0..200 {
        net.add_peer(peer_ip(i), true);
        ids.push((peer_ip(i), net.hub.conn(peer_ip(i), PORT)));
    }
    net.settle(Duration::from_secs(5));
    for (ip, id) in &ids {
        let msg = format!("to {ip}");
        assert_eq!(net.hub.snd(*id, msg.as_bytes()).unwrap(), msg.len());
    }
    net.settle(Duration::from_secs(5));
    for (ip, _) in &ids {
        let (peer, _) = net.peers.get_mut(ip).unwrap();
        let sid = peer.acc(PORT).expect("accepted");
        let mut b = [0u8; 64];
        let n = peer.rcv(sid, &mut b).unwrap();
        assert_eq!(&b[..n], format!("to {ip}").as_bytes());
        peer.snd(sid, format!("from {ip}").as_bytes()).unwrap();
    }
    net.settle(Duration::from_secs(5));
    for (ip, id) in &ids {
        let mut b = [0u8; 64];
        let n = net.hub.rcv(*id, &mut b).unwrap();
        assert_eq!(&b[..n], format!("from {ip}").as_bytes());
    }
    assert_eq!(net.hub.stream_count(), 200);
}

#[test]
fn a_packet_from_one_peer_runs_only_that_peers_shard() {
    let mut net: Net<stack::Stack> = Net::new(Instant::now());
    let mut ids = Vec::new();
    for i in 0..50 {
        net.add_peer(peer_ip(i), true);
        ids.push(net.hub.conn(peer_ip(i), PORT));
    }
    net.settle(Duration::from_secs(5));
    let ip = peer_ip(7);
    let (peer, _) = net.peers.get_mut(&ip).unwrap();
    let sid = peer.acc(PORT).unwrap();
    peer.snd(sid, b"x").unwrap();
    peer.pump(net.now, &mut VecDeque::new());
    let pkt = peer.tx().unwrap();
    let runs = net.hub.shard_runs;
    net.hub.rx(pkt);
    net.hub.pump(net.now, &mut net.hub_ev);
    assert_eq!(net.hub.shard_runs - runs, 1, "one shard run for one packet");
    let mut b = [0u8; 4];
    assert_eq!(net.hub.rcv(ids[7], &mut b).unwrap(), 1);
    // Time passing with no timer due runs no shard at all.
    let runs = net.hub.shard_runs;
    net.hub.mark_dirty();
    net.hub.pump(net.now, &mut net.hub_ev);
    assert!(net.hub.shard_runs - runs <= 1);
}

/// The driver parks a reader on every idle stream (a hub: one per pooled SSH connection) and,
/// after each stack run, asks only the streams the run may have changed. Before this set existed
/// it asked every parked stream after every run: O(streams) per datagram, 77 % of the hub's CPU
/// in a warm fan-out to 10,000 targets.
#[test]
fn a_packet_from_one_peer_changes_only_that_peers_stream() {
    let mut net: Net<stack::Stack> = Net::new(Instant::now());
    let mut ids = Vec::new();
    for i in 0..50 {
        net.add_peer(peer_ip(i), true);
        ids.push(net.hub.conn(peer_ip(i), PORT));
    }
    net.settle(Duration::from_secs(5));
    // Connecting changed them all.
    match net.hub.take_changed() {
        stack::Changed::Streams(mut got) => {
            got.sort();
            let mut want = ids.clone();
            want.sort();
            assert_eq!(got, want);
        }
        stack::Changed::All => panic!("50 streams do not overflow the set"),
    }
    assert!(!net.hub.has_changed());
    for &id in &ids {
        assert!(!net.hub.readiness(id).readable, "idle: nothing to read");
    }
    let ip = peer_ip(7);
    let (peer, _) = net.peers.get_mut(&ip).unwrap();
    let sid = peer.acc(PORT).unwrap();
    peer.snd(sid, b"x").unwrap();
    peer.pump(net.now, &mut VecDeque::new());
    let pkt = peer.tx().unwrap();
    net.hub.rx(pkt);
    net.hub.pump(net.now, &mut net.hub_ev);
    assert_eq!(
        net.hub.take_changed(),
        stack::Changed::Streams(vec![ids[7]]),
        "one packet, one stream to ask"
    );
    assert!(net.hub.readiness(ids[7]).readable);
    // A removed peer's stream is reported at once, and reads as closed.
    net.hub
        .abort_streams(|ip| ip == peer_ip(3), &mut VecDeque::new());
    assert_eq!(
        net.hub.take_changed(),
        stack::Changed::Streams(vec![ids[3]])
    );
    assert!(net.hub.readiness(ids[3]).closed);
    // The periodic safety sweep asks every stream.
    net.hub.mark_all_changed();
    assert_eq!(net.hub.take_changed(), stack::Changed::All);
    assert_eq!(net.hub.take_changed(), stack::Changed::Streams(vec![]));
}

#[test]
fn a_listener_accepts_from_a_peer_that_appears_after_listen() {
    let mut net: Net<stack::Stack> = Net::new(Instant::now());
    net.hub.lis(PORT, &mut VecDeque::new());
    let late = peer_ip(3);
    assert!(!net.hub.has_shard(late));
    net.add_peer(late, false);
    let (peer, _) = net.peers.get_mut(&late).unwrap();
    let id = peer.conn(HUB, PORT);
    net.settle(Duration::from_secs(5));
    let sid = net.hub.acc(PORT).expect("the hub accepted the late peer");
    assert_eq!(net.hub.stream_peer(sid), Some(late));
    let (peer, _) = net.peers.get_mut(&late).unwrap();
    peer.snd(id, b"hello").unwrap();
    net.settle(Duration::from_secs(5));
    let mut b = [0u8; 8];
    assert_eq!(net.hub.rcv(sid, &mut b).unwrap(), 5);
    // The LISTEN socket no SYN took was freed; the port still accepts a second peer.
    net.add_peer(peer_ip(4), false);
    let (peer, _) = net.peers.get_mut(&peer_ip(4)).unwrap();
    peer.conn(HUB, PORT);
    net.settle(Duration::from_secs(5));
    let sid2 = net.hub.acc(PORT).expect("a second peer accepted");
    assert_eq!(net.hub.stream_peer(sid2), Some(peer_ip(4)));
}

#[test]
fn removing_a_peer_drops_its_shard_and_leaves_the_others() {
    let mut net: Net<stack::Stack> = Net::new(Instant::now());
    let mut ids = Vec::new();
    for i in 0..3 {
        net.add_peer(peer_ip(i), true);
        ids.push(net.hub.conn(peer_ip(i), PORT));
    }
    net.settle(Duration::from_secs(5));
    let gone = peer_ip(1);
    let mut ev = VecDeque::new();
    net.hub.abort_streams(|ip| ip == gone, &mut ev);
    assert_eq!(ev, VecDeque::from([Event::StreamClosed(ids[1])]));
    net.hub.release(ids[1], net.now);
    net.peers.remove(&gone);
    net.settle(Duration::from_secs(5));
    assert!(
        !net.hub.has_shard(gone),
        "the removed peer's shard was dropped"
    );
    assert!(net.hub.has_shard(peer_ip(0)) && net.hub.has_shard(peer_ip(2)));
    assert_eq!(net.hub.stream_count(), 2);
    assert!(net.hub.snd(ids[2], b"still here").is_ok());
}

#[test]
fn poll_at_is_the_minimum_over_the_shards() {
    let t0 = Instant::now();
    let mut net: Net<stack::Stack> = Net::new(t0);
    // Peers that never answer: each SYN waits on its own retransmission timer.
    for (i, delay) in [(0usize, 0u64), (1, 300), (2, 100)] {
        net.now = t0 + Duration::from_millis(delay);
        net.hub.conn(peer_ip(i), PORT);
        net.hub.pump(net.now, &mut net.hub_ev);
        while net.hub.tx().is_some() {}
        assert_eq!(net.hub.next(net.now), net.hub.poll_at_scan(net.now));
    }
    let first = net.hub.next(net.now).unwrap();
    for step in 0..20 {
        net.now = net.hub.next(net.now).unwrap();
        net.hub.mark_dirty();
        net.hub.pump(net.now, &mut net.hub_ev);
        while net.hub.tx().is_some() {}
        let at = net.hub.next(net.now);
        assert_eq!(at, net.hub.poll_at_scan(net.now), "step {step}");
        assert!(at.is_none_or(|t| t >= first));
    }
}

/// ns per packet for a data segment to one of `n` idle streams and its ACK out, and the mean
/// number of shard runs (0 for main's stack).
fn per_packet<S: Tcp + Count>(n: usize, rounds: usize) -> f64 {
    let epoch = Instant::now();
    let mut net: Net<S> = Net::new(epoch);
    // Connect one peer at a time and forget the idle ones (the hub keeps their streams).
    let mut hot = None;
    for i in 0..n {
        let ip = peer_ip(i);
        net.add_peer(ip, true);
        let id = net.hub.conn(ip, PORT);
        net.settle(Duration::from_secs(2));
        if i == 0 {
            hot = Some((ip, id));
        } else {
            net.peers.remove(&ip);
        }
    }
    let (ip, hub_id) = hot.unwrap();
    // Let every stream settle (idle past autotune::IDLE_AFTER) and the tuners sweep.
    net.now += Duration::from_secs(30);
    net.hub.mark();
    net.settle(Duration::from_secs(1));
    let (peer, _) = net.peers.get_mut(&ip).unwrap();
    let sid = peer.acc(PORT).unwrap();
    let mut timed = Duration::ZERO;
    let mut b = [0u8; 16];
    let mut peer_ev = VecDeque::new();
    for _ in 0..rounds {
        net.now += Duration::from_millis(50);
        let (peer, _) = net.peers.get_mut(&ip).unwrap();
        peer.snd(sid, b"x").unwrap();
        peer.mark();
        peer.pump(net.now, &mut peer_ev);
        let pkts: Vec<Vec<u8>> = std::iter::from_fn(|| peer.tx()).collect();
        let start = Instant::now();
        for p in pkts {
            net.hub.rx(p);
        }
        net.hub.pump(net.now, &mut net.hub_ev);
        assert_eq!(net.hub.rcv(hub_id, &mut b).unwrap(), 1);
        net.hub.pump(net.now, &mut net.hub_ev);
        // The delayed ACK.
        let mut out: Vec<Vec<u8>> = std::iter::from_fn(|| net.hub.tx()).collect();
        if out.is_empty() {
            let at = net.hub.next(net.now).unwrap();
            net.hub.mark();
            net.hub.pump(at, &mut net.hub_ev);
            out.extend(std::iter::from_fn(|| net.hub.tx()));
        }
        timed += start.elapsed();
        assert!(!out.is_empty(), "an ACK went out");
        let (peer, _) = net.peers.get_mut(&ip).unwrap();
        for p in out {
            peer.rx(p);
        }
        net.settle(Duration::from_millis(40));
    }
    assert_eq!(net.hub.stream_count_any(), n);
    timed.as_nanos() as f64 / rounds as f64
}

trait Count {
    fn stream_count_any(&self) -> usize;
}
impl Count for stack::Stack {
    fn stream_count_any(&self) -> usize {
        self.stream_count()
    }
}
impl Count for stack_flat::Stack {
    fn stream_count_any(&self) -> usize {
        self.stream_count()
    }
}

#[test]
#[ignore = "micro-benchmark: run in release with --ignored --nocapture"]
fn shard_bench() {
    let sizes: Vec<usize> = std::env::var("SHARD_BENCH_N")
        .map(|v| v.split(',').map(|x| x.parse().unwrap()).collect())
        .unwrap_or_else(|_| vec![100, 1000, 10000]);
    let rounds = 2000;
    println!("shard_bench: ns per data segment in + ACK out, {rounds} rounds, one node");
    for n in sizes {
        let flat = per_packet::<stack_flat::Stack>(n, rounds);
        let sharded = per_packet::<stack::Stack>(n, rounds);
        println!(
            "N={n:>6}  main(one SocketSet) {flat:>10.0} ns  sharded {sharded:>8.0} ns  ratio {:.1}x",
            flat / sharded
        );
    }
}

#[test]
fn the_micro_benchmark_runs_on_a_small_node() {
    // Keeps the benchmark code compiling and correct: both stacks deliver and ACK.
    assert!(per_packet::<stack_flat::Stack>(5, 3) > 0.0);
    assert!(per_packet::<stack::Stack>(5, 3) > 0.0);
}
