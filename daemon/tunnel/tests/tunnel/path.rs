//! Path selection in simulated time: direct UDP when it works, a relay when it does not, both
//! ways, relay failover, the hub answering on its target's relay, probes only for relayed peers,
//! and relayed datagrams that are not what they claim.

use std::time::Duration;

use tether_tunnel::{
    DropReason, Event, Node, NodeConfig, NodeRole, PeerConfig, PeerId, PublicKey, SecretKey,
    StreamId,
};

use super::sim::{Faults, Sim, addr, connect, overlay};

/// 10 ms each way, 2 MB/s per sender: slow enough that a few MiB span several path switches.
fn faults() -> Faults {
    Faults {
        latency: Duration::from_millis(10),
        rate: 2_000_000,
        ..Faults::clean()
    }
}

fn byte(i: usize) -> u8 {
    (i.wrapping_mul(2654435761) >> 11) as u8
}

/// One overlay stream from node `from` to a listener on node `to`, every byte checked.
struct Flow {
    from: usize,
    to: usize,
    port: u16,
    client: StreamId,
    server: Option<StreamId>,
    sent: usize,
    received: usize,
    total: usize,
    mismatch: Option<usize>,
}

impl Flow {
    fn open(sim: &mut Sim, from: usize, to: usize, port: u16, total: usize) -> Flow {
        sim.node(to).listen(port).unwrap();
        let client =
            connect(sim, from, overlay(to), port, Duration::from_secs(60)).expect("connects");
        Flow {
            from,
            to,
            port,
            client,
            server: None,
            sent: 0,
            received: 0,
            total,
            mismatch: None,
        }
    }

    fn pump(&mut self, s: &mut Sim) {
        let mut chunk = [0u8; 16 * 1024];
        while self.sent < self.total {
            let n = chunk.len().min(self.total - self.sent);
            for (k, b) in chunk[..n].iter_mut().enumerate() {
                *b = byte(self.sent + k);
            }
            match s.node(self.from).send(self.client, &chunk[..n]) {
                Ok(w) => self.sent += w,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("send failed: {e}"),
            }
        }
        if self.server.is_none() {
            self.server = s.node(self.to).accept(self.port);
        }
        let Some(sv) = self.server else { return };
        let mut buf = [0u8; 64 * 1024];
        loop {
            match s.node(self.to).recv(sv, &mut buf) {
                Ok(0) => panic!("the stream ended early"),
                Ok(n) => {
                    for (k, b) in buf[..n].iter().enumerate() {
                        if *b != byte(self.received + k) && self.mismatch.is_none() {
                            self.mismatch = Some(self.received + k);
                        }
                    }
                    self.received += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("recv failed (stream lost): {e}"),
            }
        }
    }

    /// Runs until `n` bytes arrived (or `max` passes).
    fn until(&mut self, sim: &mut Sim, n: usize, max: Duration) {
        let ok = sim.run_until(max, |s| {
            self.pump(s);
            self.received >= n
        });
        assert!(ok, "only {} of {n} bytes arrived", self.received);
        assert_eq!(self.mismatch, None, "corrupted byte");
    }

    /// Keeps the stream going while waiting for `cond`; returns whether it held within `max`.
    fn during(
        &mut self,
        sim: &mut Sim,
        max: Duration,
        mut cond: impl FnMut(&mut Sim) -> bool,
    ) -> bool {
        sim.run_until(max, |s| {
            self.pump(s);
            cond(s)
        })
    }
}

struct Net {
    sim: Sim,
    /// The target as a peer of the hub (node 0).
    t_on_hub: PeerId,
    /// The hub as a peer of the target (node 1).
    h_on_t: PeerId,
}

/// Hub (node 0) and a target (node 1) that knows the hub's UDP endpoint; the hub learns the
/// target's only when it hears from it (as enrolled targets are added).
fn net() -> Net {
    let hk = SecretKey::generate().unwrap();
    let tk = SecretKey::generate().unwrap();
    let mut sim = Sim::new(0x9a7e, faults());
    let h = sim.add_node(&hk, NodeRole::Hub);
    let t = sim.add_node(&tk, NodeRole::Target);
    let now = sim.now;
    let mut tp = sim.peer(&tk, t, None);
    tp.endpoint = None;
    let hp = sim.peer(&hk, h, None);
    let t_on_hub = sim.node(h).add_peer(tp, now).unwrap();
    let h_on_t = sim.node(t).add_peer(hp, now).unwrap();
    Net {
        sim,
        t_on_hub,
        h_on_t,
    }
}

/// A relay both nodes in `nodes` registered and are connected to.
fn relay(sim: &mut Sim, name: &str, nodes: &[usize]) -> usize {
    let r = sim.add_relay(name);
    for &i in nodes {
        sim.join_relay(r, i);
        sim.relay_conn(r, i, true);
    }
    r
}

fn path(sim: &Sim, node: usize, peer: PeerId) -> String {
    sim.nodes[node].1.as_ref().unwrap().peer_path(peer).unwrap()
}

/// Path changes node `node` reported, as (from, to).
fn switches(sim: &Sim, node: usize) -> Vec<(String, String)> {
    sim.events
        .iter()
        .filter(|(i, _)| *i == node)
        .filter_map(|(_, e)| match e {
            Event::PathChanged { from, to, .. } => Some((from.clone(), to.clone())),
            _ => None,
        })
        .collect()
}

fn sw(from: &str, to: &str) -> (String, String) {
    (from.to_owned(), to.to_owned())
}

#[test]
fn blocked_udp_falls_back_to_the_relay_after_the_direct_timeout() {
    let Net {
        mut sim,
        t_on_hub,
        h_on_t,
    } = net();
    relay(&mut sim, "r1", &[0, 1]);
    assert_eq!(path(&sim, 1, h_on_t), "direct");
    sim.udp_blocked[1] = true;
    let t0 = sim.now;
    let mut flow = Flow::open(&mut sim, 1, 0, 7000, 1 << 20);
    let took = sim.now - t0;
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(8),
        "connected through the relay after {took:?}; want just over the 5 s direct timeout"
    );
    assert_eq!(path(&sim, 1, h_on_t), "relay:r1");
    assert_eq!(path(&sim, 0, t_on_hub), "relay:r1");
    flow.until(&mut sim, 1 << 20, Duration::from_secs(60));
    assert_eq!(switches(&sim, 1), vec![sw("direct", "relay:r1")]);
    assert_eq!(switches(&sim, 0), vec![sw("direct", "relay:r1")]);
    let st = sim.status(1);
    assert_eq!(st[0].path, "relay:r1");
    assert!(sim.relays[0].forwarded > 100);
}

