//! Messages and their encodings, one codec per protocol version.
//!
//! Both versions send one JSON object per line (`\n`), at most [`MAX_MESSAGE`] bytes.
//!
//! **v1** (the first release; frozen): the connecting side sends one request, the other answers
//! with one reply, and the connection ends.
//!
//! ```text
//! {"op":"rotate_now"} | {"op":"rotate_wg_key","new_public_key":"B64"} | {"op":"confirm_key"}
//! {"ok":true} | {"ok":false,"error":"why"}
//! ```
//!
//! **v2**: every line is an envelope `{"v":VERSION,"seq":N,"msg":{"type":..,..}}`. `seq` counts
//! each side's lines from 0, so a replayed or reordered line is detected. The connecting side
//! opens with `hello {min,max}`; the other side answers `hello_ack {version,min,max}` with the
//! highest common version, or `version_mismatch {min,max}` and hangs up. Unknown message types
//! decode as [`Message::Unknown`] and are refused with code `unsupported_message`, and unknown
//! envelope fields are ignored: later versions extend the protocol without breaking v2 peers.

use serde::{Deserialize, Serialize};

use crate::error::{AgentError, Result};
use crate::version::{Version, VersionRange};

/// Largest agent message (one line), in bytes.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// One message of a hub↔target conversation, whatever the version carrying it. Its serde form
/// is the v2 body (`{"type":"rotate_wg_key","new_public_key":..}`); v1 has its own codec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Message {
    /// Hub → target: rotate your WireGuard key now.
    RotateNow,
    /// Target → hub: this is my new WireGuard public key (standard base64).
    RotateWgKey {
        /// The new public key.
        new_public_key: String,
    },
    /// Target → hub, over the new session: the new key works.
    ConfirmKey,
    /// The request was done.
    Ok,
    /// The request was refused.
    Refused {
        /// [`AgentError::code`] of the reason (empty from v1 peers).
        code: String,
        /// The reason, for people.
        message: String,
    },
    /// A v2+ message type this release does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl Message {
    /// The refusal answering `error`.
    pub fn refusal(error: &AgentError) -> Message {
        Message::Refused {
            code: error.code().to_owned(),
            message: error.to_string(),
        }
    }

    /// A short name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Message::RotateNow => "rotate_now",
            Message::RotateWgKey { .. } => "rotate_wg_key",
            Message::ConfirmKey => "confirm_key",
            Message::Ok => "ok",
            Message::Refused { .. } => "refused",
            Message::Unknown => "unknown",
        }
    }
}

/// The v1 codec, kept byte for byte so this release talks to the previous one.
pub mod v1 {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
    enum Request {
        RotateNow,
        RotateWgKey { new_public_key: String },
        ConfirmKey,
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Reply {
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    enum Line {
        Request(Request),
        Reply(Reply),
    }

    /// Encodes `msg` as one v1 line (with its `\n`).
    pub fn encode(msg: &Message) -> Result<Vec<u8>> {
        let json = match msg {
            Message::RotateNow => serde_json::to_vec(&Request::RotateNow),
            Message::RotateWgKey { new_public_key } => serde_json::to_vec(&Request::RotateWgKey {
                new_public_key: new_public_key.clone(),
            }),
            Message::ConfirmKey => serde_json::to_vec(&Request::ConfirmKey),
            Message::Ok => serde_json::to_vec(&Reply {
                ok: true,
                error: None,
            }),
            Message::Refused { message, .. } => serde_json::to_vec(&Reply {
                ok: false,
                error: Some(message.clone()),
            }),
            Message::Unknown => {
                return Err(AgentError::NotInVersion {
                    what: "unknown",
                    version: Version::V1,
                });
            }
        };
        let mut json = json.map_err(|e| AgentError::Malformed {
            what: format!("cannot encode: {e}"),
        })?;
        json.push(b'\n');
        Ok(json)
    }

    /// Decodes one v1 line (without its `\n`).
    pub fn decode(line: &[u8]) -> Result<Message> {
        let line: Line = serde_json::from_slice(line).map_err(|e| AgentError::Malformed {
            what: format!("not a v1 request or reply: {e}"),
        })?;
        Ok(match line {
            Line::Request(Request::RotateNow) => Message::RotateNow,
            Line::Request(Request::RotateWgKey { new_public_key }) => {
                Message::RotateWgKey { new_public_key }
            }
            Line::Request(Request::ConfirmKey) => Message::ConfirmKey,
            Line::Reply(Reply { ok: true, .. }) => Message::Ok,
            Line::Reply(Reply { ok: false, error }) => Message::Refused {
                code: String::new(),
                message: error.unwrap_or_default(),
            },
        })
    }
}

/// The v2 envelope codec (also used by later versions for the handshake).
pub mod v2 {
    use super::*;

