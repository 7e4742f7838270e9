//! Main's unsharded stack (one `SocketSet` for the whole node), kept verbatim for tests
//! only: the baseline of the sharding micro-benchmark in `stack_tests` (issue #21).
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use super::autotune::{self, MinRtt, Tuner, Want};
use super::types::{Event, StreamId};
use crate::TunnelError;
use crate::device::QueueDevice;

/// Per-direction TCP socket buffer an overlay stream starts with, and shrinks back to when idle
/// (its floor). On loopback 64 KiB is as fast as bigger buffers (BENCHMARKS.md, "Tunnel"); over a
/// WAN the buffers grow with the stream's bandwidth-delay product (see [`DEFAULT_TCP_BUFFER_MAX`]).
pub const DEFAULT_TCP_BUFFER: usize = 64 * 1024;
/// A fixed per-direction stream buffer for callers that turn autotuning off (`tcp_buffer` and
/// `tcp_buffer_max` both set to it): the size streams had before autotuning.
/// [`crate::NodeConfig::new`] autotunes from [`DEFAULT_TCP_BUFFER`] up to
/// [`DEFAULT_TCP_BUFFER_MAX`].
pub const FIXED_TCP_BUFFER: usize = 256 * 1024;
/// Most a stream's buffer may grow to, per direction: 8 MiB is twice the bandwidth-delay product
/// of 1 Gbit/s at 33 ms (or 100 Mbit/s at 330 ms), the window one stream needs to fill such a path.
/// The window scale is chosen so that this much can be advertised.
pub const DEFAULT_TCP_BUFFER_MAX: usize = 8 * 1024 * 1024;
/// Most bytes all streams of a node may hold above their floors together: 128 MiB is 16
/// directions grown to the 8 MiB cap. Growth past it is refused (streams keep what they have and
/// still work, at a rate bounded by their window).
pub const DEFAULT_TCP_MEMORY_BUDGET: usize = 128 * 1024 * 1024;

/// A released stream that the remote never finishes closing is aborted after this long.
const LINGER: Duration = Duration::from_secs(60);
/// Listening sockets kept in LISTEN state per port (each accepts one SYN).
const LISTEN_BACKLOG: usize = 2;
/// Max half-open (SYN received, not yet accepted) sockets per port.
const MAX_PENDING: usize = 8;
const EPHEMERAL_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// Most streams one peer may have open towards this node's listeners, released-but-lingering
/// ones included (each holds two buffers at their floor, [`DEFAULT_TCP_BUFFER`], so one peer
/// pins at most 64 × 128 KiB = 8 MiB of floors; growth above the floors comes out of the node's
/// [`DEFAULT_TCP_MEMORY_BUDGET`]). A connection over the cap is reset at once and never reaches
/// the application; streams this node opened itself are not limited.
pub const MAX_STREAMS_PER_PEER: usize = 64;

/// Readiness of a stream, for drivers that park tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readiness {
    /// `recv` would not return `WouldBlock`.
    pub readable: bool,
    /// `send` would not return `WouldBlock`.
    pub writable: bool,
    /// The TCP handshake completed at some point.
    pub connected: bool,
    /// The stream is closed for good.
    pub closed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Open,
    Closed,
}

/// Buffer sizes of the streams: floor, cap, node budget. `max <= floor` turns autotuning off
/// (fixed buffers of `floor` bytes, window scale derived from them, as smoltcp does by default).
#[derive(Debug, Clone, Copy)]
pub(super) struct BufferLimits {
    /// Per-direction size at creation and after an idle shrink.
    pub(super) floor: usize,
    /// Per-direction cap.
    pub(super) max: usize,
    /// Bytes all streams may hold above their floors together.
    pub(super) budget: usize,
}

impl BufferLimits {
    fn autotune(&self) -> bool {
        self.max > self.floor
    }
}