#[test]
fn udp_that_works_again_takes_over_and_a_new_block_falls_back_without_losing_the_stream() {
    let Net {
        mut sim,
        t_on_hub,
        h_on_t,
    } = net();
    relay(&mut sim, "r1", &[0, 1]);
    sim.udp_blocked[1] = true;
    // The hub learns of the target when the target calls (as an enrolled target does).
    let mut hello = Flow::open(&mut sim, 1, 0, 7001, 1024);
    hello.until(&mut sim, 1024, Duration::from_secs(30));
    let total = 12 << 20;
    let mut flow = Flow::open(&mut sim, 0, 1, 7000, total);
    flow.until(&mut sim, 2 << 20, Duration::from_secs(60));
    assert_eq!(path(&sim, 1, h_on_t), "relay:r1");
    let hs_relayed = sim.status(0)[0].handshakes;

    // Unblock: the next probe (every 3 s) gets through and both ends move to direct.
    sim.udp_blocked[1] = false;
    let t0 = sim.now;
    let back = flow.during(&mut sim, Duration::from_secs(10), |s| {
        path(s, 0, t_on_hub) == "direct" && path(s, 1, h_on_t) == "direct"
    });
    let took = sim.now - t0;
    assert!(back, "still relayed 10 s after UDP was unblocked");
    assert!(
        took <= Duration::from_secs(5),
        "back to direct after {took:?}"
    );
    let relayed = sim.relays[0].forwarded;
    flow.until(&mut sim, 6 << 20, Duration::from_secs(60));
    assert!(
        sim.relays[0].forwarded - relayed < 10,
        "data kept going through the relay after the switch to direct"
    );

    // Same WireGuard session: a switch only changes where datagrams go.
    assert_eq!(sim.status(0)[0].handshakes, hs_relayed);
    // Block again mid-transfer: WireGuard's timers notice the silence and both ends fall back.
    sim.udp_blocked[1] = true;
    let t0 = sim.now;
    let fell = flow.during(&mut sim, Duration::from_secs(40), |s| {
        path(s, 0, t_on_hub) == "relay:r1" && path(s, 1, h_on_t) == "relay:r1"
    });
    assert!(
        fell,
        "not back on the relay 40 s after UDP was blocked again"
    );
    eprintln!("fell back to the relay {:?} after the block", sim.now - t0);
    // The stream retransmits at once on the new path instead of waiting out the backoff it
    // earned during the silence.
    let at = flow.received;
    let t1 = sim.now;
    let mut moved = false;
    sim.run_until(Duration::from_secs(30), |s| {
        flow.pump(s);
        moved = flow.received > at;
        moved
    });
    assert!(moved);
    assert!(
        sim.now - t1 < Duration::from_secs(1),
        "the stream stalled {:?} after the switch",
        sim.now - t1
    );
    flow.until(&mut sim, total, Duration::from_secs(120));
    assert_eq!(flow.received, total);
    let want = vec![
        sw("direct", "relay:r1"),
        sw("relay:r1", "direct"),
        sw("direct", "relay:r1"),
    ];
    assert_eq!(switches(&sim, 0), want);
    assert_eq!(switches(&sim, 1), want);
    // At most WireGuard's own dead-peer re-handshake during the second block.
    assert!(
        sim.status(0)[0].handshakes <= hs_relayed + 1,
        "{:?}",
        sim.status(0)
    );
}

