//! The relay protocol, sans-IO: frames, their codec, and the key proofs.
//!
//! After the HTTP/1.1 upgrade, both sides exchange frames `[type u8][length u16 BE][payload]`.
//! The relay opens with [`Frame::ServerHello`] (a fresh nonce and its X25519 key); the client
//! answers [`Frame::ClientAuth`] with its WireGuard public key, its own nonce and a proof that
//! it holds the matching private key; the relay answers [`Frame::Welcome`] with its own proof
//! (so the client knows it reached the relay it was configured with) and the byte budget it
//! grants, or [`Frame::Refused`]. Then [`Frame::Send`] / [`Frame::Recv`] carry WireGuard
//! datagrams, which are encrypted end to end: the relay never sees plaintext.
//!
//! Proofs: `K = SHA-256("tether-relay-v1" || X25519(own secret, peer public))`; the client's is
//! `HMAC-SHA256(K, "client" || server nonce || client nonce || client key)`, the relay's
//! `HMAC-SHA256(K, "relay" || client nonce || server nonce || client key)`. WireGuard keys are
//! X25519 keys, so no other key has to be distributed.
//!
//! **Admin frames.** A client whose key is one of the relay's admin keys (the hubs) may send
//! [`Frame::AllowSet`]: the complete set of keys it allows, in chunks of at most [`SET_CHUNK`]
//! keys (frames stay under [`MAX_PAYLOAD`]); the first chunk has `first`, the last `last` (one
//! chunk can be both; an empty set is one chunk with no keys). The relay applies the set when
//! the last chunk arrives and answers [`Frame::Ack`] with the number of keys; a set of more than
//! [`MAX_SET_KEYS`] keys closes the connection. A non-admin sending it is refused and
//! disconnected. [`Frame::Expect`] (on an enrollment listener, see [`crate::enroll`]) is sent
//! the same way with invite hashes instead of keys.

use hmac::{KeyInit as _, Mac as _};
use sha2::{Digest as _, Sha256};

use crate::RelayError;

/// Largest datagram carried (WireGuard's 1420-byte MTU plus headers, with room to spare).
pub const MAX_DATAGRAM: usize = 2048;
/// Largest frame payload accepted (a `Send` of [`MAX_DATAGRAM`] plus its key).
pub const MAX_PAYLOAD: usize = MAX_DATAGRAM + 64;
/// Most keys (or hashes) in one [`Frame::AllowSet`] / [`Frame::Expect`] chunk (a flag byte and
/// 64 × 32 bytes stay under [`MAX_PAYLOAD`]).
pub const SET_CHUNK: usize = 64;
/// Most keys in one admin's allowed set, and most hashes in one listener's expected set.
pub const MAX_SET_KEYS: usize = 100_000;

/// A 32-byte X25519 (WireGuard) public key.
pub type Key = [u8; 32];

/// One protocol frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Relay → client, first: a nonce and the relay's static key.
    ServerHello {
        /// Fresh random nonce.
        nonce: [u8; 32],
        /// The relay's X25519 public key.
        relay_key: Key,
    },
    /// Client → relay: who it is and the proof.
    ClientAuth {
        /// The client's WireGuard public key.
        key: Key,
        /// Fresh random nonce.
        nonce: [u8; 32],
        /// See the module docs.
        proof: [u8; 32],
    },
    /// Relay → client: accepted, the relay's proof, and the budget.
    Welcome {
        /// See the module docs.
        proof: [u8; 32],
        /// Bytes per second this key may send.
        rate: u32,
        /// Bytes it may send in a burst.
        burst: u32,
    },
    /// Relay → client: not accepted (then the connection closes).
    Refused {
        /// Why, for the client's log.
        reason: String,
    },
    /// Client → relay: forward `data` to `dst`.
    Send {
        /// The destination's WireGuard key.
        dst: Key,
        /// One WireGuard datagram.
        data: Vec<u8>,
    },
    /// Relay → client: `data` from `src`.
    Recv {
        /// The sender's WireGuard key.
        src: Key,
        /// One WireGuard datagram.
        data: Vec<u8>,
    },
    /// Relay → client: the relay is shutting down; move to another path now.
    GoingAway,
    /// Either way: are you there?
    Ping,
    /// The answer to [`Frame::Ping`].
    Pong,
    /// Admin → relay: one chunk of the complete set of keys this admin allows.
    AllowSet {
        /// The first chunk of a set (starts a new one).
        first: bool,
        /// The last chunk (the set is applied).
        last: bool,
        /// At most [`SET_CHUNK`] keys.
        keys: Vec<Key>,
    },
    /// Relay → client: a set ([`Frame::AllowSet`] / [`Frame::Expect`]) was applied.
    Ack {
        /// How many distinct entries the applied set holds.
        count: u32,
    },
    /// Enrollment listener → relay: one chunk of the complete set of invite hashes
    /// ([`crate::enroll_hash`]) the hub expects targets for.
    Expect {
        /// The first chunk of a set (starts a new one).
        first: bool,
        /// The last chunk (the set is applied).
        last: bool,
        /// At most [`SET_CHUNK`] hashes.
        hashes: Vec<[u8; 32]>,
    },
    /// Relay → enrollment listener: a target arrived for an expected hash; accept `session`
    /// on a new connection (`GET /enroll-accept`).
    EnrollOpen {
        /// The pairing to name in [`Frame::Accept`].
        session: u64,
    },
    /// Hub → relay on `/enroll-accept`, after the key proof: splice me with this session.
    Accept {
        /// From [`Frame::EnrollOpen`].
        session: u64,
    },
    /// Relay → hub on `/enroll-accept`: paired; from here on the connection carries the
    /// target's raw bytes.
    Paired,
}