/// Autotuning state of one stream (see `autotune`).
struct Tuning {
    rx: Tuner,
    tx: Tuner,
    rtt: MinRtt,
    /// Bytes the application read / wrote (monotonic).
    read_total: u64,
    written_total: u64,
    /// Receive-side round-trip measurement (Linux's `tcp_rcv_rtt_measure`): when it started and
    /// the received total at which one full window has arrived since.
    rcv_mark: Option<(Instant, u64)>,
    /// The received total last seen, and when it last changed.
    last_received: (u64, Instant),
    /// The acknowledged total last seen.
    last_acked: u64,
    /// When bytes last moved either way.
    last_active: Instant,
    /// The sender's smoothed RTT last seen.
    last_srtt: Option<Duration>,
    /// Idle both ways past [`autotune::IDLE_AFTER`] with both buffers at their floor and
    /// nothing queued: until a byte moves, a tuning pass would change nothing, so it is skipped
    /// (a hub holds thousands of such pooled connections; visiting each fully on every stack
    /// run was the largest cost of a fan-out to 10,000).
    settled: bool,
}

impl Tuning {
    fn new(floor: usize, max: usize, now: Instant) -> Self {
        Tuning {
            rx: Tuner::new(floor, max, autotune::RX_GROWTH, now),
            tx: Tuner::new(floor, max, autotune::TX_GROWTH, now),
            rtt: MinRtt::default(),
            read_total: 0,
            written_total: 0,
            rcv_mark: None,
            last_received: (0, now),
            last_acked: 0,
            last_active: now,
            last_srtt: None,
            settled: false,
        }
    }
}

struct StreamMeta {
    handle: SocketHandle,
    remote: Ipv4Addr,
    phase: Phase,
    reset: bool,
    aborted: bool,
    released_at: Option<Instant>,
    last_state: tcp::State,
    tuning: Tuning,
}

impl StreamMeta {
    fn new(
        handle: SocketHandle,
        remote: Ipv4Addr,
        phase: Phase,
        last_state: tcp::State,
        tuning: Tuning,
    ) -> Self {
        StreamMeta {
            handle,
            remote,
            phase,
            reset: false,
            aborted: false,
            released_at: None,
            last_state,
            tuning,
        }
    }
}

#[derive(Default)]
struct Listener {
    sockets: Vec<SocketHandle>,
    ready: VecDeque<StreamId>,
}

/// The node's TCP/IP stack and its streams. Times are the node's injected clock.
pub(super) struct Stack {
    iface: Interface,
    device: QueueDevice,
    sockets: SocketSet<'static>,
    streams: HashMap<StreamId, StreamMeta>,
    listeners: HashMap<u16, Listener>,
    limits: BufferLimits,
    /// Bytes the streams hold above their floors (counted against `limits.budget`).
    grown: usize,
    next_port: u16,
    next_stream: u64,
    /// The injected time smoltcp's clock starts at.
    epoch: Instant,
    /// The time of the last stack run (new streams start their tuning clock there).
    last_now: Instant,
    /// When [`Stack::tune`] last ran.
    last_tune: Option<Instant>,
    /// Inbound packets or socket calls are waiting for a [`Stack::poll`].
    dirty: bool,
    /// Incoming streams reset because their peer was at [`MAX_STREAMS_PER_PEER`].
    pub(super) refused_over_cap: u64,
    /// Their sockets, freed at the next update (after the RST is sent).
    resetting: Vec<SocketHandle>,
}

