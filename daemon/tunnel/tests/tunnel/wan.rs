//! One stream over a simulated WAN link (bandwidth, delay, optional bottleneck queue), in
//! simulated time: the stream buffers must grow with the bandwidth-delay product, stay within
//! their cap and the node budget, and shrink back when the stream goes idle.
//!
//! The measurement table of BENCHMARKS.md ("Tunnel: one stream over a WAN link") comes from
//! `wan_measure` (ignored; run it in release):
//! `cargo test --release -p tether-tunnel --test tunnel wan_measure -- --ignored --nocapture`.

use std::time::Duration;

use tether_tunnel::{NodeRole, SecretKey};

use crate::sim::{Faults, Sim, connect, overlay};

const KIB: usize = 1024;

/// A WAN link and the buffer settings of both nodes.
#[derive(Debug, Clone, Copy)]
struct Case {
    /// Link rate, bits per second (each direction).
    bits_per_sec: u64,
    /// Round-trip propagation delay.
    rtt: Duration,
    /// Bottleneck queue (zero = unbounded).
    queue: Duration,
    /// Buffer floor and cap per direction (cap <= floor: fixed buffers, the old behaviour).
    floor: usize,
    max: usize,
    /// How long the sender writes.
    send_for: Duration,
    /// Node budget for growth above the floors.
    budget: usize,
}

#[derive(Debug)]
struct Outcome {
    /// Goodput over the whole run, from the first byte written (slow start included), Mbit/s.
    mbps_all: f64,
    /// Goodput over the second half of the run, Mbit/s.
    mbps_steady: f64,
    /// Most buffer bytes the sender's / receiver's stream held at any time.
    peak_sender: usize,
    peak_receiver: usize,
    /// Buffer bytes each side's stream holds after 5 s of idleness.
    idle_sender: usize,
    idle_receiver: usize,
    /// Budget in use on each side after idleness (bytes above the floors).
    idle_grown: (usize, usize),
    queue_drops: u64,
    /// Bytes written but not (yet) read after the idle period.
    undelivered: usize,
}

/// Hub (node 0) writes to a target (node 1) over one stream for `case.send_for`, then both stay
/// idle for 5 s. Every byte is checked.
fn one_stream(case: Case) -> Outcome {
    let hk = SecretKey::generate().unwrap();
    let tk = SecretKey::generate().unwrap();
    let mut sim = Sim::new(
        0x77a9,
        Faults {
            latency: case.rtt / 2,
            rate: case.bits_per_sec / 8,
            queue: case.queue,
            ..Faults::clean()
        },
    );
    sim.buffer = case.floor;
    sim.buffer_max = case.max;
    sim.budget = case.budget;
    sim.add_node(&hk, NodeRole::Hub);
    sim.add_node(&tk, NodeRole::Target);
    let now = sim.now;
    let tp = sim.peer(&tk, 1, None);
    let hp = sim.peer(&hk, 0, None);
    sim.node(0).add_peer(tp, now).unwrap();
    sim.node(1).add_peer(hp, now).unwrap();
    sim.node(1).listen(22).unwrap();
    let c = connect(&mut sim, 0, overlay(1), 22, Duration::from_secs(10)).expect("connect");
    let mut chunk = vec![0u8; 64 * KIB];
    let mut buf = vec![0u8; 64 * KIB];
    let (mut sent, mut got) = (0usize, 0usize);
    let mut server = None;
    let (mut peak_sender, mut peak_receiver) = (0, 0);
    let t0 = sim.now;
    let half = t0 + case.send_for / 2;
    let mut got_at_half = None;
    sim.run_until(case.send_for, |s| {
        loop {
            for (k, b) in chunk.iter_mut().enumerate() {
                *b = pattern(sent + k);
            }
            match s.node(0).send(c, &chunk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("send: {e}"),
            }
        }
        if server.is_none() {
            server = s.node(1).accept(22);
        }
        if let Some(sv) = server {
            loop {
                match s.node(1).recv(sv, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        for (k, b) in buf[..n].iter().enumerate() {
                            assert_eq!(*b, pattern(got + k), "corrupted byte at {}", got + k);
                        }
                        got += n;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("recv: {e}"),
                }
            }
        }
        if got_at_half.is_none() && s.now >= half {
            got_at_half = Some((s.now, got));
        }
        peak_sender = peak_sender.max(s.node(0).stream_buffer_bytes());
        peak_receiver = peak_receiver.max(s.node(1).stream_buffer_bytes());
        false
    });
    // Only what was read while the sender was active counts towards the rates.
    let (t1, got_at_end) = (sim.now, got);
    let (th, gh) = got_at_half.unwrap();
    // Drain what is in flight (loss recovery may take a while), then stay idle for 5 s.
    sim.run_until(Duration::from_secs(60), |s| {
        if let Some(sv) = server {
            while let Ok(n) = s.node(1).recv(sv, &mut buf) {
                if n == 0 {
                    break;
                }
                got += n;
            }
        }
        got == sent
    });
    sim.run_until(Duration::from_secs(5), |_| false);
    let mbps = |bytes: usize, d: Duration| bytes as f64 * 8.0 / d.as_secs_f64() / 1e6;
    Outcome {
        mbps_all: mbps(got_at_end, t1 - t0),
        mbps_steady: mbps(got_at_end - gh, t1 - th),
        peak_sender,
        peak_receiver,
        idle_sender: sim.node(0).stream_buffer_bytes(),
        idle_receiver: sim.node(1).stream_buffer_bytes(),
        idle_grown: (
            sim.node(0).stream_buffer_bytes_grown(),
            sim.node(1).stream_buffer_bytes_grown(),
        ),
        queue_drops: sim.queue_drops,
        undelivered: sent - got,
    }
}

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}