    /// The version handshake that opens a v2 conversation.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub enum Handshake {
        /// Connecting side, first line: the versions I speak.
        Hello {
            /// Oldest.
            min: Version,
            /// Newest.
            max: Version,
        },
        /// Answer to `hello`: the version both use, and the versions I speak.
        HelloAck {
            /// The chosen version.
            version: Version,
            /// Oldest I speak.
            min: Version,
            /// Newest I speak.
            max: Version,
        },
        /// Answer to `hello`: no common version; the versions I speak. The sender hangs up.
        VersionMismatch {
            /// Oldest I speak.
            min: Version,
            /// Newest I speak.
            max: Version,
        },
    }

    impl Handshake {
        /// The `type`s of the handshake bodies.
        const TYPES: [&str; 3] = ["hello", "hello_ack", "version_mismatch"];

        /// The announced range.
        pub fn range(&self) -> Option<VersionRange> {
            match self {
                Handshake::Hello { min, max }
                | Handshake::HelloAck { min, max, .. }
                | Handshake::VersionMismatch { min, max } => VersionRange::new(*min, *max),
            }
        }
    }

    /// The body of a v2 envelope: a handshake line or a [`Message`] (whose unknown types decode
    /// as [`Message::Unknown`]).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
    #[serde(untagged)]
    pub enum Body {
        /// The version handshake.
        Handshake(Handshake),
        /// A message of the conversation.
        Message(Message),
    }

    impl<'de> Deserialize<'de> for Body {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Body, D::Error> {
            use serde::de::Error;
            // Dispatch on the type, so a malformed handshake line is an error, not an unknown
            // message.
            let body = serde_json::Value::deserialize(d)?;
            let kind = body.get("type").and_then(serde_json::Value::as_str);
            if kind.is_some_and(|k| Handshake::TYPES.contains(&k)) {
                Handshake::deserialize(body).map(Body::Handshake)
            } else {
                Message::deserialize(body).map(Body::Message)
            }
            .map_err(D::Error::custom)
        }
    }

    /// One v2 line.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Envelope {
        /// The version this line is encoded in.
        pub v: Version,
        /// The sender's line number, from 0.
        pub seq: u64,
        /// The content.
        pub msg: Body,
    }

    /// Encodes one envelope as a line (with its `\n`).
    pub fn encode(env: &Envelope) -> Result<Vec<u8>> {
        let mut json = serde_json::to_vec(env).map_err(|e| AgentError::Malformed {
            what: format!("cannot encode: {e}"),
        })?;
        json.push(b'\n');
        Ok(json)
    }

    /// Decodes one line (without its `\n`).
    pub fn decode(line: &[u8]) -> Result<Envelope> {
        serde_json::from_slice(line).map_err(|e| AgentError::Malformed {
            what: format!("not a v2 envelope: {e}"),
        })
    }

    /// Whether `line` is an envelope (any version ≥ 2) rather than a v1 line: it has a `"v"`.
    pub fn is_envelope(line: &[u8]) -> bool {
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(line)
            .is_ok_and(|m| m.contains_key("v"))
    }
}

