//! The relay's side of the enrollment rendezvous (the client side is [`crate::enroll`]).
//!
//! A hub's listener (`/enroll-listen`, an admin key) announces the invite hashes it expects
//! ([`Frame::Expect`]); the set lives in memory only and goes when that listener disconnects
//! (the hub announces again on reconnecting). A target's `GET /enroll` names a hash: an
//! unknown one is answered 404 at once; a known one gets a session, the listener is told
//! [`Frame::EnrollOpen`], and the hub's `/enroll-accept` connection (same admin key) naming the
//! session is spliced with the target's: from then on the relay copies bytes both ways, at most
//! [`EnrollLimits::byte_cap`] each way, all within [`EnrollLimits::pairing_deadline`] of the
//! target's arrival, at most [`EnrollLimits::max_per_hash`] pairings per hash at once. The
//! relay keeps no token: the exchange is authenticated end to end by the token's MACs.
//!
//! [`EnrollLimits::byte_cap`]: crate::server::EnrollLimits::byte_cap
//! [`EnrollLimits::pairing_deadline`]: crate::server::EnrollLimits::pairing_deadline
//! [`EnrollLimits::max_per_hash`]: crate::server::EnrollLimits::max_per_hash

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::RelayError;
use crate::proto::{Decoder, Frame, Key};
use crate::server::{Shared, Tls, http_answer, read_frame};

/// A target waiting for its hub.
struct Pending {
    admin: Key,
    hub: oneshot::Sender<(Tls, Vec<u8>)>,
}

/// Listeners, their expected hashes, waiting targets and pairings in progress.
#[derive(Default)]
pub(crate) struct State {
    /// The enrollment listener of each admin key (the newest wins).
    listeners: Mutex<HashMap<Key, (u64, mpsc::Sender<Frame>)>>,
    /// The hashes each admin's listener expects.
    expected: Mutex<HashMap<Key, HashSet<[u8; 32]>>>,
    sessions: Mutex<HashMap<u64, Pending>>,
    /// Pairings in progress per hash.
    active: Mutex<HashMap<[u8; 32], usize>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// A listener of `admin` connected (it replaces an older one, which is told to go away).
    pub(crate) fn listen(&self, admin: Key, conn: u64, tx: mpsc::Sender<Frame>) {
        if let Some((_, old)) = lock(&self.listeners).insert(admin, (conn, tx)) {
            let _ = old.try_send(Frame::GoingAway);
        }
    }

    /// The listener `conn` of `admin` is gone: its expectations go with it.
    pub(crate) fn unlisten(&self, admin: Key, conn: u64) {
        let mut listeners = lock(&self.listeners);
        if listeners.get(&admin).is_some_and(|(c, _)| *c == conn) {
            listeners.remove(&admin);
            lock(&self.expected).remove(&admin);
        }
    }

    /// `admin`'s complete set of expected hashes.
    pub(crate) fn expect(&self, admin: Key, hashes: HashSet<[u8; 32]>) {
        lock(&self.expected).insert(admin, hashes);
    }

    /// The listener that expects `hash`, if one is connected.
    fn listener_for(&self, hash: &[u8; 32]) -> Option<(Key, mpsc::Sender<Frame>)> {
        let admin = lock(&self.expected)
            .iter()
            .find(|(_, set)| set.contains(hash))
            .map(|(admin, _)| *admin)?;
        let tx = lock(&self.listeners)
            .get(&admin)
            .map(|(_, tx)| tx.clone())?;
        Some((admin, tx))
    }
}

/// One pairing in progress for a hash; released on drop.
struct Slot<'a> {
    state: &'a State,
    hash: [u8; 32],
}

impl<'a> Slot<'a> {
    fn take(state: &'a State, hash: [u8; 32], max: usize) -> Option<Slot<'a>> {
        let mut active = lock(&state.active);
        let n = active.entry(hash).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot { state, hash })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut active = lock(&self.state.active);
        if let Some(n) = active.get_mut(&self.hash) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                active.remove(&self.hash);
            }
        }
    }
}

async fn answer(tls: &mut Tls, status: &str, body: &str) {
    let _ = tls.write_all(http_answer(status, body).as_bytes()).await;
    let _ = tls.flush().await;
    let _ = tls.shutdown().await;
}