/// Splits a set into [`SET_CHUNK`]-sized frames built by `make(first, last, chunk)`; an empty
/// set is one frame with `first` and `last`.
pub fn chunked(set: &[[u8; 32]], make: fn(bool, bool, Vec<[u8; 32]>) -> Frame) -> Vec<Frame> {
    if set.is_empty() {
        return vec![make(true, true, Vec::new())];
    }
    let n = set.len().div_ceil(SET_CHUNK);
    set.chunks(SET_CHUNK)
        .enumerate()
        .map(|(i, c)| make(i == 0, i + 1 == n, c.to_vec()))
        .collect()
}

fn set_payload(first: bool, last: bool, keys: &[[u8; 32]]) -> Vec<u8> {
    let mut p = Vec::with_capacity(1 + 32 * keys.len());
    p.push(u8::from(first) | (u8::from(last) << 1));
    for k in keys {
        p.extend_from_slice(k);
    }
    p
}

impl Frame {
    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let (t, payload): (u8, Vec<u8>) = match self {
            Frame::ServerHello { nonce, relay_key } => (1, [&nonce[..], &relay_key[..]].concat()),
            Frame::ClientAuth { key, nonce, proof } => {
                (2, [&key[..], &nonce[..], &proof[..]].concat())
            }
            Frame::Welcome { proof, rate, burst } => (
                3,
                [
                    &proof[..],
                    &rate.to_be_bytes()[..],
                    &burst.to_be_bytes()[..],
                ]
                .concat(),
            ),
            Frame::Refused { reason } => {
                let mut r = reason.as_bytes().to_vec();
                r.truncate(512);
                (4, r)
            }
            Frame::Send { dst, data } => (5, [&dst[..], data].concat()),
            Frame::Recv { src, data } => (6, [&src[..], data].concat()),
            Frame::GoingAway => (7, Vec::new()),
            Frame::Ping => (8, Vec::new()),
            Frame::Pong => (9, Vec::new()),
            Frame::AllowSet { first, last, keys } => (10, set_payload(*first, *last, keys)),
            Frame::Ack { count } => (11, count.to_be_bytes().to_vec()),
            Frame::Expect {
                first,
                last,
                hashes,
            } => (12, set_payload(*first, *last, hashes)),
            Frame::EnrollOpen { session } => (13, session.to_be_bytes().to_vec()),
            Frame::Accept { session } => (14, session.to_be_bytes().to_vec()),
            Frame::Paired => (15, Vec::new()),
        };
        let mut out = Vec::with_capacity(3 + payload.len());
        out.push(t);
        out.extend_from_slice(&(payload.len().min(u16::MAX as usize) as u16).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }
}

fn key(b: &[u8]) -> Key {
    let mut k = [0u8; 32];
    k.copy_from_slice(&b[..32]);
    k
}