/// Splits a byte stream into lines of at most `max` bytes.
#[derive(Debug)]
pub struct LineDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl LineDecoder {
    /// A decoder with a line limit.
    pub fn new(max: usize) -> Self {
        LineDecoder {
            buf: Vec::new(),
            max,
        }
    }

    /// Adds received bytes; fails when a line grows beyond the limit.
    pub fn push(&mut self, bytes: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(bytes);
        let open = match self.buf.iter().rposition(|b| *b == b'\n') {
            Some(i) => self.buf.len() - i - 1,
            None => self.buf.len(),
        };
        if open > self.max {
            return Err(AgentError::TooLarge { max: self.max });
        }
        Ok(())
    }

    /// The next complete line (without `\n`), if one is buffered.
    pub fn next_line(&mut self) -> Option<Vec<u8>> {
        let i = self.buf.iter().position(|b| *b == b'\n')?;
        let mut line: Vec<u8> = self.buf.drain(..=i).collect();
        line.pop();
        Some(line)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn v1_lines_are_the_first_release_bytes() {
        let k = "a".repeat(43) + "=";
        assert_eq!(
            v1::encode(&Message::RotateWgKey {
                new_public_key: k.clone()
            })
            .unwrap(),
            format!("{{\"op\":\"rotate_wg_key\",\"new_public_key\":\"{k}\"}}\n").into_bytes()
        );
        assert_eq!(
            v1::encode(&Message::RotateNow).unwrap(),
            b"{\"op\":\"rotate_now\"}\n"
        );
        assert_eq!(v1::encode(&Message::Ok).unwrap(), b"{\"ok\":true}\n");
        assert_eq!(
            v1::decode(br#"{"ok":false,"error":"no"}"#).unwrap(),
            Message::Refused {
                code: String::new(),
                message: "no".into()
            }
        );
        assert!(v1::decode(br#"{"op":"rotate_later"}"#).is_err());
        assert!(v1::decode(br#"{"op":"rotate_wg_key","new_public_key":"k","x":1}"#).is_err());
        assert!(!v2::is_envelope(br#"{"op":"confirm_key"}"#));
    }

    #[test]
    fn v2_tolerates_unknown_types_and_fields() {
        let env =
            v2::decode(br#"{"v":3,"seq":4,"msg":{"type":"exec_start","cmd":"ls"},"trace":"x"}"#)
                .unwrap();
        assert_eq!(env.msg, v2::Body::Message(Message::Unknown));
        // A malformed handshake line stays an error.
        assert!(v2::decode(br#"{"v":2,"seq":0,"msg":{"type":"hello","min":"x"}}"#).is_err());
        let rotate = v2::Body::Message(Message::RotateWgKey {
            new_public_key: "k".into(),
        });
        assert_eq!(
            serde_json::to_string(&rotate).unwrap(),
            r#"{"type":"rotate_wg_key","new_public_key":"k"}"#
        );
        assert_eq!(env.seq, 4);
        let line = v2::encode(&v2::Envelope {
            v: Version::V2,
            seq: 0,
            msg: v2::Body::Handshake(v2::Handshake::Hello {
                min: Version::V1,
                max: Version::V2,
            }),
        })
        .unwrap();
        assert_eq!(
            line,
            b"{\"v\":2,\"seq\":0,\"msg\":{\"type\":\"hello\",\"min\":1,\"max\":2}}\n"
        );
        assert!(v2::is_envelope(&line[..line.len() - 1]));
    }

    #[test]
    fn decoder_splits_lines_and_limits_them() {
        let mut d = LineDecoder::new(8);
        d.push(b"abc\nde").unwrap();
        assert_eq!(d.next_line().unwrap(), b"abc");
        assert!(d.next_line().is_none());
        d.push(b"f\n").unwrap();
        assert_eq!(d.next_line().unwrap(), b"def");
        assert!(matches!(
            d.push(b"123456789"),
            Err(AgentError::TooLarge { max: 8 })
        ));
    }
}
