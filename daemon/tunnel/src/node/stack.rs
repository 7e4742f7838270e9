//! The userspace TCP/IP stack (smoltcp) that carries the overlay streams: one interface over a
//! packet-queue device, the TCP sockets, listeners with their backlog, and each stream's life
//! (connecting, open, closed, released, reaped).
//!
//! The node feeds it decrypted inbound IP packets ([`Stack::receive`]) and encrypts what it
//! wants to send ([`Stack::pop_outbound`]); the stack never sees WireGuard.
//!
//! The sockets are sharded by remote overlay IP: one `SocketSet` (and inbound queue) per peer,
//! all polled through the one `Interface` (`Medium::Ip`, so there is no neighbour state to share).
//! smoltcp finds an inbound packet's socket by scanning its set and visits every socket of a set
//! on egress, so with a single set every packet cost O(streams of the node); a hub holding one
//! pooled stream to each of 10,000 targets spent most of its CPU there (issue #21). Now a packet
//! is queued on its source's shard, and [`Stack::poll`] runs only shards that got packets or
//! socket calls and shards whose own timer is due (kept in a deadline index), so a packet costs
//! O(streams to that peer) plus O(log peers).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
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
/// How often [`Stack::tune`] also visits shards that were not polled but hold streams still
/// tuning (an idle stream shrinks back to its floor this late at most).
const TUNE_SWEEP: Duration = Duration::from_secs(1);
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
    /// Also the stream's shard.
    remote: Ipv4Addr,
    /// The local port (counted in `Stack::ports_in_use`).
    local_port: u16,
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
        local_port: u16,
        phase: Phase,
        last_state: tcp::State,
        tuning: Tuning,
    ) -> Self {
        StreamMeta {
            handle,
            remote,
            local_port,
            phase,
            reset: false,
            aborted: false,
            released_at: None,
            last_state,
            tuning,
        }
    }
}

/// A listening port. LISTEN sockets are created in a peer's shard only when a SYN for the port
/// is about to be processed there (a hub with 10,000 peers would otherwise hold two idle
/// listening sockets, with their buffers, per peer and port); the ones that took no SYN are
/// freed after the run.
#[derive(Default)]
struct Listener {
    /// LISTEN and half-open sockets: (shard, handle).
    sockets: Vec<(Ipv4Addr, SocketHandle)>,
    ready: VecDeque<StreamId>,
}

/// The sockets of one remote overlay IP.
struct Shard {
    sockets: SocketSet<'static>,
    /// Inbound packets from this remote, waiting for a run.
    rx: VecDeque<Vec<u8>>,
    /// Streams whose remote this is (released-but-lingering ones included).
    streams: HashSet<StreamId>,
    /// Listener sockets (LISTEN or half-open) in `sockets`.
    listening: usize,
    /// Sockets reset over the per-peer cap: their RST goes out in the next run, then they are
    /// freed.
    resetting: Vec<SocketHandle>,
    /// Queued in `Stack::dirty_shards`.
    dirty: bool,
    /// This shard's entry in `Stack::deadlines`.
    deadline: Option<Instant>,
}