#[test]
fn a_relay_going_down_moves_its_peers_to_the_next_relay_mid_transfer() {
    let Net {
        mut sim,
        t_on_hub,
        h_on_t,
    } = net();
    let a = relay(&mut sim, "a", &[0, 1]);
    relay(&mut sim, "b", &[0, 1]);
    sim.udp_blocked[1] = true;
    let total = 6 << 20;
    let mut flow = Flow::open(&mut sim, 1, 0, 7000, total);
    flow.until(&mut sim, 2 << 20, Duration::from_secs(60));
    assert_eq!(path(&sim, 1, h_on_t), "relay:a");
    assert_eq!(path(&sim, 0, t_on_hub), "relay:a");

    // The target loses relay a (the hub is still connected to it): the target moves to b at
    // once and the hub follows as soon as it hears the target there.
    sim.relay_conn(a, 1, false);
    assert_eq!(path(&sim, 1, h_on_t), "relay:b");
    let t0 = sim.now;
    let followed = flow.during(&mut sim, Duration::from_secs(5), |s| {
        path(s, 0, t_on_hub) == "relay:b"
    });
    assert!(followed, "the hub kept answering on relay a");
    assert!(
        sim.now - t0 < Duration::from_millis(100),
        "{:?}",
        sim.now - t0
    );
    flow.until(&mut sim, 4 << 20, Duration::from_secs(60));

    // Relay b goes away for both: nothing else is up, so back to (blocked) direct; when a comes
    // back the peers use it.
    let b = 1;
    sim.relay_conn(b, 0, false);
    sim.relay_conn(b, 1, false);
    assert_eq!(path(&sim, 1, h_on_t), "direct");
    sim.relay_conn(a, 1, true);
    let recovered = flow.during(&mut sim, Duration::from_secs(60), |s| {
        path(s, 0, t_on_hub) == "relay:a" && path(s, 1, h_on_t) == "relay:a"
    });
    assert!(recovered, "not on relay a again after it came back");
    flow.until(&mut sim, total, Duration::from_secs(120));
    assert_eq!(
        switches(&sim, 1),
        vec![
            sw("direct", "relay:a"),
            sw("relay:a", "relay:b"),
            sw("relay:b", "direct"),
            sw("direct", "relay:a"),
        ]
    );
}

#[test]
fn the_hub_answers_on_the_relay_its_target_uses() {
    let Net {
        mut sim,
        t_on_hub,
        h_on_t,
    } = net();
    // The hub has relays a and b, in that order; the target only b.
    relay(&mut sim, "a", &[0]);
    relay(&mut sim, "b", &[0, 1]);
    sim.udp_blocked[1] = true;
    let mut flow = Flow::open(&mut sim, 1, 0, 7000, 1 << 20);
    flow.until(&mut sim, 1 << 20, Duration::from_secs(60));
    assert_eq!(path(&sim, 1, h_on_t), "relay:b");
    assert_eq!(path(&sim, 0, t_on_hub), "relay:b");
    assert_eq!(switches(&sim, 0), vec![sw("direct", "relay:b")]);
    assert_eq!(sim.relays[0].forwarded, 0, "the hub sent through relay a");
    assert_eq!(sim.relay_drops, 0);
}