/// A target's `GET /enroll` for `hash`: pair it with its hub, then splice.
pub(crate) async fn target(
    mut tls: Tls,
    hash: [u8; 32],
    rest: Vec<u8>,
    shared: &Shared,
    arrived: Instant,
) -> Result<(), RelayError> {
    let limits = shared.enroll.clone();
    let deadline = arrived + limits.pairing_deadline;
    let Some((admin, listener)) = shared.rdv.listener_for(&hash) else {
        shared.stats.enroll_unknown.fetch_add(1, Ordering::Relaxed);
        answer(
            &mut tls,
            "404 Not Found",
            "no hub listens for this invite through this relay\n",
        )
        .await;
        return Err(RelayError::Refused("unknown enrollment hash".into()));
    };
    let Some(_slot) = Slot::take(&shared.rdv, hash, limits.max_per_hash) else {
        answer(
            &mut tls,
            "429 Too Many Requests",
            "too many enrollments for this invite at once; try again in a few seconds\n",
        )
        .await;
        return Err(RelayError::Refused(
            "too many pairings for one invite".into(),
        ));
    };
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).map_err(|e| RelayError::Protocol(e.to_string()))?;
    let session = u64::from_be_bytes(id);
    let (hub_tx, hub_rx) = oneshot::channel();
    lock(&shared.rdv.sessions).insert(session, Pending { admin, hub: hub_tx });
    let told = listener.try_send(Frame::EnrollOpen { session }).is_ok();
    let joined = if told {
        tokio::time::timeout_at(deadline, hub_rx).await.ok()
    } else {
        None
    };
    let Some(Ok((hub, hub_rest))) = joined else {
        lock(&shared.rdv.sessions).remove(&session);
        answer(
            &mut tls,
            "504 Gateway Timeout",
            "the hub did not take the enrollment in time\n",
        )
        .await;
        return Err(RelayError::Timeout("pairing with the hub"));
    };
    shared.stats.enroll_paired.fetch_add(1, Ordering::Relaxed);
    tls.write_all(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: {}\r\nconnection: upgrade\r\n\r\n",
            crate::enroll::UPGRADE
        )
        .as_bytes(),
    )
    .await?;
    tls.flush().await?;
    splice(tls, rest, hub, hub_rest, limits.byte_cap, deadline).await
}

/// Copies `from` (after `early`, bytes already read) to `to`, at most `cap` bytes, then
/// closes `to`'s sending side.
async fn pipe(
    early: Vec<u8>,
    from: &mut tokio::io::ReadHalf<Tls>,
    to: &mut tokio::io::WriteHalf<Tls>,
    cap: usize,
) -> std::io::Result<()> {
    let early = &early[..early.len().min(cap)];
    to.write_all(early).await?;
    let left = u64::try_from(cap - early.len()).unwrap_or(u64::MAX);
    tokio::io::copy(&mut from.take(left), to).await?;
    to.shutdown().await
}

async fn splice(
    target: Tls,
    target_early: Vec<u8>,
    hub: Tls,
    hub_early: Vec<u8>,
    cap: usize,
    deadline: Instant,
) -> Result<(), RelayError> {
    let (mut tr, mut tw) = tokio::io::split(target);
    let (mut hr, mut hw) = tokio::io::split(hub);
    let both = async {
        tokio::join!(
            pipe(target_early, &mut tr, &mut hw, cap),
            pipe(hub_early, &mut hr, &mut tw, cap),
        )
    };
    let (up, down) = tokio::time::timeout_at(deadline, both)
        .await
        .map_err(|_| RelayError::Timeout("the relayed enrollment exchange"))?;
    // The target dropping its side once it has the answer is normal: the hub's answer counts.
    down?;
    if let Err(e) = up {
        tracing::debug!("enrollment splice, target to hub: {e}");
    }
    Ok(())
}

/// A hub's `/enroll-accept`, authenticated as `key`: reads [`Frame::Accept`] and hands this
/// connection to the waiting target.
pub(crate) async fn accept(
    mut tls: Tls,
    mut decoder: Decoder,
    key: Key,
    shared: &Shared,
    deadline: Instant,
) -> Result<(), RelayError> {
    let frame = tokio::time::timeout_at(deadline, read_frame(&mut tls, &mut decoder))
        .await
        .map_err(|_| RelayError::Timeout("the enrollment accept"))??;
    let Frame::Accept { session } = frame else {
        return Err(RelayError::Protocol(format!(
            "expected Accept, got {frame:?}"
        )));
    };
    let pending = {
        let mut sessions = lock(&shared.rdv.sessions);
        match sessions.get(&session) {
            Some(p) if p.admin == key => sessions.remove(&session),
            _ => None,
        }
    };
    let Some(pending) = pending else {
        let why = "no such enrollment session (it timed out, was taken, or is another hub's)";
        tls.write_all(
            &Frame::Refused {
                reason: why.to_owned(),
            }
            .encode(),
        )
        .await?;
        tls.flush().await?;
        return Err(RelayError::Refused(why.into()));
    };
    tls.write_all(&Frame::Paired.encode()).await?;
    tls.flush().await?;
    let rest = decoder.take_rest();
    if pending.hub.send((tls, rest)).is_err() {
        tracing::debug!("the target left before its hub accepted");
    }
    Ok(())
}
