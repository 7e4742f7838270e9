//! A target's side: serves its hub's `rotate_now` and rotates its own key (asked by the hub,
//! by the operator, or on schedule).
//!
//! One rotation:
//! 1. [`TargetAction::StageKey`]: the driver makes a fresh key beside the current one and
//!    answers [`Target::staged`] with its public half.
//! 2. `rotate_wg_key {new key}` to the hub; on its `ok` the target hangs up at once (the hub
//!    installs the new key when the stream ends). On a refusal: [`TargetAction::DiscardStagedKey`].
//! 3. [`TargetAction::PromoteKey`]: the driver makes the staged key the key, switches the tunnel
//!    to it and audits; answers [`Target::promoted`].
//! 4. `confirm_key` over the new session, retried every [`TargetConfig::confirm_retry`] within
//!    [`TargetConfig::confirm_window`]; then [`TargetAction::RotationFinished`].

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::channel::{Ask, AskEvent, Channel, Inbound};
use crate::conns::{self, Io, Outgoing};
use crate::error::{AgentError, EffectError};
use crate::version::VersionRange;
use crate::wire::Message;
use crate::{ConnId, RotationId};

/// How a [`Target`] behaves.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// The protocol versions it speaks (default [`VersionRange::SUPPORTED`]).
    pub versions: VersionRange,
    /// The hub's overlay address: the only peer it talks to.
    pub hub_ip: Ipv4Addr,
    /// How long one request may wait for its answer (default 10 s).
    pub exchange_timeout: Duration,
    /// How long the new key may take to be confirmed (default 20 s).
    pub confirm_window: Duration,
    /// Pause between confirmation attempts (default 500 ms).
    pub confirm_retry: Duration,
}

impl TargetConfig {
    /// The defaults for a target whose hub is at `hub_ip`.
    pub fn new(hub_ip: Ipv4Addr) -> TargetConfig {
        TargetConfig {
            versions: VersionRange::SUPPORTED,
            hub_ip,
            exchange_timeout: Duration::from_secs(10),
            confirm_window: Duration::from_secs(20),
            confirm_retry: Duration::from_millis(500),
        }
    }
}

/// What a target's driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TargetAction {
    /// Open, write to or hang up a connection.
    Io(Io),
    /// Make a fresh staged WireGuard key (replacing any older staged one); answer with
    /// [`Target::staged`].
    StageKey,
    /// The hub did not take the staged key: delete it.
    DiscardStagedKey,
    /// The hub has the new key durably: make the staged key this machine's key, switch the
    /// tunnel to it, audit `vpn.key_rotation`; answer with [`Target::promoted`].
    PromoteKey {
        /// Its public half.
        new_public_key: String,
    },
    /// A rotation ended (one action per [`RotationId`] it served).
    RotationFinished {
        /// Which.
        rotation: RotationId,
        /// Whether the hub asked for it (nobody waits for it locally).
        asked_by_hub: bool,
        /// The new key, or why it failed.
        result: Result<String, AgentError>,
    },
    /// A conversation the hub started failed or was refused (log it).
    ConversationFailed {
        /// What went wrong.
        error: AgentError,
    },
}

impl From<Io> for TargetAction {
    fn from(io: Io) -> TargetAction {
        TargetAction::Io(io)
    }
}

#[derive(Debug)]
enum Conn {
    Serve { channel: Channel, deadline: Instant },
    Ask(Ask),
}

impl Outgoing for Conn {
    fn take_output(&mut self) -> Vec<u8> {
        match self {
            Conn::Serve { channel, .. } => channel.take_output(),
            Conn::Ask(ask) => ask.take_output(),
        }
    }
}

#[derive(Debug)]
enum Stage {
    Staging,
    Telling {
        new_key: String,
        conn: ConnId,
    },
    Promoting {
        new_key: String,
    },
    Confirming {
        new_key: String,
        conn: Option<ConnId>,
        until: Instant,
        retry_at: Option<Instant>,
    },
}

#[derive(Debug)]
struct Rotation {
    waiting: Vec<(RotationId, bool)>,
    stage: Stage,
    /// The hub answered a hello like the first release: speak v1 for the rest of this
    /// rotation (the next one probes again, in case the hub was upgraded meanwhile).
    hub_v1: bool,
}