#[test]
fn only_peers_on_a_relay_are_probed_with_fresh_keepalives() {
    let hk = SecretKey::generate().unwrap();
    let mut sim = Sim::new(0x9a7f, faults());
    let h = sim.add_node(&hk, NodeRole::Hub);
    let mut on_hub = Vec::new();
    for _ in 0..2 {
        let tk = SecretKey::generate().unwrap();
        let t = sim.add_node(&tk, NodeRole::Target);
        let now = sim.now;
        let tp = sim.peer(&tk, t, None);
        let hp = sim.peer(&hk, h, None);
        on_hub.push(sim.node(h).add_peer(tp, now).unwrap());
        sim.node(t).add_peer(hp, now).unwrap();
    }
    relay(&mut sim, "r", &[0, 1, 2]);
    sim.udp_blocked[1] = true;
    let mut f1 = Flow::open(&mut sim, 1, 0, 7001, 64 * 1024);
    f1.until(&mut sim, 64 * 1024, Duration::from_secs(30));
    let mut f2 = Flow::open(&mut sim, 2, 0, 7002, 64 * 1024);
    f2.until(&mut sim, 64 * 1024, Duration::from_secs(30));
    assert_eq!(path(&sim, 0, on_hub[0]), "relay:r");
    assert_eq!(path(&sim, 0, on_hub[1]), "direct");
    // Let passive keepalives after the transfers pass, then watch an idle minute.
    let until = sim.now + Duration::from_secs(20);
    sim.run_until(Duration::from_secs(20), |s| s.now >= until);
    sim.udp_log.clear();
    let until = sim.now + Duration::from_secs(60);
    sim.run_until(Duration::from_secs(60), |s| s.now >= until);
    let to = |i: usize| -> Vec<&Vec<u8>> {
        sim.udp_log
            .iter()
            .filter(|(_, from, dst, _)| *from == 0 && *dst == addr(i))
            .map(|(.., p)| p)
            .collect()
    };
    let probes = to(1);
    assert!(
        (18..=21).contains(&probes.len()),
        "{} probes in 60 s at one per 3 s",
        probes.len()
    );
    for p in &probes {
        assert_eq!((p[0], p.len()), (4, 32), "a probe is a keepalive");
    }
    let mut distinct = probes.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), probes.len(), "a probe was a copy");
    assert!(
        to(2).is_empty(),
        "the direct peer was probed: {}",
        to(2).len()
    );
    // The relayed target probes the hub too; the direct one sends nothing while idle.
    let from = |i: usize| sim.udp_log.iter().filter(|(_, f, ..)| *f == i).count();
    assert!((18..=21).contains(&from(1)), "{}", from(1));
    assert_eq!(from(2), 0);
}

#[test]
fn relayed_datagrams_from_unknown_or_wrong_keys_change_nothing() {
    let Net {
        mut sim, t_on_hub, ..
    } = net();
    let r = relay(&mut sim, "r1", &[0, 1]);
    let rid = sim.relays[r].ids[0].unwrap();
    let now = sim.now;
    // A stranger's handshake initiation to the hub, as a relay would deliver it.
    let sk = SecretKey::generate().unwrap();
    let mut stranger = Node::new(
        NodeConfig::new(sk.clone(), overlay(9), NodeRole::Target),
        now,
    )
    .unwrap();
    stranger
        .add_peer(
            PeerConfig {
                name: "hub".into(),
                public_key: sim.keys[0],
                overlay_ip: overlay(0),
                endpoint: Some(addr(0)),
                persistent_keepalive: Some(25),
            },
            now,
        )
        .unwrap();
    let init = stranger
        .poll_transmit()
        .expect("a handshake initiation")
        .payload;
    assert_eq!(init[0], 1);
    let before = sim.node(0).totals().drops;
    sim.node(0).handle_relayed(rid, sk.public_key(), &init, now);
    sim.node(0)
        .handle_relayed(rid, PublicKey([7; 32]), b"not even wireguard", now);
    let after = sim.node(0).totals().drops;
    let i = DropReason::ALL
        .iter()
        .position(|r| *r == DropReason::RelayUnknownKey)
        .unwrap();
    assert_eq!(after[i] - before[i], 2);
    // The same initiation claiming to come from the target's key: WireGuard rejects it for that
    // peer, whose path and endpoint stay as they were.
    let target_key = sim.keys[1];
    sim.node(0).handle_relayed(rid, target_key, &init, now);
    let st = sim.status(0);
    assert_eq!(st[0].path, "direct");
    assert_eq!(st[0].endpoint, None);
    assert_eq!(st[0].drops.get("rejected"), Some(&1), "{:?}", st[0].drops);
    assert_eq!(path(&sim, 0, t_on_hub), "direct");
    assert!(
        sim.node(0).poll_transmit().is_none(),
        "answered a forged datagram"
    );
    assert!(switches(&sim, 0).is_empty());
}

