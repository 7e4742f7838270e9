//! The hub's side: serves the targets' conversations (a new key, a confirmation) and asks
//! targets to rotate (`tether vpn rotate-keys`).
//!
//! A rotation the hub asks for:
//! 1. hub → target `rotate_now`; the target acks ([`Io::Connect`] … `Send` … `Close`).
//! 2. The target's `rotate_wg_key {new key}` arrives: the hub has it recorded durably
//!    ([`HubAction::RecordRotation`], answered by [`Hub::recorded`]), acks, and once the
//!    target has hung up (or after [`HubConfig::hangup_grace`]) installs the key
//!    ([`HubAction::InstallPeerKey`]).
//! 3. The target's `confirm_key` arrives over the new session: the rotation is done
//!    ([`HubAction::RotationFinished`]). A target may also start at step 2 on its own.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::channel::{Ask, AskEvent, Channel, Inbound};
use crate::conns::{self, Io, Outgoing};
use crate::error::{AgentError, EffectError};
use crate::key::check_public_key;
use crate::version::VersionRange;
use crate::wire::Message;
use crate::{ConnId, RotationId};

/// How a [`Hub`] behaves.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The protocol versions it speaks (default [`VersionRange::SUPPORTED`]).
    pub versions: VersionRange,
    /// How long one request may wait for its answer (default 10 s).
    pub exchange_timeout: Duration,
    /// How long a rotation the hub asked for may take in all (default 30 s).
    pub rotation_timeout: Duration,
    /// How long to wait for a target to hang up after acking its new key before installing
    /// the key anyway (default 5 s).
    pub hangup_grace: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            versions: VersionRange::SUPPORTED,
            exchange_timeout: Duration::from_secs(10),
            rotation_timeout: Duration::from_secs(30),
            hangup_grace: Duration::from_secs(5),
        }
    }
}

/// An enrolled, active host as the inventory knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// Its name.
    pub name: String,
    /// Its overlay address.
    pub overlay_ip: Ipv4Addr,
    /// Its WireGuard public key (standard base64).
    pub wg_public_key: String,
}

/// Key rotations a target may start on its own per host and hour (rotations the hub asked
/// for do not count). Each one is an audit record, an inventory write and a peer swap, so an
/// unbounded rate would let one peer grow the log and churn the tunnel at will.
pub const MAX_TARGET_ROTATIONS_PER_HOUR: usize = 6;
/// Retired keys remembered per host (to refuse going back to one).
const MAX_RETIRED_KEYS: usize = 64;
const HOUR: Duration = Duration::from_secs(3600);

/// What the hub's driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HubAction {
    /// Open, write to or hang up a connection.
    Io(Io),
    /// Append the audit event `vpn.key_rotation` (durably) and then store the new key in the
    /// inventory; answer with [`Hub::recorded`].
    RecordRotation {
        /// The connection that asked.
        conn: ConnId,
        /// The host.
        host: String,
        /// Its key until now.
        old_public_key: String,
        /// Its new key.
        new_public_key: String,
    },
    /// Replace the host's tunnel peer by one with its new key (and raise the `key_rotation`
    /// alert).
    InstallPeerKey {
        /// The host, with its new key.
        host: HostInfo,
    },
    /// The host proved its new key works (informational).
    KeyConfirmed {
        /// The host.
        host: String,
    },
    /// A rotation started with [`Hub::start_rotation`] ended.
    RotationFinished {
        /// Which.
        rotation: RotationId,
        /// The host.
        host: String,
        /// Its new key, or why it failed.
        result: Result<String, AgentError>,
    },
    /// A conversation a target started failed or was refused (log it).
    ConversationFailed {
        /// Where it came from.
        peer: Ipv4Addr,
        /// The host at that address, if any.
        host: Option<String>,
        /// What went wrong.
        error: AgentError,
    },
}

impl From<Io> for HubAction {
    fn from(io: Io) -> HubAction {
        HubAction::Io(io)
    }
}