/// 100 Mbit/s, 50 ms RTT (the figure: ~29 Mbit/s with fixed 256 KiB buffers).
fn wan_100m_50ms(floor: usize, max: usize, send_for: Duration) -> Case {
    Case {
        bits_per_sec: 100_000_000,
        rtt: Duration::from_millis(50),
        queue: Duration::ZERO,
        floor,
        max,
        send_for,
        budget: tether_tunnel::DEFAULT_TCP_MEMORY_BUDGET,
    }
}

#[test]
fn one_stream_fills_a_100_mbit_50_ms_link_and_shrinks_when_idle() {
    let d = tether_tunnel::DEFAULT_TCP_BUFFER;
    let o = one_stream(wan_100m_50ms(
        d,
        tether_tunnel::DEFAULT_TCP_BUFFER_MAX,
        Duration::from_secs(6),
    ));
    eprintln!("{o:?}");
    assert!(o.mbps_steady >= 80.0, "{o:?}");
    assert_eq!(o.undelivered, 0, "{o:?}");
    // It grew: a 64 KiB window alone allows ~10 Mbit/s at this RTT.
    assert!(o.peak_receiver > 4 * d && o.peak_sender > 4 * d, "{o:?}");
    // Within the per-direction cap.
    assert!(
        o.peak_receiver <= 2 * tether_tunnel::DEFAULT_TCP_BUFFER_MAX,
        "{o:?}"
    );
    // Idle: back to the floors, nothing left charged to the budget.
    assert_eq!(o.idle_sender, 2 * d, "{o:?}");
    assert_eq!(o.idle_receiver, 2 * d, "{o:?}");
    assert_eq!(o.idle_grown, (0, 0), "{o:?}");
}

#[test]
fn fixed_buffers_stay_fixed_when_the_cap_is_the_floor() {
    let b = 256 * KIB;
    let o = one_stream(wan_100m_50ms(b, b, Duration::from_secs(3)));
    eprintln!("{o:?}");
    assert_eq!((o.peak_sender, o.peak_receiver), (2 * b, 2 * b), "{o:?}");
    // The window caps the rate at about b / RTT (41.9 Mbit/s).
    assert!(o.mbps_steady < 45.0, "{o:?}");
    assert_eq!(o.undelivered, 0, "{o:?}");
}

#[test]
fn the_node_budget_bounds_growth() {
    let d = tether_tunnel::DEFAULT_TCP_BUFFER;
    // A budget of 256 KiB above the floors per node: each side's stream may hold at most its
    // floors plus 256 KiB, however much its bandwidth-delay product asks for.
    let case = Case {
        budget: 256 * KIB,
        ..wan_100m_50ms(
            d,
            tether_tunnel::DEFAULT_TCP_BUFFER_MAX,
            Duration::from_secs(3),
        )
    };
    let o = one_stream(case);
    eprintln!("{o:?}");
    assert!(o.peak_receiver <= 2 * d + 256 * KIB, "{o:?}");
    assert!(o.peak_sender <= 2 * d + 256 * KIB, "{o:?}");
    assert_eq!(o.undelivered, 0, "{o:?}");
}