impl Shard {
    fn new() -> Self {
        Shard {
            sockets: SocketSet::new(Vec::new()),
            rx: VecDeque::new(),
            streams: HashSet::new(),
            listening: 0,
            resetting: Vec::new(),
            dirty: false,
            deadline: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.streams.is_empty()
            && self.listening == 0
            && self.resetting.is_empty()
            && self.rx.is_empty()
            && !self.dirty
    }
}

/// The source address of an IPv4 packet (`UNSPECIFIED` for anything else: smoltcp drops it).
fn ipv4_src(p: &[u8]) -> Ipv4Addr {
    if p.len() >= 20 && p[0] >> 4 == 4 {
        Ipv4Addr::new(p[12], p[13], p[14], p[15])
    } else {
        Ipv4Addr::UNSPECIFIED
    }
}

/// The destination port of an IPv4 TCP packet that opens a connection (SYN without ACK).
fn tcp_syn_port(p: &[u8]) -> Option<u16> {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 6 {
        return None;
    }
    // A later fragment carries no TCP header.
    if u16::from_be_bytes([p[6], p[7]]) & 0x1fff != 0 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let tcp = p.get(ihl..ihl + 14)?;
    let flags = tcp[13];
    (flags & 0x02 != 0 && flags & 0x10 == 0).then(|| u16::from_be_bytes([tcp[2], tcp[3]]))
}

/// A stream socket with buffers at the floor.
fn new_socket(limits: &BufferLimits) -> tcp::Socket<'static> {
    let rx = tcp::SocketBuffer::new(vec![0u8; limits.floor]);
    let tx = tcp::SocketBuffer::new(vec![0u8; limits.floor]);
    let mut s = tcp::Socket::new(rx, tx);
    s.set_nagle_enabled(false);
    s.set_congestion_control(tcp::CongestionControl::Cubic);
    if limits.autotune() {
        // Offered in the SYN, fixed for the connection: large enough for the cap.
        s.set_local_window_scale(autotune::window_shift(limits.max));
    }
    s
}

/// The node's TCP/IP stack and its streams. Times are the node's injected clock.
pub(super) struct Stack {
    iface: Interface,
    /// Its `rx` holds one shard's packets during that shard's run; `tx` collects every shard's
    /// outbound packets.
    device: QueueDevice,
    /// Sockets by remote overlay IP.
    shards: HashMap<Ipv4Addr, Shard>,
    /// Shards with inbound packets or socket calls since their last run.
    dirty_shards: Vec<Ipv4Addr>,
    /// When each shard's smoltcp timers next want a run (one entry per shard with a timer).
    deadlines: BTreeSet<(Instant, Ipv4Addr)>,
    /// The shards the last [`Stack::poll`] ran (for `update_streams` and `tune`).
    polled: Vec<Ipv4Addr>,
    /// Local ports of the streams, with how many streams use each.
    ports_in_use: HashMap<u16, usize>,
    /// Shard runs so far (tests check that a packet runs only its shard).
    pub(super) shard_runs: u64,
    /// Shards holding a stream that [`Stack::tune`] has not seen settle (kept as a set so the
    /// once-a-second sweep does not scan every shard).
    tuning: HashSet<Ipv4Addr>,
    /// When `tune` last swept the shards still tuning.
    last_sweep: Option<Instant>,
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
    /// Time passed or the node asked for a [`Stack::poll`] (due timers are checked there).
    dirty: bool,
    /// Incoming streams reset because their peer was at [`MAX_STREAMS_PER_PEER`].
    pub(super) refused_over_cap: u64,
    /// Streams whose [`Stack::readiness`] may have changed since the driver last took them
    /// ([`Stack::take_changed`]): those of the shards run since, and those aborted or removed.
    /// A driver parks a task per waiting stream (a hub: one per pooled SSH connection); asking
    /// every parked stream after every run made each run cost O(streams) — 77 % of the hub's
    /// CPU in a warm fan-out to 10,000 targets (BENCHMARKS.md, fleet section).
    changed: HashSet<StreamId>,
    /// Set when `changed` is not to be trusted as complete (it overflowed, or a periodic
    /// sweep was asked for): the driver then asks every parked stream once.
    changed_all: bool,
}

/// Most entries [`Stack::changed`] holds before the next take asks every stream instead.
const MAX_CHANGED: usize = 65_536;

