//! Enrollment through the relay, for a hub without a reachable endpoint: the relay pairs the
//! target's connection with the hub's by a hash of the invite nonce and splices them; it stores
//! no token and cannot read or forge the exchange (authenticated end to end by the token's
//! MACs; its frames are plaintext inside the two TLS connections, which the relay terminates).
//!
//! * Hub: one [`Listener`] per relay (`GET /enroll-listen`, proving one of the relay's admin
//!   keys, separate from the tunnel's [`crate::RelayClient`]) announces the invites it expects
//!   ([`Listener::expect`], a complete replacement, kept by the relay in memory while this
//!   listener is connected). For each target that arrives, [`Listener::next_session`] yields a
//!   session and the hub calls [`accept`] (`GET /enroll-accept`, same key) to get the target's
//!   byte stream.
//! * Target: [`connect`] (`GET /enroll` with the hash in the `tether-enroll` header, no key
//!   proof: it has no allowed key yet) returns the hub's byte stream once the hub accepted.
//!   A hash no hub announced is answered 404 at once ([`RelayError::Refused`]).
//!
//! Limits on the relay ([`crate::server::EnrollLimits`]): the per-address connection rate limit,
//! a few pairings per hash at once, a pairing deadline from the target's arrival (10 s), and a
//! byte cap each way (64 KiB).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use crate::RelayError;
use crate::RelayTarget;
use crate::client::{Conn, Event, Tls, check_set_size, handshake, open, read_frame, read_upgrade};
use crate::proto::{Frame, chunked};

/// The upgrade token of a target's `GET /enroll`.
pub const UPGRADE: &str = "tether-enroll/1";
/// The request header naming the invite hash (64 hex digits).
pub const HASH_HEADER: &str = "tether-enroll";
/// Domain separation of [`enroll_hash`].
const HASH_LABEL: &[u8] = b"tether-relay-enroll-v1";

/// The hash the relay pairs on, from the invite nonce's raw bytes:
/// `SHA-256("tether-relay-enroll-v1" || SHA-256(nonce))`. It is built on SHA-256(nonce) because
/// that is all the hub stores of an invite (`InviteRecord::nonce_hash`, hex); the hub computes
/// the same value with [`enroll_hash_from_nonce_sha256`]. It differs from the stored hash, so
/// the relay learns nothing the hub's invite store holds.
pub fn enroll_hash(nonce: &[u8]) -> [u8; 32] {
    enroll_hash_from_nonce_sha256(&Sha256::digest(nonce).into())
}

/// [`enroll_hash`] from SHA-256 of the nonce (what the hub keeps of each pending invite).
pub fn enroll_hash_from_nonce_sha256(nonce_sha256: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(HASH_LABEL);
    h.update(nonce_sha256);
    h.finalize().into()
}

/// The hub's enrollment listener on one relay.
#[derive(Debug)]
pub struct Listener {
    conn: Conn,
}

impl Listener {
    /// Connects (`GET /enroll-listen`) and proves `secret`'s key, which must be one of the
    /// relay's admin keys; `timeout` bounds all of it.
    pub async fn connect(
        target: &RelayTarget,
        secret: &x25519_dalek::StaticSecret,
        timeout: Duration,
    ) -> Result<Listener, RelayError> {
        tokio::time::timeout(timeout, async {
            let (tls, decoder, _) = handshake(target, secret, "/enroll-listen").await?;
            Ok(Listener {
                conn: Conn::spawn(tls, decoder),
            })
        })
        .await
        .map_err(|_| RelayError::Timeout("connecting the enrollment listener"))?
    }

    /// Replaces the set of invite hashes ([`enroll_hash`]) this hub expects targets for (at
    /// most [`crate::proto::MAX_SET_KEYS`]); returns once the relay applied it.
    pub async fn expect(&self, hashes: Vec<[u8; 32]>) -> Result<(), RelayError> {
        check_set_size(hashes.len())?;
        let frames = chunked(&hashes, |first, last, hashes| Frame::Expect {
            first,
            last,
            hashes,
        });
        self.conn.send_set(frames).await.map(|_| ())
    }