impl Stack {
    /// A stack with address `ip/prefix_len`, started at `epoch`. `seed` seeds smoltcp;
    /// `port_seed` picks where the ephemeral port search starts.
    pub(super) fn new(
        ip: Ipv4Addr,
        prefix_len: u8,
        mtu: usize,
        limits: BufferLimits,
        seed: u64,
        port_seed: u64,
        epoch: Instant,
    ) -> Self {
        let mut device = QueueDevice::new(mtu);
        let mut icfg = Config::new(HardwareAddress::Ip);
        icfg.random_seed = seed;
        let mut iface = Interface::new(icfg, &mut device, smoltcp::time::Instant::from_micros(0));
        iface.update_ip_addrs(|a| {
            // Capacity is IFACE_MAX_ADDR_COUNT (>= 1); a fresh interface has none.
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(ip), prefix_len));
        });
        Stack {
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            streams: HashMap::new(),
            listeners: HashMap::new(),
            limits,
            grown: 0,
            next_port: *EPHEMERAL_PORTS.start() + (port_seed % 16000) as u16,
            next_stream: 1,
            epoch,
            last_now: epoch,
            last_tune: None,
            dirty: false,
            refused_over_cap: 0,
            resetting: Vec::new(),
        }
    }

    /// Asks for a [`Stack::poll`] (time passed, or something changed).
    pub(super) fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Whether a [`Stack::poll`] is due.
    pub(super) fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Clears the dirty flag; whether it was set.
    pub(super) fn take_dirty(&mut self) -> bool {
        std::mem::replace(&mut self.dirty, false)
    }

    /// Queues a decrypted inbound IPv4 packet addressed to this node.
    pub(super) fn receive(&mut self, packet: Vec<u8>) {
        self.device.rx.push_back(packet);
        self.dirty = true;
    }

    /// The next IP packet the stack wants sent, in order.
    pub(super) fn pop_outbound(&mut self) -> Option<Vec<u8>> {
        self.device.tx.pop_front()
    }

    fn smol_now(&self, now: Instant) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(
            now.saturating_duration_since(self.epoch).as_micros() as i64
        )
    }

    /// Runs smoltcp over queued inbound packets and socket writes at `now`.
    pub(super) fn poll(&mut self, now: Instant) {
        self.last_now = now;
        let ts = self.smol_now(now);
        self.iface.poll(ts, &mut self.device, &mut self.sockets);
    }

    /// When smoltcp next wants to be polled, seen from `now`.
    pub(super) fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        let ts = self.smol_now(now);
        self.iface
            .poll_at(ts, &self.sockets)
            .map(|t| self.epoch + Duration::from_micros(t.total_micros().max(0) as u64))
    }

    /// Aborts every stream whose remote matches `remote` (its peer is gone), closing it.
    pub(super) fn abort_streams(
        &mut self,
        remote: impl Fn(Ipv4Addr) -> bool,
        events: &mut VecDeque<Event>,
    ) {
        for (sid, m) in self.streams.iter_mut() {
            if remote(m.remote) {
                self.sockets.get_mut::<tcp::Socket>(m.handle).abort();
                m.aborted = true;
                if m.phase != Phase::Closed {
                    m.phase = Phase::Closed;
                    events.push_back(Event::StreamClosed(*sid));
                }
            }
        }
    }

    /// The route to `remote` changed: streams to it retransmit now rather than after a
    /// retransmission backoff earned on the old route.
    pub(super) fn retransmit_now(&mut self, remote: Ipv4Addr, now: Instant) {
        let at = self.smol_now(now);
        let mut any = false;
        for m in self.streams.values() {
            if m.remote == remote {
                self.sockets
                    .get_mut::<tcp::Socket>(m.handle)
                    .retransmit_now(at);
                any = true;
            }
        }
        if any {
            self.mark_dirty();
        }
    }

    fn new_socket(&self) -> tcp::Socket<'static> {
        let rx = tcp::SocketBuffer::new(vec![0u8; self.limits.floor]);
        let tx = tcp::SocketBuffer::new(vec![0u8; self.limits.floor]);
        let mut s = tcp::Socket::new(rx, tx);
        s.set_nagle_enabled(false);
        s.set_congestion_control(tcp::CongestionControl::Cubic);
        if self.limits.autotune() {
            // Offered in the SYN, fixed for the connection: large enough for the cap.
            s.set_local_window_scale(autotune::window_shift(self.limits.max));
        }
        s
    }

    fn new_tuning(&self, now: Instant) -> Tuning {
        Tuning::new(self.limits.floor, self.limits.max, now)
    }

    /// Grows or shrinks each open stream's buffers per its tuners, within the per-stream cap and
    /// the node budget (see `autotune`). Called after every stack run and at least once a second.
    pub(super) fn tune(&mut self, now: Instant) {
        if !self.limits.autotune() {
            return;
        }
        let limits = self.limits;
        let mut changed = false;
        let previous_pass = self.last_tune.replace(now);
        for m in self.streams.values_mut() {
            if m.aborted || m.reset {
                continue;
            }
            let s = self.sockets.get_mut::<tcp::Socket>(m.handle);
            if !matches!(
                s.state(),
                tcp::State::Established
                    | tcp::State::FinWait1
                    | tcp::State::FinWait2
                    | tcp::State::CloseWait
            ) {
                continue;
            }
            let tu = &mut m.tuning;
            let queued = s.recv_queue();
            let received = tu.read_total + queued as u64;
            let acked = tu.written_total.saturating_sub(s.send_queue() as u64);
            if tu.settled {
                if received == tu.last_received.0 && acked == tu.last_acked {
                    continue;
                }
                // Bytes moved again: the skipped passes would each have restarted the
                // tuners' measuring interval; the last of them was the previous pass.
                tu.settled = false;
                if let Some(at) = previous_pass {
                    tu.rx.restart_interval(at);
                    tu.tx.restart_interval(at);
                }
            }
            if received != tu.last_received.0 {
                tu.last_received = (received, now);
                tu.last_active = now;
            }
            if acked != tu.last_acked {
                tu.last_acked = acked;
                tu.last_active = now;
            }
            if now.saturating_duration_since(tu.last_active) >= autotune::IDLE_AFTER {
                // Idle both ways: measure afresh when traffic resumes (the path may change).
                tu.rcv_mark = None;
                tu.rtt.reset();
            }
            // Round trips: the sender's own estimate (each new value; smoltcp keeps the last one
            // across idle periods), and the receiver's "one window arrived".
            let srtt = s.smoothed_rtt().map(Duration::from);
            if srtt != tu.last_srtt {
                tu.last_srtt = srtt;
                if let Some(rtt) = srtt {
                    tu.rtt.sample(rtt);
                }
            }
            match tu.rcv_mark {
                Some((t0, until)) if received >= until => {
                    tu.rtt.sample(now.saturating_duration_since(t0));
                    tu.rcv_mark = None;
                }
                _ => {}
            }
            if tu.rcv_mark.is_none() && tu.last_received.1 == now {
                let window = s.recv_capacity().saturating_sub(queued) as u64;
                tu.rcv_mark = Some((now, received + window));
            }
            let rtt = tu.rtt.get();

            // Receive buffer: bytes the application read per round trip.
            let rx_cap = s.recv_capacity();
            tu.rx.applied(rx_cap);
            let drained = queued == 0 && !s.recv_out_of_order();
            let want = tu.rx.observe(now, tu.read_total, rtt, drained);
            // Without window scaling (a peer that did not offer it) the window cannot pass 64 KiB.
            let ceiling = match s.recv_window_scale() {
                Some(_) => limits.max,
                None => limits.floor.max(65535),
            };
            let new = match want {
                Want::Keep => rx_cap,
                Want::Grow(c) => autotune::grant(rx_cap, c.min(ceiling), self.grown, limits.budget),
                Want::Shrink(c) => c,
            };
            if new != rx_cap
                && !s.recv_out_of_order()
                && new >= queued
                && s.replace_recv_buffer(tcp::SocketBuffer::new(vec![0u8; new]))
                    .is_ok()
            {
                self.grown = (self.grown + new.saturating_sub(limits.floor))
                    .saturating_sub(rx_cap.saturating_sub(limits.floor));
                tu.rx.applied(new);
                changed = true;
            }

            // Send buffer: bytes the peer acknowledged per round trip.
            let tx_cap = s.send_capacity();
            let unacked = s.send_queue();
            tu.tx.applied(tx_cap);
            let want = tu.tx.observe(now, acked, rtt, unacked == 0);
            let new = match want {
                Want::Keep => tx_cap,
                Want::Grow(c) => autotune::grant(tx_cap, c, self.grown, limits.budget),
                Want::Shrink(c) => c,
            };
            if new != tx_cap
                && new >= unacked
                && s.replace_send_buffer(tcp::SocketBuffer::new(vec![0u8; new]))
                    .is_ok()
            {
                self.grown = (self.grown + new.saturating_sub(limits.floor))
                    .saturating_sub(tx_cap.saturating_sub(limits.floor));
                tu.tx.applied(new);
                changed = true;
            }
            tu.settled = queued == 0
                && s.send_queue() == 0
                && tu.rcv_mark.is_none()
                && now.saturating_duration_since(tu.last_active) >= autotune::IDLE_AFTER
                && tu.rx.settled(now)
                && tu.tx.settled(now);
        }
        if changed {
            // A grown window is advertised (and grown room refilled) at the next stack run.
            self.dirty = true;
        }
    }

    /// Bytes of socket buffers held by open streams (both directions; listening sockets not
    /// counted).
    pub(super) fn buffer_bytes(&self) -> usize {
        self.streams
            .values()
            .map(|m| {
                let s = self.sockets.get::<tcp::Socket>(m.handle);
                s.recv_capacity() + s.send_capacity()
            })
            .sum()
    }

    /// Bytes held above the floors, counted against the node budget.
    pub(super) fn buffer_bytes_grown(&self) -> usize {
        self.grown
    }

    /// Hands established connections to their listeners (keeping LISTEN sockets available),
    /// follows each stream's TCP state into events, and frees released streams TCP is done with.
    pub(super) fn update_streams(&mut self, events: &mut VecDeque<Event>) {
        // Sockets reset over the per-peer cap: their RST went out in the poll before this.
        for h in std::mem::take(&mut self.resetting) {
            self.sockets.remove(h);
        }
        // Listeners: hand established connections over, keep LISTEN sockets available.
        let ports: Vec<u16> = self.listeners.keys().copied().collect();
        for port in ports {
            let mut accepted = Vec::new();
            let mut relisten = 0usize;
            if let Some(l) = self.listeners.get_mut(&port) {
                l.sockets.retain(|h| {
                    let s = self.sockets.get::<tcp::Socket>(*h);
                    match s.state() {
                        tcp::State::Listen | tcp::State::SynReceived => true,
                        tcp::State::Closed => {
                            relisten += 1;
                            false
                        }
                        _ => {
                            accepted.push(*h);
                            false
                        }
                    }
                });
            }
            for h in accepted {
                let s = self.sockets.get::<tcp::Socket>(h);
                let remote = match s.remote_endpoint().map(|e| e.addr) {
                    Some(IpAddress::Ipv4(ip)) => ip,
                    _ => Ipv4Addr::UNSPECIFIED,
                };
                let held = self.streams.values().filter(|m| m.remote == remote).count();
                if held >= MAX_STREAMS_PER_PEER {
                    // Over the cap: reset now (the RST goes out on the next poll, after which
                    // the socket and its buffers are freed); never handed to the application.
                    self.sockets.get_mut::<tcp::Socket>(h).abort();
                    self.resetting.push(h);
                    self.refused_over_cap += 1;
                    self.dirty = true;
                    continue;
                }
                let id = StreamId(self.next_stream);
                self.next_stream += 1;
                let state = s.state();
                let tuning = self.new_tuning(self.last_now);
                self.streams
                    .insert(id, StreamMeta::new(h, remote, Phase::Open, state, tuning));
                if let Some(l) = self.listeners.get_mut(&port) {
                    l.ready.push_back(id);
                }
                events.push_back(Event::StreamIncoming { port, stream: id });
            }
            let _ = relisten;
            let (listening, total) = match self.listeners.get(&port) {
                Some(l) => (
                    l.sockets
                        .iter()
                        .filter(|h| {
                            self.sockets.get::<tcp::Socket>(**h).state() == tcp::State::Listen
                        })
                        .count(),
                    l.sockets.len(),
                ),
                None => continue,
            };
            let want = LISTEN_BACKLOG
                .saturating_sub(listening)
                .min(MAX_PENDING.saturating_sub(total));
            for _ in 0..want {
                let mut s = self.new_socket();
                if s.listen(port).is_ok() {
                    let h = self.sockets.add(s);
                    if let Some(l) = self.listeners.get_mut(&port) {
                        l.sockets.push(h);
                    }
                }
            }
        }
        // Streams: state transitions and reaping.
        let mut remove = Vec::new();
        for (id, m) in self.streams.iter_mut() {
            let s = self.sockets.get::<tcp::Socket>(m.handle);
            let st = s.state();
            if st != m.last_state {
                if st == tcp::State::Closed
                    && matches!(
                        m.last_state,
                        tcp::State::Established
                            | tcp::State::FinWait1
                            | tcp::State::FinWait2
                            | tcp::State::SynSent
                            | tcp::State::SynReceived
                            | tcp::State::CloseWait
                    )
                    && m.released_at.is_none()
                {
                    m.reset = true;
                }
                m.last_state = st;
            }
            match (m.phase, st) {
                (Phase::Connecting, tcp::State::SynSent | tcp::State::SynReceived) => {}
                (Phase::Connecting, tcp::State::Closed) => {
                    m.phase = Phase::Closed;
                    events.push_back(Event::StreamClosed(*id));
                }
                (Phase::Connecting, _) => {
                    m.phase = Phase::Open;
                    events.push_back(Event::StreamConnected(*id));
                }
                (Phase::Open, tcp::State::Closed | tcp::State::TimeWait) => {
                    m.phase = Phase::Closed;
                    events.push_back(Event::StreamClosed(*id));
                }
                _ => {}
            }
            if m.released_at.is_some() && matches!(st, tcp::State::Closed | tcp::State::TimeWait) {
                remove.push(*id);
            }
        }
        for id in remove {
            if let Some(m) = self.streams.remove(&id) {
                let s = self.sockets.remove(m.handle);
                if let smoltcp::socket::Socket::Tcp(s) = s {
                    let extra = s.recv_capacity().saturating_sub(self.limits.floor)
                        + s.send_capacity().saturating_sub(self.limits.floor);
                    self.grown = self.grown.saturating_sub(extra);
                }
            }
        }
    }

    /// Aborts released streams whose remote has not finished closing within [`LINGER`].
    pub(super) fn reap_lingering(&mut self, now: Instant) {
        for m in self.streams.values_mut() {
            if m.released_at
                .is_some_and(|t| now.saturating_duration_since(t) >= LINGER)
            {
                self.sockets.get_mut::<tcp::Socket>(m.handle).abort();
            }
        }
    }

    fn alloc_port(&mut self) -> Result<u16, TunnelError> {
        let span = u32::from(*EPHEMERAL_PORTS.end() - *EPHEMERAL_PORTS.start()) + 1;
        for _ in 0..span {
            self.next_port = if self.next_port >= *EPHEMERAL_PORTS.end() {
                *EPHEMERAL_PORTS.start()
            } else {
                self.next_port + 1
            };
            let p = self.next_port;
            let used = self.streams.values().any(|m| {
                self.sockets
                    .get::<tcp::Socket>(m.handle)
                    .local_endpoint()
                    .is_some_and(|e| e.port == p)
            }) || self.listeners.contains_key(&p);
            if !used {
                return Ok(p);
            }
        }
        Err(TunnelError::PortsExhausted)
    }

    /// Opens a TCP connection to `peer_ip:port` from a free ephemeral port (routing is the
    /// node's business).
    pub(super) fn connect(
        &mut self,
        peer_ip: Ipv4Addr,
        port: u16,
    ) -> Result<StreamId, TunnelError> {
        let local = self.alloc_port()?;
        let mut s = self.new_socket();
        s.connect(
            self.iface.context(),
            (IpAddress::Ipv4(peer_ip), port),
            local,
        )
        .map_err(|e| TunnelError::Connect {
            ip: peer_ip,
            port,
            why: e.to_string(),
        })?;
        let h = self.sockets.add(s);
        let id = StreamId(self.next_stream);
        self.next_stream += 1;
        let tuning = self.new_tuning(self.last_now);
        self.streams.insert(
            id,
            StreamMeta::new(h, peer_ip, Phase::Connecting, tcp::State::SynSent, tuning),
        );
        self.dirty = true;
        Ok(id)
    }

    /// Starts accepting overlay TCP connections on `port`.
    pub(super) fn listen(
        &mut self,
        port: u16,
        events: &mut VecDeque<Event>,
    ) -> Result<(), TunnelError> {
        if self.listeners.contains_key(&port) {
            return Err(TunnelError::AlreadyListening(port));
        }
        self.listeners.insert(port, Listener::default());
        self.dirty = true;
        self.update_streams(events);
        Ok(())
    }

    /// Stops listening on `port`; connections not yet accepted are aborted.
    pub(super) fn unlisten(&mut self, port: u16, now: Instant) {
        if let Some(l) = self.listeners.remove(&port) {
            for h in l.sockets {
                self.sockets.remove(h);
            }
            for id in l.ready {
                self.release(id, now);
            }
        }
    }

    /// The next accepted connection on `port`, if any.
    pub(super) fn accept(&mut self, port: u16) -> Option<StreamId> {
        self.listeners.get_mut(&port)?.ready.pop_front()
    }

    fn meta(&self, id: StreamId) -> io::Result<&StreamMeta> {
        self.streams
            .get(&id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "no such tunnel stream"))
    }

    fn check_alive(m: &StreamMeta) -> io::Result<()> {
        if m.aborted {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "tunnel peer was removed",
            ));
        }
        if m.reset {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "tunnel stream was reset by the peer",
            ));
        }
        Ok(())
    }

    /// Reads received bytes. `Ok(0)` is end of stream; `WouldBlock` means nothing yet.
    pub(super) fn recv(&mut self, id: StreamId, buf: &mut [u8]) -> io::Result<usize> {
        let m = self.meta(id)?;
        let h = m.handle;
        let s = self.sockets.get_mut::<tcp::Socket>(h);
        if s.can_recv() {
            let n = s
                .recv_slice(buf)
                .map_err(|e| io::Error::other(e.to_string()))?;
            self.dirty = true; // window update
            if let Some(m) = self.streams.get_mut(&id) {
                m.tuning.read_total += n as u64;
            }
            return Ok(n);
        }
        let st = s.state();
        Self::check_alive(self.meta(id)?)?;
        match st {
            tcp::State::SynSent | tcp::State::SynReceived | tcp::State::Listen => {
                Err(io::ErrorKind::WouldBlock.into())
            }
            tcp::State::Closed
                if self.meta(id)?.phase == Phase::Connecting
                    || self.meta(id)?.last_state == tcp::State::SynSent =>
            {
                Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "overlay TCP connection refused or timed out",
                ))
            }
            _ => {
                let s = self.sockets.get::<tcp::Socket>(h);
                if s.may_recv() {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(0)
                }
            }
        }
    }

    /// Queues bytes to send; returns how many were taken. `WouldBlock` when the send buffer is
    /// full (back-pressure) or the connection is still opening.
    pub(super) fn send(&mut self, id: StreamId, data: &[u8]) -> io::Result<usize> {
        let m = self.meta(id)?;
        Self::check_alive(m)?;
        let h = m.handle;
        let phase = m.phase;
        let s = self.sockets.get_mut::<tcp::Socket>(h);
        match s.state() {
            tcp::State::SynSent | tcp::State::SynReceived => {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            tcp::State::Closed if phase != Phase::Open => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "overlay TCP connection refused or timed out",
                ));
            }
            _ => {}
        }
        if !s.may_send() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "tunnel stream is closed for sending",
            ));
        }
        let n = s
            .send_slice(data)
            .map_err(|e| io::Error::other(e.to_string()))?;
        if n == 0 && !data.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.dirty = true;
        if let Some(m) = self.streams.get_mut(&id) {
            m.tuning.written_total += n as u64;
        }
        Ok(n)
    }

    /// Sends FIN after the queued data (half-close); reading continues.
    pub(super) fn close(&mut self, id: StreamId) {
        if let Some(m) = self.streams.get(&id) {
            self.sockets.get_mut::<tcp::Socket>(m.handle).close();
            self.dirty = true;
        }
    }

    /// The application dropped the stream: close it and free it once TCP is done.
    pub(super) fn release(&mut self, id: StreamId, now: Instant) {
        if let Some(m) = self.streams.get_mut(&id) {
            m.released_at = Some(now);
            let s = self.sockets.get_mut::<tcp::Socket>(m.handle);
            if s.may_recv() && s.can_recv() {
                // Unread data: a graceful close would lie to the peer; reset instead.
                s.abort();
            } else {
                s.close();
            }
            self.dirty = true;
        }
    }

    /// Readiness of a stream (closed streams are readable/writable so callers see the error).
    pub(super) fn readiness(&mut self, id: StreamId) -> Readiness {
        let Some(m) = self.streams.get(&id) else {
            return Readiness {
                readable: true,
                writable: true,
                connected: false,
                closed: true,
            };
        };
        let s = self.sockets.get::<tcp::Socket>(m.handle);
        let dead = m.aborted || m.reset || m.phase == Phase::Closed;
        let opening = matches!(s.state(), tcp::State::SynSent | tcp::State::SynReceived);
        Readiness {
            readable: dead || s.can_recv() || (!opening && !s.may_recv()),
            writable: dead || (!opening && (s.can_send() || !s.may_send())),
            connected: m.phase != Phase::Connecting,
            closed: dead,
        }
    }

    /// Open streams (for tests and metrics).
    pub(super) fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// The overlay IP at the other end of a stream.
    pub(super) fn stream_peer(&self, id: StreamId) -> Option<Ipv4Addr> {
        self.streams.get(&id).map(|m| m.remote)
    }
}