#[derive(Debug)]
enum ServeState {
    AwaitRequest,
    Recording { host: HostInfo, peer_gone: bool },
    AwaitHangup { host: HostInfo },
}

#[derive(Debug)]
struct Serve {
    channel: Channel,
    ip: Ipv4Addr,
    host: Option<HostInfo>,
    state: ServeState,
    deadline: Option<Instant>,
}

#[derive(Debug)]
enum Conn {
    Serve(Serve),
    Ask { ask: Ask, rotation: RotationId },
}

impl Outgoing for Conn {
    fn take_output(&mut self) -> Vec<u8> {
        match self {
            Conn::Serve(s) => s.channel.take_output(),
            Conn::Ask { ask, .. } => ask.take_output(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    Asking,
    AwaitKey,
    AwaitConfirm { new_key: String },
}

#[derive(Debug)]
struct Rotation {
    host: HostInfo,
    stage: Stage,
    deadline: Instant,
    conn: Option<ConnId>,
}

/// The hub's agent state machine: every conversation with every target. Sans-IO: the driver
/// feeds it connections, bytes, results and the time, and performs its [`HubAction`]s.
#[derive(Debug)]
pub struct Hub {
    cfg: HubConfig,
    next_id: u64,
    conns: BTreeMap<ConnId, Conn>,
    rotations: BTreeMap<RotationId, Rotation>,
    retired: HashMap<String, HashSet<String>>,
    /// When each host's recent self-started rotations began (the last hour's).
    self_started: HashMap<String, VecDeque<Instant>>,
    actions: VecDeque<HubAction>,
}

impl Hub {
    /// A hub with no conversations.
    pub fn new(cfg: HubConfig) -> Hub {
        Hub {
            cfg,
            next_id: 0,
            conns: BTreeMap::new(),
            rotations: BTreeMap::new(),
            retired: HashMap::new(),
            self_started: HashMap::new(),
            actions: VecDeque::new(),
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A target opened a stream from `ip`; `host` is the active host at that address.
    pub fn accept(&mut self, ip: Ipv4Addr, host: Option<HostInfo>, now: Instant) -> ConnId {
        let conn = ConnId(self.id());
        let serve = Serve {
            channel: Channel::responder(self.cfg.versions),
            ip,
            host,
            state: ServeState::AwaitRequest,
            deadline: Some(now + self.cfg.exchange_timeout),
        };
        self.conns.insert(conn, Conn::Serve(serve));
        conn
    }

    /// Asks `host` to rotate its key; ends with [`HubAction::RotationFinished`].
    pub fn start_rotation(&mut self, host: HostInfo, now: Instant) -> RotationId {
        let rotation = RotationId(self.id());
        self.rotations.insert(
            rotation,
            Rotation {
                host,
                stage: Stage::Asking,
                deadline: now + self.cfg.rotation_timeout,
                conn: None,
            },
        );
        self.ask(rotation, false, now);
        rotation
    }

    fn ask(&mut self, rotation: RotationId, peer_v1: bool, now: Instant) {
        let Some(ip) = self.rotations.get(&rotation).map(|r| r.host.overlay_ip) else {
            return;
        };
        let conn = ConnId(self.id());
        let ask = Ask::new(
            self.cfg.versions,
            Message::RotateNow,
            peer_v1,
            now,
            self.cfg.exchange_timeout,
        );
        self.conns.insert(conn, Conn::Ask { ask, rotation });
        if let Some(r) = self.rotations.get_mut(&rotation) {
            r.conn = Some(conn);
        }
        self.actions.push_back(Io::Connect { conn, ip }.into());
    }

    /// The stream of a [`Io::Connect`] is open.
    pub fn connected(&mut self, conn: ConnId, _now: Instant) {
        let Some(Conn::Ask { ask, rotation }) = self.conns.get_mut(&conn) else {
            return;
        };
        let rotation = *rotation;
        let r = ask.connected();
        self.flush(conn);
        if let Err(e) = r {
            self.finish(rotation, Err(e));
        }
    }

    /// Bytes arrived on a connection.
    pub fn received(&mut self, conn: ConnId, bytes: &[u8], now: Instant) {
        match self.conns.get_mut(&conn) {
            Some(Conn::Serve(_)) => self.serve_bytes(conn, bytes, now),
            Some(Conn::Ask { ask, rotation }) => {
                let rotation = *rotation;
                let event = ask.received(bytes);
                self.flush(conn);
                match event {
                    Ok(None) => {}
                    Ok(Some(e)) => self.ask_event(conn, rotation, e, now),
                    Err(e) => self.finish(rotation, Err(e)),
                }
            }
            None => {}
        }
    }

    /// The peer hung up (end of stream).
    pub fn closed(&mut self, conn: ConnId, now: Instant) {
        match self.conns.get_mut(&conn) {
            Some(Conn::Serve(s)) => match &mut s.state {
                ServeState::Recording { peer_gone, .. } => *peer_gone = true,
                ServeState::AwaitHangup { .. } => self.install(conn),
                ServeState::AwaitRequest => self.drop_serve(
                    conn,
                    Some(AgentError::HungUp {
                        during: "before sending its request",
                    }),
                ),
            },
            Some(Conn::Ask { ask, rotation }) => {
                let rotation = *rotation;
                match ask.closed("before answering rotate_now") {
                    Ok(e) => self.ask_event(conn, rotation, e, now),
                    Err(e) => self.finish(rotation, Err(e)),
                }
            }
            None => {}
        }
    }

    /// The connection could not be opened, or reading/writing failed.
    pub fn failed(&mut self, conn: ConnId, reason: String, now: Instant) {
        match self.conns.get(&conn) {
            Some(Conn::Ask { rotation, .. }) => {
                let rotation = *rotation;
                self.finish(rotation, Err(AgentError::Transport { reason }));
            }
            Some(Conn::Serve(_)) => self.closed(conn, now),
            None => {}
        }
    }

    /// The result of a [`HubAction::RecordRotation`].
    pub fn recorded(&mut self, conn: ConnId, result: Result<(), EffectError>, now: Instant) {
        let (old, new, peer_gone) = match self.conns.get(&conn) {
            Some(Conn::Serve(Serve {
                host: Some(old),
                state: ServeState::Recording { host, peer_gone },
                ..
            })) => (old.clone(), host.clone(), *peer_gone),
            _ => return,
        };
        if let Err(cause) = result {
            let e = AgentError::Local {
                what: "recording the new key in the hub's audit log and inventory",
                cause,
            };
            for id in self.rotations_of(&old.name) {
                self.finish(id, Err(e.clone()));
            }
            return self.refuse(conn, e);
        }
        let retired = self.retired.entry(old.name.clone()).or_default();
        if retired.len() >= MAX_RETIRED_KEYS {
            // Bounded: forget an arbitrary old key (the inventory refuses keys other hosts
            // hold; this only stops a host from going back to one of its own).
            if let Some(k) = retired.iter().next().cloned() {
                retired.remove(&k);
            }
        }
        retired.insert(old.wg_public_key.clone());
        for id in self.rotations_of(&old.name) {
            if let Some(r) = self.rotations.get_mut(&id) {
                r.stage = Stage::AwaitConfirm {
                    new_key: new.wg_public_key.clone(),
                };
            }
        }
        if let Some(Conn::Serve(s)) = self.conns.get_mut(&conn) {
            // Encoding an `ok` in a negotiated conversation cannot fail.
            let _ = s.channel.send(&Message::Ok);
            s.state = ServeState::AwaitHangup { host: new };
            s.deadline = Some(now + self.cfg.hangup_grace);
        }
        self.flush(conn);
        if peer_gone {
            self.install(conn);
        }
    }

    /// The earliest time [`Hub::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conns = self.conns.values().filter_map(|c| match c {
            Conn::Serve(s) => s.deadline,
            Conn::Ask { ask, .. } => Some(ask.deadline),
        });
        let rotations = self.rotations.values().map(|r| r.deadline);
        conns.chain(rotations).min()
    }

    /// Time passed: gives up on what is overdue.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| match c {
                Conn::Serve(s) => s.deadline.is_some_and(|d| d <= now),
                Conn::Ask { ask, .. } => ask.deadline <= now,
            })
            .map(|(id, _)| *id)
            .collect();
        for conn in due {
            match self.conns.get(&conn) {
                Some(Conn::Serve(s)) => match s.state {
                    ServeState::AwaitHangup { .. } => self.install(conn),
                    _ => self.drop_serve(
                        conn,
                        Some(AgentError::Timeout {
                            what: "waiting for the target's request",
                            after: self.cfg.exchange_timeout,
                        }),
                    ),
                },
                Some(Conn::Ask { rotation, .. }) => {
                    let rotation = *rotation;
                    self.finish(
                        rotation,
                        Err(AgentError::Timeout {
                            what: "asking the target to rotate",
                            after: self.cfg.exchange_timeout,
                        }),
                    );
                }
                None => {}
            }
        }
        let overdue: Vec<RotationId> = self
            .rotations
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            self.finish(
                id,
                Err(AgentError::RotationTimeout {
                    after: self.cfg.rotation_timeout,
                }),
            );
        }
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<HubAction> {
        self.actions.pop_front()
    }

    /// Rotations in progress.
    pub fn rotations_in_progress(&self) -> usize {
        self.rotations.len()
    }

    fn rotations_of(&self, host: &str) -> Vec<RotationId> {
        self.rotations
            .iter()
            .filter(|(_, r)| r.host.name == host)
            .map(|(id, _)| *id)
            .collect()
    }

    fn flush(&mut self, conn: ConnId) {
        conns::flush(&mut self.conns, conn, &mut self.actions);
    }

    fn close(&mut self, conn: ConnId) {
        conns::close(&mut self.conns, conn, &mut self.actions);
    }

    fn push_failed(&mut self, peer: Ipv4Addr, host: Option<String>, error: AgentError) {
        self.actions
            .push_back(HubAction::ConversationFailed { peer, host, error });
    }

    fn drop_serve(&mut self, conn: ConnId, error: Option<AgentError>) {
        if let Some(Conn::Serve(s)) = self.conns.get(&conn) {
            let (ip, host) = (s.ip, s.host.as_ref().map(|h| h.name.clone()));
            self.close(conn);
            if let Some(error) = error {
                self.push_failed(ip, host, error);
            }
        }
    }

    fn refuse(&mut self, conn: ConnId, error: AgentError) {
        if let Some(Conn::Serve(s)) = self.conns.get_mut(&conn) {
            // The refusal is best effort: the conversation ends either way.
            let _ = s.channel.send(&Message::refusal(&error));
        }
        self.drop_serve(conn, Some(error));
    }

    fn install(&mut self, conn: ConnId) {
        if let Some(Conn::Serve(Serve {
            state: ServeState::AwaitHangup { host },
            ..
        })) = self.conns.get(&conn)
        {
            let host = host.clone();
            self.close(conn);
            self.actions.push_back(HubAction::InstallPeerKey { host });
        }
    }

    fn serve_bytes(&mut self, conn: ConnId, bytes: &[u8], now: Instant) {
        let Some(Conn::Serve(s)) = self.conns.get_mut(&conn) else {
            return;
        };
        let inbound = s.channel.receive(bytes);
        self.flush(conn);
        let inbound = match inbound {
            Ok(i) => i,
            Err(e) => return self.drop_serve(conn, Some(e)),
        };
        for i in inbound {
            let Inbound::Message(msg) = i else { continue };
            self.serve_message(conn, msg, now);
        }
    }

    fn serve_message(&mut self, conn: ConnId, msg: Message, now: Instant) {
        let Some(Conn::Serve(s)) = self.conns.get(&conn) else {
            return;
        };
        if !matches!(s.state, ServeState::AwaitRequest) {
            // After the request only a hang-up is expected; anything else is ignored.
            return;
        }
        let Some(host) = s.host.clone() else {
            let e = AgentError::UnknownHost { ip: s.ip };
            return self.refuse(conn, e);
        };
        match msg {
            Message::RotateWgKey { new_public_key } => {
                if let Err(e) = check_public_key(&new_public_key) {
                    return self.refuse(conn, e);
                }
                let reused = new_public_key == host.wg_public_key
                    || self
                        .retired
                        .get(&host.name)
                        .is_some_and(|k| k.contains(&new_public_key));
                if reused {
                    return self.refuse(conn, AgentError::KeyReused);
                }
                let asked = self.rotations_of(&host.name).iter().any(|id| {
                    self.rotations
                        .get(id)
                        .is_some_and(|r| matches!(r.stage, Stage::AwaitKey | Stage::Asking))
                });
                if !asked {
                    let recent = self.self_started.entry(host.name.clone()).or_default();
                    while recent
                        .front()
                        .is_some_and(|t| now.saturating_duration_since(*t) >= HOUR)
                    {
                        recent.pop_front();
                    }
                    if recent.len() >= MAX_TARGET_ROTATIONS_PER_HOUR {
                        return self.refuse(
                            conn,
                            AgentError::RateLimited {
                                limit: MAX_TARGET_ROTATIONS_PER_HOUR,
                            },
                        );
                    }
                    recent.push_back(now);
                }
                let new = HostInfo {
                    wg_public_key: new_public_key.clone(),
                    ..host.clone()
                };
                if let Some(Conn::Serve(s)) = self.conns.get_mut(&conn) {
                    s.state = ServeState::Recording {
                        host: new,
                        peer_gone: false,
                    };
                    s.deadline = None;
                }
                self.actions.push_back(HubAction::RecordRotation {
                    conn,
                    host: host.name.clone(),
                    old_public_key: host.wg_public_key,
                    new_public_key,
                });
            }
            Message::ConfirmKey => {
                if let Some(Conn::Serve(s)) = self.conns.get_mut(&conn) {
                    let _ = s.channel.send(&Message::Ok);
                }
                self.close(conn);
                self.actions.push_back(HubAction::KeyConfirmed {
                    host: host.name.clone(),
                });
                for id in self.rotations_of(&host.name) {
                    let Some(r) = self.rotations.get(&id) else {
                        continue;
                    };
                    // A confirmation completes only a rotation whose new key is recorded; an
                    // old or replayed one before that changes nothing.
                    if let Stage::AwaitConfirm { new_key } = r.stage.clone() {
                        self.finish(id, Ok(new_key));
                    }
                }
            }
            Message::RotateNow => self.refuse(
                conn,
                AgentError::NotAllowed {
                    what: "only the hub asks for rotations",
                },
            ),
            other => self.refuse(
                conn,
                AgentError::Unexpected {
                    what: format!("{} as a request to the hub", other.name()),
                },
            ),
        }
    }

    fn ask_event(&mut self, conn: ConnId, rotation: RotationId, event: AskEvent, now: Instant) {
        match event {
            AskEvent::RetryInV1 => {
                self.close(conn);
                self.ask(rotation, true, now);
            }
            AskEvent::Reply(Message::Ok) => {
                self.close(conn);
                if let Some(r) = self.rotations.get_mut(&rotation) {
                    r.conn = None;
                    if r.stage == Stage::Asking {
                        r.stage = Stage::AwaitKey;
                    }
                }
            }
            AskEvent::Reply(Message::Refused { code, message }) => {
                self.finish(rotation, Err(AgentError::Refused { code, message }));
            }
            AskEvent::Reply(other) => self.finish(
                rotation,
                Err(AgentError::Unexpected {
                    what: format!("{} as the answer to rotate_now", other.name()),
                }),
            ),
        }
    }

    fn finish(&mut self, rotation: RotationId, result: Result<String, AgentError>) {
        let Some(r) = self.rotations.remove(&rotation) else {
            return;
        };
        if let Some(conn) = r.conn {
            self.close(conn);
        }
        self.actions.push_back(HubAction::RotationFinished {
            rotation,
            host: r.host.name,
            result,
        });
    }
}