/// The benchmark: before (fixed 256 KiB, the old default) and after (autotuned) in the
/// same run, over 100 Mbit/s @ 50 ms and 1 Gbit/s @ 20 ms, with an unbounded queue and with a
/// bottleneck queue of one bandwidth-delay product (tail drop).
#[test]
#[ignore]
fn wan_measure() {
    let old = 256 * KIB;
    let d = tether_tunnel::DEFAULT_TCP_BUFFER;
    let m = tether_tunnel::DEFAULT_TCP_BUFFER_MAX;
    println!(
        "| link | queue | buffers | goodput, whole run | goodput, 2nd half | peak buffers sender / receiver | idle after 5 s sender / receiver | queue drops |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (mbit, rtt_ms, secs) in [(100u64, 50u64, 20u64), (1000, 20, 10)] {
        let rtt = Duration::from_millis(rtt_ms);
        for queue in [Duration::ZERO, rtt, rtt / 5] {
            for (label, floor, max) in [
                ("fixed 256 KiB (before)", old, old),
                ("autotuned 64 KiB..8 MiB (after)", d, m),
            ] {
                let case = Case {
                    bits_per_sec: mbit * 1_000_000,
                    rtt,
                    queue,
                    floor,
                    max,
                    send_for: Duration::from_secs(secs),
                    budget: tether_tunnel::DEFAULT_TCP_MEMORY_BUDGET,
                };
                let real = std::time::Instant::now();
                let o = one_stream(case);
                let q = if queue.is_zero() {
                    "unbounded".to_string()
                } else {
                    format!("{} ms", queue.as_millis())
                };
                println!(
                    "| {mbit} Mbit/s, {rtt_ms} ms RTT | {q} | {label} | {:.1} Mbit/s | {:.1} Mbit/s | {} / {} KiB | {} / {} KiB | {} |",
                    o.mbps_all,
                    o.mbps_steady,
                    o.peak_sender / KIB,
                    o.peak_receiver / KIB,
                    o.idle_sender / KIB,
                    o.idle_receiver / KIB,
                    o.queue_drops,
                );
                eprintln!("  ({secs} s simulated in {:?})", real.elapsed());
            }
        }
    }
}

/// Shrinking an idle stream's buffers (the advertised window is cut back) and growing them again
/// when it resumes loses and corrupts nothing, in both directions of use.
#[test]
fn a_stream_that_idles_shrinks_then_regrows_without_losing_a_byte() {
    let d = tether_tunnel::DEFAULT_TCP_BUFFER;
    let hk = SecretKey::generate().unwrap();
    let tk = SecretKey::generate().unwrap();
    let mut sim = Sim::new(
        0x1d1e,
        Faults {
            latency: Duration::from_millis(25),
            rate: 12_500_000,
            ..Faults::clean()
        },
    );
    sim.add_node(&hk, NodeRole::Hub);
    sim.add_node(&tk, NodeRole::Target);
    let now = sim.now;
    let tp = sim.peer(&tk, 1, None);
    let hp = sim.peer(&hk, 0, None);
    sim.node(0).add_peer(tp, now).unwrap();
    sim.node(1).add_peer(hp, now).unwrap();
    sim.node(1).listen(22).unwrap();
    let c = connect(&mut sim, 0, overlay(1), 22, Duration::from_secs(10)).expect("connect");
    let mut server = None;
    let (mut sent, mut got) = (0usize, 0usize);
    let mut chunk = vec![0u8; 64 * KIB];
    let mut buf = vec![0u8; 64 * KIB];
    // Three bursts of 2 s, 5 s of silence after each; the stream direction flips each time.
    for burst in 0..3 {
        let t_end = sim.now + Duration::from_secs(2);
        let (tx, rx) = if burst % 2 == 0 { (0, 1) } else { (1, 0) };
        sim.run_until(Duration::from_secs(30), |s| {
            if server.is_none() {
                // The hub's client stream is `c`; the target's accepted one arrives once.
                server = s.node(1).accept(22);
            }
            let Some(sv) = server else { return false };
            let (ws, rs) = if tx == 0 { (c, sv) } else { (sv, c) };
            while s.now < t_end {
                for (k, b) in chunk.iter_mut().enumerate() {
                    *b = pattern(sent + k);
                }
                match s.node(tx).send(ws, &chunk) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("send: {e}"),
                }
            }
            loop {
                match s.node(rx).recv(rs, &mut buf) {
                    Ok(0) => panic!("unexpected end of stream"),
                    Ok(n) => {
                        for (k, b) in buf[..n].iter().enumerate() {
                            assert_eq!(*b, pattern(got + k), "corrupted byte at {}", got + k);
                        }
                        got += n;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("recv: {e}"),
                }
            }
            s.now >= t_end && got == sent
        });
        assert_eq!(got, sent, "burst {burst}: not everything arrived");
        let grown = sim.node(tx).stream_buffer_bytes();
        assert!(
            grown > 4 * d,
            "burst {burst}: buffers did not grow ({grown})"
        );
        sim.run_until(Duration::from_secs(5), |_| false);
        for n in 0..2 {
            assert_eq!(
                sim.node(n).stream_buffer_bytes(),
                2 * d,
                "burst {burst}, node {n}"
            );
            assert_eq!(sim.node(n).stream_buffer_bytes_grown(), 0);
        }
    }
    assert!(sent > 8 << 20, "{sent}");
}
