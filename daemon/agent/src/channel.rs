//! One conversation's codec state: version negotiation, sequence numbers, line framing.
//! Shared by the hub's and the target's machines; knows nothing about what the messages mean.

use std::time::{Duration, Instant};

use crate::error::{AgentError, Result};
use crate::version::{Version, VersionRange};
use crate::wire::{LineDecoder, MAX_MESSAGE, Message, v1, v2};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Initiator,
    Responder,
}

/// What a channel delivers to its machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// Initiator: the handshake is done, the request may go out.
    Ready,
    /// A message of the conversation.
    Message(Message),
    /// Initiator: the peer answered the hello like a v1 release; reconnect and speak v1.
    PeerIsV1,
}

/// Codec state of one connection.
#[derive(Debug)]
pub(crate) struct Channel {
    side: Side,
    ours: VersionRange,
    version: Option<Version>,
    decoder: LineDecoder,
    next_send: u64,
    next_recv: u64,
    hello_sent: bool,
    received_any: bool,
    out: Vec<u8>,
}

impl Channel {
    fn new(side: Side, ours: VersionRange) -> Channel {
        Channel {
            side,
            ours,
            version: None,
            decoder: LineDecoder::new(MAX_MESSAGE),
            next_send: 0,
            next_recv: 0,
            hello_sent: false,
            received_any: false,
            out: Vec::new(),
        }
    }

    /// The accepting side.
    pub(crate) fn responder(ours: VersionRange) -> Channel {
        Channel::new(Side::Responder, ours)
    }

    /// The connecting side. `peer_v1`: the peer is known to speak only v1 (no handshake).
    pub(crate) fn initiator(ours: VersionRange, peer_v1: bool) -> Channel {
        let mut c = Channel::new(Side::Initiator, ours);
        if peer_v1 || ours.max < Version::V2 {
            c.version = Some(Version::V1);
        }
        c
    }

    /// Initiator, once connected: queues the hello. `Ok(true)`: no handshake needed (v1), the
    /// request may go out at once.
    pub(crate) fn open(&mut self) -> Result<bool> {
        if let Some(v) = self.version {
            if !self.ours.contains(v) {
                return Err(AgentError::UnsupportedVersion {
                    ours: self.ours,
                    theirs: VersionRange::only(v),
                });
            }
            return Ok(true);
        }
        let hello = v2::Handshake::Hello {
            min: self.ours.min,
            max: self.ours.max,
        };
        self.push_envelope(Version::V2, v2::Body::Handshake(hello))?;
        self.hello_sent = true;
        Ok(false)
    }

    fn push_envelope(&mut self, v: Version, msg: v2::Body) -> Result<()> {
        let line = v2::encode(&v2::Envelope {
            v,
            seq: self.next_send,
            msg,
        })?;
        self.next_send += 1;
        self.out.extend_from_slice(&line);
        Ok(())
    }

    /// Queues `msg` in the negotiated version.
    pub(crate) fn send(&mut self, msg: &Message) -> Result<()> {
        match self.version {
            Some(Version::V1) => {
                let line = v1::encode(msg)?;
                self.out.extend_from_slice(&line);
                Ok(())
            }
            Some(v) => self.push_envelope(v, v2::Body::Message(msg.clone())),
            None => Err(AgentError::Unexpected {
                what: format!("{} before the version handshake", msg.name()),
            }),
        }
    }