/// Turns bytes into frames; an oversized or malformed frame is an error (close the connection).
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Takes the bytes buffered past the last decoded frame (when the connection stops
    /// carrying frames, e.g. after [`Frame::Paired`]).
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// The next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, RelayError> {
        if self.buf.len() < 3 {
            return Ok(None);
        }
        let t = self.buf[0];
        let len = usize::from(u16::from_be_bytes([self.buf[1], self.buf[2]]));
        if len > MAX_PAYLOAD {
            return Err(RelayError::Protocol(format!(
                "a frame of {len} bytes; the limit is {MAX_PAYLOAD}"
            )));
        }
        if self.buf.len() < 3 + len {
            return Ok(None);
        }
        let p: Vec<u8> = self.buf.drain(..3 + len).skip(3).collect();
        let need = |n: usize| -> Result<(), RelayError> {
            if p.len() == n {
                Ok(())
            } else {
                Err(RelayError::Protocol(format!(
                    "frame type {t} with {} bytes, expected {n}",
                    p.len()
                )))
            }
        };
        let at_least = |n: usize| -> Result<(), RelayError> {
            if p.len() >= n && p.len() <= n + MAX_DATAGRAM {
                Ok(())
            } else {
                Err(RelayError::Protocol(format!(
                    "frame type {t} with {} bytes",
                    p.len()
                )))
            }
        };
        Ok(Some(match t {
            1 => {
                need(64)?;
                Frame::ServerHello {
                    nonce: key(&p[..32]),
                    relay_key: key(&p[32..]),
                }
            }
            2 => {
                need(96)?;
                Frame::ClientAuth {
                    key: key(&p[..32]),
                    nonce: key(&p[32..64]),
                    proof: key(&p[64..]),
                }
            }
            3 => {
                need(40)?;
                Frame::Welcome {
                    proof: key(&p[..32]),
                    rate: u32::from_be_bytes([p[32], p[33], p[34], p[35]]),
                    burst: u32::from_be_bytes([p[36], p[37], p[38], p[39]]),
                }
            }
            4 => Frame::Refused {
                reason: String::from_utf8_lossy(&p).into_owned(),
            },
            5 => {
                at_least(32)?;
                Frame::Send {
                    dst: key(&p[..32]),
                    data: p[32..].to_vec(),
                }
            }
            6 => {
                at_least(32)?;
                Frame::Recv {
                    src: key(&p[..32]),
                    data: p[32..].to_vec(),
                }
            }
            7 => {
                need(0)?;
                Frame::GoingAway
            }
            8 => {
                need(0)?;
                Frame::Ping
            }
            9 => {
                need(0)?;
                Frame::Pong
            }
            10 | 12 => {
                let n = p.len().saturating_sub(1);
                if p.is_empty() || !n.is_multiple_of(32) || n / 32 > SET_CHUNK || p[0] > 3 {
                    return Err(RelayError::Protocol(format!(
                        "a set chunk (frame type {t}) of {} bytes; expected a flag byte and up to {SET_CHUNK} keys",
                        p.len()
                    )));
                }
                let (first, last) = (p[0] & 1 == 1, p[0] & 2 == 2);
                let keys: Vec<Key> = p[1..].chunks(32).map(key).collect();
                if t == 10 {
                    Frame::AllowSet { first, last, keys }
                } else {
                    Frame::Expect {
                        first,
                        last,
                        hashes: keys,
                    }
                }
            }
            11 => {
                need(4)?;
                Frame::Ack {
                    count: u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
                }
            }
            13 | 14 => {
                need(8)?;
                let mut b = [0u8; 8];
                b.copy_from_slice(&p);
                let session = u64::from_be_bytes(b);
                if t == 13 {
                    Frame::EnrollOpen { session }
                } else {
                    Frame::Accept { session }
                }
            }
            15 => {
                need(0)?;
                Frame::Paired
            }
            other => {
                return Err(RelayError::Protocol(format!("unknown frame type {other}")));
            }
        }))
    }
}

/// The proof key between `secret` and `peer`.
fn proof_key(secret: &x25519_dalek::StaticSecret, peer: &Key) -> [u8; 32] {
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*peer));
    let mut h = Sha256::new();
    h.update(b"tether-relay-v1");
    h.update(shared.as_bytes());
    h.finalize().into()
}

fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut m = <hmac::Hmac<Sha256>>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// The client's proof (computed by the client with its secret and the relay's key, or by the
/// relay with its secret and the client's key: the same value).
pub fn client_proof(
    secret: &x25519_dalek::StaticSecret,
    peer: &Key,
    server_nonce: &[u8; 32],
    client_nonce: &[u8; 32],
    client_key: &Key,
) -> [u8; 32] {
    hmac(
        &proof_key(secret, peer),
        &[b"client", server_nonce, client_nonce, client_key],
    )
}

/// The relay's proof (same symmetry as [`client_proof`]).
pub fn relay_proof(
    secret: &x25519_dalek::StaticSecret,
    peer: &Key,
    server_nonce: &[u8; 32],
    client_nonce: &[u8; 32],
    client_key: &Key,
) -> [u8; 32] {
    hmac(
        &proof_key(secret, peer),
        &[b"relay", client_nonce, server_nonce, client_key],
    )
}

/// Constant-time equality of two proofs.
pub fn proofs_match(a: &[u8; 32], b: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq as _;
    a.ct_eq(b).into()
}

/// A token bucket of bytes (or of events, with size 1).
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: std::time::Instant,
}