    /// The next target waiting for this hub: pass the session to [`accept`]. Errors once the
    /// relay connection is gone (or the relay goes away): connect again and re-announce.
    pub async fn next_session(&mut self) -> Result<u64, RelayError> {
        loop {
            match self.conn.incoming.recv().await {
                Some(Event::EnrollOpen { session }) => return Ok(session),
                Some(Event::Datagram { .. }) => {}
                Some(Event::GoingAway) => {
                    return Err(RelayError::Refused(
                        "the relay is going away (or another listener of this hub took over)"
                            .into(),
                    ));
                }
                None => {
                    return Err(RelayError::Protocol(
                        "the enrollment listener's relay connection closed".into(),
                    ));
                }
            }
        }
    }
}

/// The hub's side of one session: connects (`GET /enroll-accept`), proves `secret`'s key (the
/// listener's), names `session`, and returns the target's byte stream (serve one enrollment
/// exchange on it).
pub async fn accept(
    target: &RelayTarget,
    secret: &x25519_dalek::StaticSecret,
    session: u64,
    timeout: Duration,
) -> Result<EnrollStream, RelayError> {
    tokio::time::timeout(timeout, async {
        let (mut tls, mut decoder, _) = handshake(target, secret, "/enroll-accept").await?;
        tls.write_all(&Frame::Accept { session }.encode()).await?;
        tls.flush().await?;
        match read_frame(&mut tls, &mut decoder).await? {
            Frame::Paired => Ok(EnrollStream::new(tls, decoder.take_rest())),
            Frame::Refused { reason } => Err(RelayError::Refused(reason)),
            other => Err(RelayError::Protocol(format!(
                "expected Paired, got {other:?}"
            ))),
        }
    })
    .await
    .map_err(|_| RelayError::Timeout("accepting the enrollment"))?
}

/// The target's side: connects (`GET /enroll`, no key proof) for the invite with this hash and
/// returns the hub's byte stream once the hub accepted (run the enrollment exchange on it).
/// `timeout` bounds the wait (the relay gives the hub 10 s).
pub async fn connect(
    target: &RelayTarget,
    nonce_hash: [u8; 32],
    timeout: Duration,
) -> Result<EnrollStream, RelayError> {
    tokio::time::timeout(timeout, async {
        let mut tls = open(
            target,
            &format!(
                "GET /enroll HTTP/1.1\r\nupgrade: {UPGRADE}\r\nconnection: upgrade\r\n{HASH_HEADER}: {}\r\n",
                hex::encode(nonce_hash)
            ),
        )
        .await?;
        let rest = read_upgrade(&mut tls).await?;
        Ok(EnrollStream::new(tls, rest))
    })
    .await
    .map_err(|_| RelayError::Timeout("enrolling through the relay"))?
}

/// A spliced enrollment stream through the relay (TLS to the relay; the peer's bytes inside).
pub struct EnrollStream {
    tls: Tls,
    /// Bytes read past the handshake, returned first.
    early: Vec<u8>,
    pos: usize,
}

impl std::fmt::Debug for EnrollStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollStream")
            .field("early", &(self.early.len() - self.pos))
            .finish_non_exhaustive()
    }
}

impl EnrollStream {
    fn new(tls: Tls, early: Vec<u8>) -> EnrollStream {
        EnrollStream { tls, early, pos: 0 }
    }
}

impl AsyncRead for EnrollStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.early.len() {
            let n = buf.remaining().min(this.early.len() - this.pos);
            buf.put_slice(&this.early[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for EnrollStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_and_the_target_compute_the_same_hash() {
        let nonce = [42u8; 32];
        let stored: [u8; 32] = Sha256::digest(nonce).into();
        assert_eq!(enroll_hash(&nonce), enroll_hash_from_nonce_sha256(&stored));
        assert_ne!(enroll_hash(&nonce), stored);
        assert_ne!(enroll_hash(&nonce), enroll_hash(&[43u8; 32]));
    }
}