/// What changed since the driver last asked ([`Stack::take_changed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Only these streams' readiness may have changed (in no particular order).
    Streams(Vec<StreamId>),
    /// Any stream's may have: ask each waiting one.
    All,
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
            shards: HashMap::new(),
            dirty_shards: Vec::new(),
            deadlines: BTreeSet::new(),
            polled: Vec::new(),
            ports_in_use: HashMap::new(),
            shard_runs: 0,
            tuning: HashSet::new(),
            last_sweep: None,
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
            changed: HashSet::new(),
            changed_all: false,
        }
    }

    /// Asks for a [`Stack::poll`] (time passed, or something changed): it runs the shards with
    /// work and those whose timers are due.
    pub(super) fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Whether a [`Stack::poll`] is due.
    pub(super) fn is_dirty(&self) -> bool {
        self.dirty || !self.dirty_shards.is_empty()
    }

    /// Clears the dirty flag; whether a [`Stack::poll`] was due.
    pub(super) fn take_dirty(&mut self) -> bool {
        std::mem::replace(&mut self.dirty, false) || !self.dirty_shards.is_empty()
    }

    /// Notes that `id`'s readiness may have changed.
    fn mark_changed(&mut self, id: StreamId) {
        if self.changed_all {
            return;
        }
        if self.changed.len() >= MAX_CHANGED {
            self.changed.clear();
            self.changed_all = true;
        } else {
            self.changed.insert(id);
        }
    }

    /// Whether some stream's readiness may have changed since the last [`Stack::take_changed`].
    pub(super) fn has_changed(&self) -> bool {
        self.changed_all || !self.changed.is_empty()
    }

    /// The streams whose readiness may have changed since the last call (and forgets them).
    pub(super) fn take_changed(&mut self) -> Changed {
        if std::mem::replace(&mut self.changed_all, false) {
            self.changed.clear();
            return Changed::All;
        }
        Changed::Streams(self.changed.drain().collect())
    }

    /// Makes the next [`Stack::take_changed`] answer [`Changed::All`] (a periodic safety
    /// sweep; cheap once a second, not after every run).
    pub(super) fn mark_all_changed(&mut self) {
        self.changed.clear();
        self.changed_all = true;
    }

    /// Queues `ip`'s shard for the next run, creating the shard.
    fn touch(&mut self, ip: Ipv4Addr) -> &mut Shard {
        let shard = self.shards.entry(ip).or_insert_with(Shard::new);
        if !shard.dirty {
            shard.dirty = true;
            self.dirty_shards.push(ip);
        }
        shard
    }

    /// The socket of a stream.
    fn socket(&self, m: &StreamMeta) -> Option<&tcp::Socket<'static>> {
        Some(
            self.shards
                .get(&m.remote)?
                .sockets
                .get::<tcp::Socket>(m.handle),
        )
    }

    /// Queues a decrypted inbound IPv4 packet addressed to this node (on its source's shard).
    pub(super) fn receive(&mut self, packet: Vec<u8>) {
        let src = ipv4_src(&packet);
        self.touch(src).rx.push_back(packet);
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

    /// Runs smoltcp at `now` over the shards with queued inbound packets or socket calls and the
    /// shards whose timers are due; the others are not visited.
    pub(super) fn poll(&mut self, now: Instant) {
        self.last_now = now;
        self.dirty = false;
        let ts = self.smol_now(now);
        let mut run = std::mem::take(&mut self.dirty_shards);
        while let Some(&(at, ip)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(shard) = self.shards.get_mut(&ip) {
                shard.deadline = None;
                if !shard.dirty {
                    shard.dirty = true;
                    run.push(ip);
                }
            }
        }
        for &ip in &run {
            let Some(shard) = self.shards.get_mut(&ip) else {
                continue;
            };
            shard.dirty = false;
            self.shard_runs += 1;
            // LISTEN sockets for the SYNs about to be processed (see `Listener`).
            if !self.listeners.is_empty() {
                for p in shard.rx.iter() {
                    let Some(port) = tcp_syn_port(p) else {
                        continue;
                    };
                    let Some(l) = self.listeners.get_mut(&port) else {
                        continue;
                    };
                    if l.sockets.len() >= MAX_PENDING {
                        continue;
                    }
                    let mut s = new_socket(&self.limits);
                    if s.listen(port).is_ok() {
                        l.sockets.push((ip, shard.sockets.add(s)));
                        shard.listening += 1;
                    }
                }
            }
            std::mem::swap(&mut self.device.rx, &mut shard.rx);
            self.iface.poll(ts, &mut self.device, &mut shard.sockets);
            // smoltcp processes every queued packet; anything left stays with its shard.
            shard.rx.extend(self.device.rx.drain(..));
        }
        self.polled = run;
    }

    /// When smoltcp next wants to be polled, seen from `now`: the earliest shard deadline (the
    /// deadlines of the shards just run are refreshed first).
    pub(super) fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        if !self.dirty_shards.is_empty() {
            return Some(now);
        }
        self.deadlines.first().map(|&(at, _)| at)
    }

    /// Refreshes the deadline of each shard just run (after its streams were updated).
    fn refresh_deadlines(&mut self) {
        let ts = self.smol_now(self.last_now);
        for ip in &self.polled {
            let Some(shard) = self.shards.get_mut(ip) else {
                continue;
            };
            if let Some(old) = shard.deadline.take() {
                self.deadlines.remove(&(old, *ip));
            }
            let at = self
                .iface
                .poll_at(ts, &shard.sockets)
                .map(|t| self.epoch + Duration::from_micros(t.total_micros().max(0) as u64));
            if let Some(at) = at {
                shard.deadline = Some(at);
                self.deadlines.insert((at, *ip));
            }
        }
    }

    /// Aborts every stream whose remote matches `remote` (its peer is gone), closing it. The
    /// shard is dropped once its streams are released.
    pub(super) fn abort_streams(
        &mut self,
        remote: impl Fn(Ipv4Addr) -> bool,
        events: &mut VecDeque<Event>,
    ) {
        let ips: Vec<Ipv4Addr> = self
            .shards
            .keys()
            .copied()
            .filter(|ip| remote(*ip))
            .collect();
        for ip in ips {
            let Some(shard) = self.shards.get_mut(&ip) else {
                continue;
            };
            for sid in shard.streams.iter() {
                let Some(m) = self.streams.get_mut(sid) else {
                    continue;
                };
                shard.sockets.get_mut::<tcp::Socket>(m.handle).abort();
                m.aborted = true;
                if m.phase != Phase::Closed {
                    m.phase = Phase::Closed;
                    events.push_back(Event::StreamClosed(*sid));
                }
            }
            let ids: Vec<StreamId> = shard.streams.iter().copied().collect();
            for id in ids {
                self.mark_changed(id);
            }
            self.touch(ip);
        }
    }

    /// The route to `remote` changed: streams to it retransmit now rather than after a
    /// retransmission backoff earned on the old route.
    pub(super) fn retransmit_now(&mut self, remote: Ipv4Addr, now: Instant) {
        let at = self.smol_now(now);
        let Some(shard) = self.shards.get_mut(&remote) else {
            return;
        };
        let mut any = false;
        for sid in shard.streams.iter() {
            if let Some(m) = self.streams.get(sid) {
                shard
                    .sockets
                    .get_mut::<tcp::Socket>(m.handle)
                    .retransmit_now(at);
                any = true;
            }
        }
        if any {
            self.touch(remote);
        }
    }

    /// Grows or shrinks each open stream's buffers per its tuners, within the per-stream cap and
    /// the node budget (see `autotune`). Called after every stack run and at least once a second:
    /// visits the shards just run, and once per [`TUNE_SWEEP`] the shards holding streams that
    /// have not settled.
    pub(super) fn tune(&mut self, now: Instant) {
        if !self.limits.autotune() {
            return;
        }
        let previous_pass = self.last_tune.replace(now);
        let mut visit = self.polled.clone();
        if self
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= TUNE_SWEEP)
        {
            self.last_sweep = Some(now);
            visit.extend(self.tuning.iter().copied());
        }
        visit.sort_unstable();
        visit.dedup();
        for ip in visit {
            self.tune_shard(ip, now, previous_pass);
        }
    }

    fn tune_shard(&mut self, ip: Ipv4Addr, now: Instant, previous_pass: Option<Instant>) {
        let limits = self.limits;
        let mut changed = false;
        let Some(shard) = self.shards.get_mut(&ip) else {
            return;
        };
        let mut tuning = false;
        for sid in shard.streams.iter() {
            let Some(m) = self.streams.get_mut(sid) else {
                continue;
            };
            if m.aborted || m.reset {
                continue;
            }
            let s = shard.sockets.get_mut::<tcp::Socket>(m.handle);
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
            tuning |= !tu.settled;
        }
        if tuning {
            self.tuning.insert(ip);
        } else {
            self.tuning.remove(&ip);
        }
        if changed {
            // A grown window is advertised (and grown room refilled) at the next stack run.
            self.touch(ip);
        }
    }

    /// Bytes of socket buffers held by open streams (both directions; listening sockets not
    /// counted).
    pub(super) fn buffer_bytes(&self) -> usize {
        self.streams
            .values()
            .filter_map(|m| self.socket(m))
            .map(|s| s.recv_capacity() + s.send_capacity())
            .sum()
    }

    /// Bytes held above the floors, counted against the node budget.
    pub(super) fn buffer_bytes_grown(&self) -> usize {
        self.grown
    }

    /// Hands established connections to their listeners, follows the TCP state of each stream
    /// of the shards just run into events, frees released streams TCP is done with, and drops
    /// shards left without sockets.
    pub(super) fn update_streams(&mut self, events: &mut VecDeque<Event>) {
        // Sockets reset over the per-peer cap: their RST went out in the run before this.
        for ip in &self.polled {
            if let Some(shard) = self.shards.get_mut(ip) {
                for h in std::mem::take(&mut shard.resetting) {
                    shard.sockets.remove(h);
                }
            }
        }
        // Listeners: hand established connections over; free LISTEN sockets no SYN took.
        let ports: Vec<u16> = self.listeners.keys().copied().collect();
        for port in ports {
            let mut accepted = Vec::new();
            if let Some(l) = self.listeners.get_mut(&port) {
                let shards = &mut self.shards;
                l.sockets.retain(|&(ip, h)| {
                    let Some(shard) = shards.get_mut(&ip) else {
                        return false;
                    };
                    match shard.sockets.get::<tcp::Socket>(h).state() {
                        tcp::State::SynReceived => true,
                        tcp::State::Listen | tcp::State::Closed => {
                            shard.sockets.remove(h);
                            shard.listening -= 1;
                            false
                        }
                        _ => {
                            shard.listening -= 1;
                            accepted.push((ip, h));
                            false
                        }
                    }
                });
            }
            for (ip, h) in accepted {
                let Some(shard) = self.shards.get_mut(&ip) else {
                    continue;
                };
                let s = shard.sockets.get_mut::<tcp::Socket>(h);
                if shard.streams.len() >= MAX_STREAMS_PER_PEER {
                    // Over the cap: reset now (the RST goes out on the next run, after which
                    // the socket and its buffers are freed); never handed to the application.
                    s.abort();
                    shard.resetting.push(h);
                    self.refused_over_cap += 1;
                    self.touch(ip);
                    continue;
                }
                let state = s.state();
                let id = StreamId(self.next_stream);
                self.next_stream += 1;
                shard.streams.insert(id);
                *self.ports_in_use.entry(port).or_insert(0) += 1;
                let tuning = Tuning::new(self.limits.floor, self.limits.max, self.last_now);
                self.streams
                    .insert(id, StreamMeta::new(h, ip, port, Phase::Open, state, tuning));
                if let Some(l) = self.listeners.get_mut(&port) {
                    l.ready.push_back(id);
                }
                events.push_back(Event::StreamIncoming { port, stream: id });
            }
        }
        // Streams: state transitions and reaping.
        let mut remove = Vec::new();
        for ip in &self.polled {
            let Some(shard) = self.shards.get(ip) else {
                continue;
            };
            for id in shard.streams.iter() {
                // Its shard ran: data, ACKs or a state change may have made it ready.
                if !self.changed_all {
                    if self.changed.len() >= MAX_CHANGED {
                        self.changed.clear();
                        self.changed_all = true;
                    } else {
                        self.changed.insert(*id);
                    }
                }
                let Some(m) = self.streams.get_mut(id) else {
                    continue;
                };
                let s = shard.sockets.get::<tcp::Socket>(m.handle);
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
                if m.released_at.is_some()
                    && matches!(st, tcp::State::Closed | tcp::State::TimeWait)
                {
                    remove.push(*id);
                }
            }
        }
        for id in remove {
            self.remove_stream(id);
        }
        self.refresh_deadlines();
        // Shards left without sockets (their peer's streams all ended, or the peer is gone).
        for ip in std::mem::take(&mut self.polled) {
            if self.shards.get(&ip).is_some_and(Shard::is_empty) {
                self.tuning.remove(&ip);
                if let Some(shard) = self.shards.remove(&ip)
                    && let Some(at) = shard.deadline
                {
                    self.deadlines.remove(&(at, ip));
                }
            } else {
                self.polled.push(ip);
            }
        }
    }

    /// Frees a stream's socket and its bookkeeping.
    fn remove_stream(&mut self, id: StreamId) {
        let Some(m) = self.streams.remove(&id) else {
            return;
        };
        // Gone: reads as closed from now on.
        self.mark_changed(id);
        let Some(shard) = self.shards.get_mut(&m.remote) else {
            return;
        };
        shard.streams.remove(&id);
        let s = shard.sockets.remove(m.handle);
        if let Some(n) = self.ports_in_use.get_mut(&m.local_port) {
            *n -= 1;
            if *n == 0 {
                self.ports_in_use.remove(&m.local_port);
            }
        }
        if let smoltcp::socket::Socket::Tcp(s) = s {
            let extra = s.recv_capacity().saturating_sub(self.limits.floor)
                + s.send_capacity().saturating_sub(self.limits.floor);
            self.grown = self.grown.saturating_sub(extra);
        }
    }

    /// Aborts released streams whose remote has not finished closing within [`LINGER`].
    pub(super) fn reap_lingering(&mut self, now: Instant) {
        let mut touched = Vec::new();
        for m in self.streams.values() {
            if m.released_at
                .is_some_and(|t| now.saturating_duration_since(t) >= LINGER)
                && let Some(shard) = self.shards.get_mut(&m.remote)
            {
                shard.sockets.get_mut::<tcp::Socket>(m.handle).abort();
                touched.push(m.remote);
            }
        }
        for ip in touched {
            self.touch(ip);
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
            if !self.ports_in_use.contains_key(&p) && !self.listeners.contains_key(&p) {
                return Ok(p);
            }
        }
        Err(TunnelError::PortsExhausted)
    }

    /// Opens a TCP connection to `peer_ip:port` from a free ephemeral port (routing is the
    /// node's business); its socket lives in `peer_ip`'s shard.
    pub(super) fn connect(
        &mut self,
        peer_ip: Ipv4Addr,
        port: u16,
    ) -> Result<StreamId, TunnelError> {
        let local = self.alloc_port()?;
        let mut s = new_socket(&self.limits);
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
        let id = StreamId(self.next_stream);
        self.next_stream += 1;
        let shard = self.touch(peer_ip);
        let h = shard.sockets.add(s);
        shard.streams.insert(id);
        *self.ports_in_use.entry(local).or_insert(0) += 1;
        let tuning = Tuning::new(self.limits.floor, self.limits.max, self.last_now);
        self.streams.insert(
            id,
            StreamMeta::new(
                h,
                peer_ip,
                local,
                Phase::Connecting,
                tcp::State::SynSent,
                tuning,
            ),
        );
        Ok(id)
    }

    /// Starts accepting overlay TCP connections on `port` (from every peer, including peers
    /// that appear later).
    pub(super) fn listen(&mut self, port: u16) -> Result<(), TunnelError> {
        if self.listeners.contains_key(&port) {
            return Err(TunnelError::AlreadyListening(port));
        }
        self.listeners.insert(port, Listener::default());
        Ok(())
    }

    /// Stops listening on `port`; connections not yet accepted are aborted.
    pub(super) fn unlisten(&mut self, port: u16, now: Instant) {
        if let Some(l) = self.listeners.remove(&port) {
            for (ip, h) in l.sockets {
                if let Some(shard) = self.shards.get_mut(&ip) {
                    shard.sockets.remove(h);
                    shard.listening -= 1;
                }
                self.touch(ip);
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

    /// A stream's socket, for a call that changes it (its shard is queued for the next run).
    fn socket_mut(&mut self, id: StreamId) -> io::Result<&mut tcp::Socket<'static>> {
        let (remote, h) = {
            let m = self.meta(id)?;
            (m.remote, m.handle)
        };
        Ok(self.touch(remote).sockets.get_mut::<tcp::Socket>(h))
    }

    fn socket_of(&self, id: StreamId) -> io::Result<&tcp::Socket<'static>> {
        let m = self.meta(id)?;
        self.socket(m)
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
        if self.socket_of(id)?.can_recv() {
            // The shard runs next: window update.
            let n = self
                .socket_mut(id)?
                .recv_slice(buf)
                .map_err(|e| io::Error::other(e.to_string()))?;
            if let Some(m) = self.streams.get_mut(&id) {
                m.tuning.read_total += n as u64;
            }
            return Ok(n);
        }
        let st = self.socket_of(id)?.state();
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
                if self.socket_of(id)?.may_recv() {
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
        let phase = m.phase;
        let s = self.socket_of(id)?;
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
        let n = self
            .socket_mut(id)?
            .send_slice(data)
            .map_err(|e| io::Error::other(e.to_string()))?;
        if n == 0 && !data.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if let Some(m) = self.streams.get_mut(&id) {
            m.tuning.written_total += n as u64;
        }
        Ok(n)
    }

    /// Sends FIN after the queued data (half-close); reading continues.
    pub(super) fn close(&mut self, id: StreamId) {
        if let Ok(s) = self.socket_mut(id) {
            s.close();
        }
    }

    /// The application dropped the stream: close it and free it once TCP is done.
    pub(super) fn release(&mut self, id: StreamId, now: Instant) {
        if let Some(m) = self.streams.get_mut(&id) {
            m.released_at = Some(now);
        }
        if let Ok(s) = self.socket_mut(id) {
            if s.may_recv() && s.can_recv() {
                // Unread data: a graceful close would lie to the peer; reset instead.
                s.abort();
            } else {
                s.close();
            }
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
        let Some(s) = self.socket(m) else {
            return Readiness {
                readable: true,
                writable: true,
                connected: false,
                closed: true,
            };
        };
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

    /// Whether `ip` has a shard (tests).
    #[cfg(test)]
    pub(super) fn has_shard(&self, ip: Ipv4Addr) -> bool {
        self.shards.contains_key(&ip)
    }

    /// The earliest time any shard's sockets want a run, by asking smoltcp about every shard
    /// (what [`Stack::poll_at`] must equal; tests).
    #[cfg(test)]
    pub(super) fn poll_at_scan(&mut self, now: Instant) -> Option<Instant> {
        let ts = self.smol_now(now);
        let epoch = self.epoch;
        self.shards
            .values()
            .filter_map(|sh| self.iface.poll_at(ts, &sh.sockets))
            .map(|t| epoch + Duration::from_micros(t.total_micros().max(0) as u64))
            .min()
    }
}