    /// Bytes to write to the connection.
    pub(crate) fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Feeds received bytes. On an error the channel may have queued a last line for the peer
    /// (a version mismatch or a v1 refusal): write [`Channel::take_output`], then hang up.
    pub(crate) fn receive(&mut self, bytes: &[u8]) -> Result<Vec<Inbound>> {
        self.decoder.push(bytes)?;
        let mut out = Vec::new();
        while let Some(line) = self.decoder.next_line() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.received_any = true;
            out.push(self.line(&line)?);
        }
        Ok(out)
    }

    /// Initiator: whether a hang-up now means "the peer is a v1 release" (it answered the hello
    /// by closing, as the first release's hub does).
    pub(crate) fn hangup_means_v1(&self) -> bool {
        self.side == Side::Initiator
            && self.version.is_none()
            && self.hello_sent
            && !self.received_any
    }

    fn line(&mut self, line: &[u8]) -> Result<Inbound> {
        match (self.side, self.version) {
            (Side::Responder, None) => self.first_request(line),
            (Side::Initiator, None) => self.hello_answer(line),
            (_, Some(Version::V1)) => v1::decode(line).map(Inbound::Message),
            (_, Some(v)) => {
                let env = v2::decode(line)?;
                self.check_seq(&env)?;
                if env.v != v {
                    return Err(AgentError::Malformed {
                        what: format!("a {} line in a {v} conversation", env.v),
                    });
                }
                match env.msg {
                    v2::Body::Message(m) => Ok(Inbound::Message(m)),
                    v2::Body::Handshake(_) => Err(AgentError::Unexpected {
                        what: "a second version handshake".into(),
                    }),
                }
            }
        }
    }

    fn check_seq(&mut self, env: &v2::Envelope) -> Result<()> {
        if env.seq != self.next_recv {
            return Err(AgentError::Sequence {
                got: env.seq,
                expected: self.next_recv,
            });
        }
        self.next_recv += 1;
        Ok(())
    }

    fn first_request(&mut self, line: &[u8]) -> Result<Inbound> {
        if !v2::is_envelope(line) || self.ours.max < Version::V2 {
            // A v1 request (or, for a v1-only machine, anything it cannot read).
            let msg = match v1::decode(line) {
                Ok(m) => m,
                Err(e) => {
                    self.out
                        .extend_from_slice(&v1::encode(&Message::refusal(&e))?);
                    return Err(e);
                }
            };
            if !self.ours.contains(Version::V1) {
                let e = AgentError::UnsupportedVersion {
                    ours: self.ours,
                    theirs: VersionRange::only(Version::V1),
                };
                self.out
                    .extend_from_slice(&v1::encode(&Message::refusal(&e))?);
                return Err(e);
            }
            self.version = Some(Version::V1);
            return Ok(Inbound::Message(msg));
        }
        let env = v2::decode(line)?;
        self.check_seq(&env)?;
        let theirs = match &env.msg {
            v2::Body::Handshake(h @ v2::Handshake::Hello { .. }) => h.range(),
            _ => None,
        };
        let Some(theirs) = theirs else {
            return Err(AgentError::Unexpected {
                what: "a conversation that does not open with hello".into(),
            });
        };
        match self.ours.negotiate(&theirs) {
            Ok(v) => {
                let ack = v2::Handshake::HelloAck {
                    version: v,
                    min: self.ours.min,
                    max: self.ours.max,
                };
                self.push_envelope(Version::V2, v2::Body::Handshake(ack))?;
                self.version = Some(v);
                Ok(Inbound::Ready)
            }
            Err(e) => {
                let no = v2::Handshake::VersionMismatch {
                    min: self.ours.min,
                    max: self.ours.max,
                };
                self.push_envelope(Version::V2, v2::Body::Handshake(no))?;
                Err(e)
            }
        }
    }

    fn hello_answer(&mut self, line: &[u8]) -> Result<Inbound> {
        if !v2::is_envelope(line) {
            // The first release answers anything but its requests with a v1 refusal.
            v1::decode(line)?;
            if !self.ours.contains(Version::V1) {
                return Err(AgentError::UnsupportedVersion {
                    ours: self.ours,
                    theirs: VersionRange::only(Version::V1),
                });
            }
            return Ok(Inbound::PeerIsV1);
        }
        let env = v2::decode(line)?;
        self.check_seq(&env)?;
        let (handshake, theirs) = match &env.msg {
            v2::Body::Handshake(h) => (Some(h), h.range()),
            v2::Body::Message(_) => (None, None),
        };
        match (handshake, theirs) {
            (Some(v2::Handshake::HelloAck { version, .. }), Some(theirs)) => {
                if !self.ours.contains(*version) || !theirs.contains(*version) {
                    return Err(AgentError::Malformed {
                        what: format!(
                            "the peer chose {version}, outside {} or its own {theirs}",
                            self.ours
                        ),
                    });
                }
                self.version = Some(*version);
                Ok(Inbound::Ready)
            }
            (Some(v2::Handshake::VersionMismatch { .. }), Some(theirs)) => {
                Err(AgentError::UnsupportedVersion {
                    ours: self.ours,
                    theirs,
                })
            }
            _ => Err(AgentError::Unexpected {
                what: "an answer to hello that is neither hello_ack nor version_mismatch".into(),
            }),
        }
    }
}

/// What an [`Ask`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AskEvent {
    /// The peer's answer to the request.
    Reply(Message),
    /// The peer speaks only v1: hang up and ask again on a new connection with `peer_v1`.
    RetryInV1,
}

/// The connecting side of one request/reply exchange (with the handshake before it).
#[derive(Debug)]
pub(crate) struct Ask {
    channel: Channel,
    request: Message,
    sent: bool,
    /// When the exchange gives up.
    pub(crate) deadline: Instant,
}

impl Ask {
    pub(crate) fn new(
        ours: VersionRange,
        request: Message,
        peer_v1: bool,
        now: Instant,
        timeout: Duration,
    ) -> Ask {
        Ask {
            channel: Channel::initiator(ours, peer_v1),
            request,
            sent: false,
            deadline: now + timeout,
        }
    }

    /// The connection is open.
    pub(crate) fn connected(&mut self) -> Result<()> {
        if self.channel.open()? {
            self.send_request()?;
        }
        Ok(())
    }

    fn send_request(&mut self) -> Result<()> {
        self.channel.send(&self.request)?;
        self.sent = true;
        Ok(())
    }

    /// Bytes received; `Some` once there is an answer.
    pub(crate) fn received(&mut self, bytes: &[u8]) -> Result<Option<AskEvent>> {
        for inbound in self.channel.receive(bytes)? {
            match inbound {
                Inbound::Ready => self.send_request()?,
                Inbound::PeerIsV1 => return Ok(Some(AskEvent::RetryInV1)),
                Inbound::Message(m) if self.sent => return Ok(Some(AskEvent::Reply(m))),
                Inbound::Message(m) => {
                    return Err(AgentError::Unexpected {
                        what: format!("{} before the request was sent", m.name()),
                    });
                }
            }
        }
        Ok(None)
    }

    /// The peer hung up before answering.
    pub(crate) fn closed(&self, during: &'static str) -> Result<AskEvent> {
        if self.channel.hangup_means_v1() {
            if self.channel.ours.contains(Version::V1) {
                return Ok(AskEvent::RetryInV1);
            }
            return Err(AgentError::UnsupportedVersion {
                ours: self.channel.ours,
                theirs: VersionRange::only(Version::V1),
            });
        }
        Err(AgentError::HungUp { during })
    }

    /// Bytes to write.
    pub(crate) fn take_output(&mut self) -> Vec<u8> {
        self.channel.take_output()
    }
}