/// A target's agent state machine. Sans-IO: the driver feeds it connections, bytes, results
/// and the time, and performs its [`TargetAction`]s.
#[derive(Debug)]
pub struct Target {
    cfg: TargetConfig,
    next_id: u64,
    conns: BTreeMap<ConnId, Conn>,
    rotation: Option<Rotation>,
    queued: Vec<(RotationId, bool)>,
    actions: VecDeque<TargetAction>,
}

impl Target {
    /// A target with no conversations.
    pub fn new(cfg: TargetConfig) -> Target {
        Target {
            cfg,
            next_id: 0,
            conns: BTreeMap::new(),
            rotation: None,
            queued: Vec::new(),
            actions: VecDeque::new(),
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A stream arrived from `ip`; `None` (drop it) unless it is the hub.
    pub fn accept(&mut self, ip: Ipv4Addr, now: Instant) -> Option<ConnId> {
        if ip != self.cfg.hub_ip {
            return None;
        }
        let conn = ConnId(self.id());
        self.conns.insert(
            conn,
            Conn::Serve {
                channel: Channel::responder(self.cfg.versions),
                deadline: now + self.cfg.exchange_timeout,
            },
        );
        Some(conn)
    }

    /// Rotates this machine's key; ends with [`TargetAction::RotationFinished`]. A request
    /// during a rotation waits for it and then gets a rotation of its own.
    pub fn start_rotation(&mut self, now: Instant) -> RotationId {
        let id = RotationId(self.id());
        self.begin(id, false, now);
        id
    }

    fn begin(&mut self, id: RotationId, asked_by_hub: bool, _now: Instant) {
        if self.rotation.is_some() {
            self.queued.push((id, asked_by_hub));
            return;
        }
        self.rotation = Some(Rotation {
            waiting: vec![(id, asked_by_hub)],
            stage: Stage::Staging,
            hub_v1: false,
        });
        self.actions.push_back(TargetAction::StageKey);
    }

    /// Whether a rotation is under way.
    pub fn is_rotating(&self) -> bool {
        self.rotation.is_some()
    }

    /// The result of [`TargetAction::StageKey`]: the new public key, or why there is none.
    pub fn staged(&mut self, result: Result<String, EffectError>, now: Instant) {
        let Some(Rotation {
            stage: Stage::Staging,
            ..
        }) = self.rotation
        else {
            return;
        };
        match result {
            Ok(new_key) => {
                let conn = self.ask(
                    Message::RotateWgKey {
                        new_public_key: new_key.clone(),
                    },
                    false,
                    now,
                );
                if let Some(r) = &mut self.rotation {
                    r.stage = Stage::Telling { new_key, conn };
                }
            }
            Err(cause) => self.finish(Err(AgentError::Local {
                what: "making a new WireGuard key",
                cause,
            })),
        }
    }

    /// The result of [`TargetAction::PromoteKey`].
    pub fn promoted(&mut self, result: Result<(), EffectError>, now: Instant) {
        let new_key = match &self.rotation {
            Some(Rotation {
                stage: Stage::Promoting { new_key },
                ..
            }) => new_key.clone(),
            _ => return,
        };
        if let Err(cause) = result {
            return self.finish(Err(AgentError::Local {
                what: "switching the tunnel to the new key",
                cause,
            }));
        }
        let conn = self.ask(Message::ConfirmKey, false, now);
        if let Some(r) = &mut self.rotation {
            r.stage = Stage::Confirming {
                new_key,
                conn: Some(conn),
                until: now + self.cfg.confirm_window,
                retry_at: None,
            };
        }
    }

    fn ask(&mut self, request: Message, peer_v1: bool, now: Instant) -> ConnId {
        let peer_v1 = peer_v1 || self.rotation.as_ref().is_some_and(|r| r.hub_v1);
        let conn = ConnId(self.id());
        let ask = Ask::new(
            self.cfg.versions,
            request,
            peer_v1,
            now,
            self.cfg.exchange_timeout,
        );
        self.conns.insert(conn, Conn::Ask(ask));
        let ip = self.cfg.hub_ip;
        self.actions.push_back(Io::Connect { conn, ip }.into());
        conn
    }

    /// The stream of a [`Io::Connect`] is open.
    pub fn connected(&mut self, conn: ConnId, now: Instant) {
        let Some(Conn::Ask(ask)) = self.conns.get_mut(&conn) else {
            return;
        };
        let r = ask.connected();
        self.flush(conn);
        if let Err(e) = r {
            self.ask_failed(conn, e, now);
        }
    }

    /// Bytes arrived on a connection.
    pub fn received(&mut self, conn: ConnId, bytes: &[u8], now: Instant) {
        match self.conns.get_mut(&conn) {
            Some(Conn::Serve { channel, .. }) => {
                let inbound = channel.receive(bytes);
                self.flush(conn);
                match inbound {
                    Err(e) => {
                        self.close(conn);
                        self.actions
                            .push_back(TargetAction::ConversationFailed { error: e });
                    }
                    Ok(inbound) => {
                        for i in inbound {
                            if let Inbound::Message(m) = i {
                                self.serve_message(conn, m, now);
                            }
                        }
                    }
                }
            }
            Some(Conn::Ask(ask)) => {
                let event = ask.received(bytes);
                self.flush(conn);
                match event {
                    Ok(None) => {}
                    Ok(Some(e)) => self.ask_event(conn, e, now),
                    Err(e) => self.ask_failed(conn, e, now),
                }
            }
            None => {}
        }
    }

    /// The peer hung up (end of stream).
    pub fn closed(&mut self, conn: ConnId, now: Instant) {
        match self.conns.get(&conn) {
            Some(Conn::Serve { .. }) => self.close(conn),
            Some(Conn::Ask(ask)) => match ask.closed("before answering") {
                Ok(e) => self.ask_event(conn, e, now),
                Err(e) => self.ask_failed(conn, e, now),
            },
            None => {}
        }
    }

    /// The connection could not be opened, or reading/writing failed.
    pub fn failed(&mut self, conn: ConnId, reason: String, now: Instant) {
        match self.conns.get(&conn) {
            Some(Conn::Serve { .. }) => self.close(conn),
            Some(Conn::Ask(_)) => self.ask_failed(conn, AgentError::Transport { reason }, now),
            None => {}
        }
    }

    /// The earliest time [`Target::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conns = self.conns.values().map(|c| match c {
            Conn::Serve { deadline, .. } => *deadline,
            Conn::Ask(ask) => ask.deadline,
        });
        let retry = match &self.rotation {
            Some(Rotation {
                stage: Stage::Confirming { retry_at, .. },
                ..
            }) => *retry_at,
            _ => None,
        };
        conns.chain(retry).min()
    }

    /// Time passed: gives up on what is overdue and retries the confirmation.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| match c {
                Conn::Serve { deadline, .. } => *deadline <= now,
                Conn::Ask(ask) => ask.deadline <= now,
            })
            .map(|(id, _)| *id)
            .collect();
        for conn in due {
            match self.conns.get(&conn) {
                Some(Conn::Serve { .. }) => {
                    self.close(conn);
                    self.actions.push_back(TargetAction::ConversationFailed {
                        error: AgentError::Timeout {
                            what: "waiting for the hub's request",
                            after: self.cfg.exchange_timeout,
                        },
                    });
                }
                Some(Conn::Ask(_)) => {
                    let e = AgentError::Timeout {
                        what: "waiting for the hub's answer",
                        after: self.cfg.exchange_timeout,
                    };
                    self.ask_failed(conn, e, now);
                }
                None => {}
            }
        }
        let retry = match &self.rotation {
            Some(Rotation {
                stage:
                    Stage::Confirming {
                        retry_at: Some(t), ..
                    },
                ..
            }) => *t <= now,
            _ => false,
        };
        if retry {
            let conn = self.ask(Message::ConfirmKey, false, now);
            if let Some(Rotation {
                stage:
                    Stage::Confirming {
                        conn: c, retry_at, ..
                    },
                ..
            }) = &mut self.rotation
            {
                *c = Some(conn);
                *retry_at = None;
            }
        }
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<TargetAction> {
        self.actions.pop_front()
    }

    fn flush(&mut self, conn: ConnId) {
        conns::flush(&mut self.conns, conn, &mut self.actions);
    }

    fn close(&mut self, conn: ConnId) {
        conns::close(&mut self.conns, conn, &mut self.actions);
    }

    fn serve_message(&mut self, conn: ConnId, msg: Message, now: Instant) {
        let Some(Conn::Serve { channel, .. }) = self.conns.get_mut(&conn) else {
            return;
        };
        match msg {
            Message::RotateNow => {
                let _ = channel.send(&Message::Ok);
                self.close(conn);
                let id = RotationId(self.id());
                self.begin(id, true, now);
            }
            _ => {
                let e = AgentError::NotAllowed {
                    what: "unsupported request: a target serves only rotate_now",
                };
                let _ = channel.send(&Message::refusal(&e));
                self.close(conn);
                self.actions
                    .push_back(TargetAction::ConversationFailed { error: e });
            }
        }
    }

    /// Which stage the conversation `conn` belongs to.
    fn is_current(&self, conn: ConnId) -> bool {
        match &self.rotation {
            Some(Rotation {
                stage: Stage::Telling { conn: c, .. },
                ..
            }) => *c == conn,
            Some(Rotation {
                stage: Stage::Confirming { conn: c, .. },
                ..
            }) => *c == Some(conn),
            _ => false,
        }
    }

    fn ask_event(&mut self, conn: ConnId, event: AskEvent, now: Instant) {
        let request = match &self.rotation {
            Some(Rotation {
                stage: Stage::Telling { new_key, .. },
                ..
            }) if self.is_current(conn) => Message::RotateWgKey {
                new_public_key: new_key.clone(),
            },
            Some(Rotation {
                stage: Stage::Confirming { .. },
                ..
            }) if self.is_current(conn) => Message::ConfirmKey,
            _ => return self.close(conn),
        };
        match event {
            AskEvent::RetryInV1 => {
                self.close(conn);
                if let Some(r) = &mut self.rotation {
                    r.hub_v1 = true;
                }
                let again = self.ask(request, true, now);
                match &mut self.rotation {
                    Some(Rotation {
                        stage: Stage::Telling { conn: c, .. },
                        ..
                    }) => *c = again,
                    Some(Rotation {
                        stage: Stage::Confirming { conn: c, .. },
                        ..
                    }) => *c = Some(again),
                    _ => {}
                }
            }
            AskEvent::Reply(Message::Ok) => {
                // Hang up at once: the hub installs the new key when this stream ends.
                self.close(conn);
                let Some(r) = &mut self.rotation else { return };
                match &r.stage {
                    Stage::Telling { new_key, .. } => {
                        let new_key = new_key.clone();
                        r.stage = Stage::Promoting {
                            new_key: new_key.clone(),
                        };
                        self.actions.push_back(TargetAction::PromoteKey {
                            new_public_key: new_key,
                        });
                    }
                    Stage::Confirming { new_key, .. } => {
                        let new_key = new_key.clone();
                        self.finish(Ok(new_key));
                    }
                    _ => {}
                }
            }
            AskEvent::Reply(Message::Refused { code, message }) => {
                self.ask_failed(conn, AgentError::Refused { code, message }, now)
            }
            AskEvent::Reply(other) => {
                let e = AgentError::Unexpected {
                    what: format!("{} as the hub's answer", other.name()),
                };
                self.ask_failed(conn, e, now);
            }
        }
    }

    fn ask_failed(&mut self, conn: ConnId, error: AgentError, now: Instant) {
        let current = self.is_current(conn);
        self.close(conn);
        if !current {
            return;
        }
        let Some(r) = &mut self.rotation else { return };
        match &mut r.stage {
            Stage::Telling { .. } => {
                self.actions.push_back(TargetAction::DiscardStagedKey);
                self.finish(Err(error));
            }
            Stage::Confirming {
                until,
                conn: c,
                retry_at,
                ..
            } => {
                if now >= *until {
                    let e = AgentError::NotConfirmed {
                        after: self.cfg.confirm_window,
                        last: Box::new(error),
                    };
                    self.finish(Err(e));
                } else {
                    *c = None;
                    *retry_at = Some(now + self.cfg.confirm_retry);
                }
            }
            _ => {}
        }
    }

    fn finish(&mut self, result: Result<String, AgentError>) {
        let Some(r) = self.rotation.take() else {
            return;
        };
        for (rotation, asked_by_hub) in r.waiting {
            self.actions.push_back(TargetAction::RotationFinished {
                rotation,
                asked_by_hub,
                result: result.clone(),
            });
        }
        let queued = std::mem::take(&mut self.queued);
        if !queued.is_empty() {
            self.rotation = Some(Rotation {
                waiting: queued,
                stage: Stage::Staging,
                hub_v1: false,
            });
            self.actions.push_back(TargetAction::StageKey);
        }
    }
}