impl Bucket {
    /// A full bucket refilling `rate` per second up to `burst`.
    pub fn new(rate: u32, burst: u32, now: std::time::Instant) -> Bucket {
        Bucket {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes `n` tokens if there are that many.
    pub fn take(&mut self, n: u32, now: std::time::Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= f64::from(n) {
            self.tokens -= f64::from(n);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn frames_round_trip_split_anywhere() {
        let frames = vec![
            Frame::ServerHello {
                nonce: [1; 32],
                relay_key: [2; 32],
            },
            Frame::ClientAuth {
                key: [3; 32],
                nonce: [4; 32],
                proof: [5; 32],
            },
            Frame::Welcome {
                proof: [6; 32],
                rate: 1_000_000,
                burst: 2_000_000,
            },
            Frame::Refused {
                reason: "key not allowed".into(),
            },
            Frame::Send {
                dst: [7; 32],
                data: vec![9; 1500],
            },
            Frame::Recv {
                src: [8; 32],
                data: vec![],
            },
            Frame::GoingAway,
            Frame::Ping,
            Frame::Pong,
            Frame::AllowSet {
                first: true,
                last: false,
                keys: vec![[1; 32]; SET_CHUNK],
            },
            Frame::AllowSet {
                first: false,
                last: true,
                keys: vec![],
            },
            Frame::Ack { count: 100_000 },
            Frame::Expect {
                first: true,
                last: true,
                hashes: vec![[3; 32], [4; 32]],
            },
            Frame::EnrollOpen { session: u64::MAX },
            Frame::Accept { session: 7 },
            Frame::Paired,
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        for split in [1, 2, 3, 7, 100, bytes.len()] {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for c in bytes.chunks(split) {
                d.push(c);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames);
        }
    }

    #[test]
    fn oversized_short_and_unknown_frames_are_errors() {
        for bad in [
            vec![5u8, 0xff, 0xff],
            vec![1, 0, 3, 0, 0, 0],
            vec![42, 0, 0],
            [vec![5u8, 0, 10], vec![0; 10]].concat(),
            // A set chunk with a partial key, one with too many keys, unknown flags.
            [vec![10u8, 0, 34], vec![0; 34]].concat(),
            [vec![10u8, 0x08, 0x21], vec![0; 1 + 32 * 65]].concat(),
            [vec![12u8, 0, 1], vec![4]].concat(),
            [vec![14u8, 0, 4], vec![0; 4]].concat(),
        ] {
            let mut d = Decoder::new();
            d.push(&bad);
            assert!(d.next_frame().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sets_are_chunked_under_the_frame_cap() {
        let keys: Vec<Key> = (0..10_000u32)
            .map(|i| {
                let mut k = [0u8; 32];
                k[..4].copy_from_slice(&i.to_be_bytes());
                k
            })
            .collect();
        let frames = chunked(&keys, |first, last, keys| Frame::AllowSet {
            first,
            last,
            keys,
        });
        assert_eq!(frames.len(), 10_000usize.div_ceil(SET_CHUNK));
        let mut back = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let bytes = f.encode();
            assert!(bytes.len() - 3 <= MAX_PAYLOAD);
            let mut d = Decoder::new();
            d.push(&bytes);
            let Some(Frame::AllowSet { first, last, keys }) = d.next_frame().unwrap() else {
                panic!("not a set chunk")
            };
            assert_eq!((first, last), (i == 0, i + 1 == frames.len()));
            back.extend(keys);
        }
        assert_eq!(back, keys);
        assert_eq!(
            chunked(&[], |first, last, keys| Frame::AllowSet {
                first,
                last,
                keys
            }),
            vec![Frame::AllowSet {
                first: true,
                last: true,
                keys: vec![]
            }]
        );
    }

    #[test]
    fn proofs_agree_only_with_the_right_keys() {
        let relay = x25519_dalek::StaticSecret::from([11u8; 32]);
        let client = x25519_dalek::StaticSecret::from([22u8; 32]);
        let other = x25519_dalek::StaticSecret::from([33u8; 32]);
        let rk = x25519_dalek::PublicKey::from(&relay).to_bytes();
        let ck = x25519_dalek::PublicKey::from(&client).to_bytes();
        let (sn, cn) = ([1u8; 32], [2u8; 32]);
        let by_client = client_proof(&client, &rk, &sn, &cn, &ck);
        let by_relay = client_proof(&relay, &ck, &sn, &cn, &ck);
        assert!(proofs_match(&by_client, &by_relay));
        // Someone claiming the client's key without its secret.
        let forged = client_proof(&other, &rk, &sn, &cn, &ck);
        assert!(!proofs_match(&forged, &by_relay));
        // The relay's proof differs from the client's (no reflection).
        assert!(!proofs_match(
            &relay_proof(&relay, &ck, &sn, &cn, &ck),
            &by_relay
        ));
    }
}