#[test]
fn a_target_that_knows_no_hub_endpoint_uses_a_relay_as_soon_as_one_is_up() {
    let hk = SecretKey::generate().unwrap();
    let tk = SecretKey::generate().unwrap();
    let mut sim = Sim::new(0x9a80, faults());
    let h = sim.add_node(&hk, NodeRole::Hub);
    let t = sim.add_node(&tk, NodeRole::Target);
    let now = sim.now;
    let mut tp = sim.peer(&tk, t, None);
    tp.endpoint = None;
    let mut hp = sim.peer(&hk, h, None);
    hp.endpoint = None;
    let t_on_hub = sim.node(h).add_peer(tp, now).unwrap();
    let h_on_t = sim.node(t).add_peer(hp, now).unwrap();
    let r = sim.add_relay("r1");
    sim.join_relay(r, h);
    sim.join_relay(r, t);
    sim.relay_conn(r, h, true);
    assert_eq!(path(&sim, t, h_on_t), "direct");
    sim.relay_conn(r, t, true);
    assert_eq!(path(&sim, t, h_on_t), "relay:r1");
    let t0 = sim.now;
    let mut flow = Flow::open(&mut sim, t, h, 7000, 256 * 1024);
    assert!(sim.now - t0 < Duration::from_secs(1), "{:?}", sim.now - t0);
    flow.until(&mut sim, 256 * 1024, Duration::from_secs(30));
    assert_eq!(path(&sim, h, t_on_hub), "relay:r1");
    assert!(
        sim.udp_log.is_empty(),
        "sent UDP with no endpoint to send to"
    );
    // The hub never probes a peer whose UDP endpoint it does not know.
    let until = sim.now + Duration::from_secs(30);
    sim.run_until(Duration::from_secs(30), |s| s.now >= until);
    assert!(sim.udp_log.is_empty());
}

#[test]
fn a_target_tries_the_next_relay_when_the_hub_is_not_on_the_first() {
    let Net {
        mut sim,
        t_on_hub,
        h_on_t,
    } = net();
    // The target has relays a and b, in that order; the hub is only on b.
    let a = sim.add_relay("a");
    sim.join_relay(a, 1);
    sim.relay_conn(a, 1, true);
    relay(&mut sim, "b", &[0, 1]);
    sim.udp_blocked[1] = true;
    let t0 = sim.now;
    let mut flow = Flow::open(&mut sim, 1, 0, 7000, 256 * 1024);
    let took = sim.now - t0;
    assert!(took < Duration::from_secs(12), "connected after {took:?}");
    flow.until(&mut sim, 256 * 1024, Duration::from_secs(30));
    assert_eq!(path(&sim, 1, h_on_t), "relay:b");
    assert_eq!(path(&sim, 0, t_on_hub), "relay:b");
    assert_eq!(
        switches(&sim, 1),
        vec![sw("direct", "relay:a"), sw("relay:a", "relay:b")]
    );
}

#[test]
fn with_the_hub_unreachable_a_target_tries_each_path_once_a_minute_not_more() {
    let Net { mut sim, .. } = net();
    let a = sim.add_relay("a");
    let b = sim.add_relay("b");
    for r in [a, b] {
        sim.join_relay(r, 1);
        sim.relay_conn(r, 1, true);
    }
    sim.nodes[0].1 = None; // the hub is gone
    // Persistent keepalives keep the target trying to reach it.
    let hk = sim.keys[0];
    let now = sim.now;
    let target = sim.node(1);
    let id = target.peer_by_ip(overlay(0)).unwrap();
    target.remove_peer(id).unwrap();
    target
        .add_peer(
            PeerConfig {
                name: "hub".into(),
                public_key: hk,
                overlay_ip: overlay(0),
                endpoint: Some(addr(0)),
                persistent_keepalive: Some(25),
            },
            now,
        )
        .unwrap();
    let until = sim.now + Duration::from_secs(130);
    sim.run_until(Duration::from_secs(130), |s| s.now >= until);
    let got = switches(&sim, 1);
    let round = [
        sw("direct", "relay:a"),
        sw("relay:a", "relay:b"),
        sw("relay:b", "direct"),
    ];
    assert!(
        (5..=7).contains(&got.len()) && got.iter().zip(round.iter().cycle()).all(|(g, w)| g == w),
        "{got:?}"
    );
}
