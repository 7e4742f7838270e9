//! The hub's SSH pool: one multiplexed russh client connection per target, opened over a tunnel
//! stream on first use and reused by every later request.
//!
//! * The target's host key must equal the key pinned at enrollment ([`Target::host_key`]); any
//!   other key fails the handshake ([`SshError::HostKeyMismatch`]) — there is no
//!   trust-on-first-use path.
//! * Each connection carries at most [`PoolConfig::max_channels`] commands at once; more wait.
//! * Keepalives every [`PoolConfig::keepalive`]; a connection idle for [`PoolConfig::idle`] with
//!   no command running is closed by [`Pool::reap`] (the daemon calls it periodically). The
//!   more of [`PoolConfig::max_connections`] is in use, the shorter that idle time gets
//!   ([`effective_idle`]).
//! * At most [`PoolConfig::max_connections`] connections are open at once (pooled ones and
//!   those of interactive sessions and relayed subsystems). A request that needs a new one
//!   when the pool is full closes the least recently used idle pooled connection, or waits
//!   until one is idle or closed; that wait does not count against its connect timeout.
//! * Connection failures feed a per-target [`Breaker`]; while it is open, requests fail at once
//!   with [`SshError::CircuitOpen`], and [`PoolEvents::breaker_opened`] is told once per opening.
//! * [`Pool::close_host`] (revoke, `hosts rm`) disconnects the target and fails its running
//!   commands; the target kills them when its connection ends. [`Pool::shutdown`] closes every
//!   connection exactly once.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use russh::client::{self, Handle};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect, Sig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

pub use tether_model::session::{PtyRequest, SessionInput, SessionSpec};

use crate::SshError;
use crate::breaker::{Breaker, BreakerConfig};

/// A byte stream to a target (a tunnel stream in the daemon, anything in tests).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A boxed future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Opens streams to targets' SSH servers. `tetherd` implements it with the tunnel.
pub trait Dialer: Send + Sync + 'static {
    /// A stream to `ip`'s SSH port.
    fn dial(&self, ip: Ipv4Addr) -> BoxFuture<'_, io::Result<Box<dyn Stream>>>;
}

/// What the pool tells its owner about.
pub trait PoolEvents: Send + Sync + 'static {
    /// `host`'s breaker just opened after `failures` consecutive failures (the last one `error`).
    fn breaker_opened(&self, host: &str, failures: u32, error: &SshError);
    /// `host` presented a host key other than the pinned one.
    fn host_key_mismatch(&self, host: &str, error: &SshError);
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Close a connection idle this long (default 5 min).
    pub idle: Duration,
    /// Commands at once per connection (default 32).
    pub max_channels: usize,
    /// SSH keepalive interval (default 15 s; 3 unanswered close the connection).
    pub keepalive: Duration,
    /// The per-target circuit breaker.
    pub breaker: BreakerConfig,
    /// Connections being opened (dial + SSH handshake) at once across all targets (default
    /// 64). A fan-out to thousands of new targets otherwise starts every key exchange at once,
    /// none finishes within its connect timeout, and all fail together; waiting for a slot does
    /// not count against a target's connect timeout (its command's total timeout still applies).
    pub max_handshakes: usize,
    /// Connections open at once across all targets (default [`DEFAULT_MAX_CONNECTIONS`]; the
    /// daemon derives its default from the machine's memory with [`max_connections_for_memory`]).
    /// When a new connection is needed and the pool is full, the least recently used idle
    /// connection is closed; if none is idle, the request waits for one.
    pub max_connections: usize,
}

/// Default [`PoolConfig::max_handshakes`].
pub const DEFAULT_MAX_HANDSHAKES: usize = 64;

/// Default [`PoolConfig::max_connections`] when the machine's memory is not known.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Hub memory one open pooled connection is budgeted at: the fleet simulator measured
/// ~118–180 KiB of hub RSS per open connection (BENCHMARKS.md, fleet section).
pub const BYTES_PER_CONNECTION: u64 = 192 * 1024;

/// The default connection cap for a machine with `total_memory` bytes: one eighth of it at
/// [`BYTES_PER_CONNECTION`] each, between 256 and 65,536 (24 GiB: 16,384 connections, ~3 GiB;
/// 4 GiB: 2,730).
pub fn max_connections_for_memory(total_memory: u64) -> usize {
    let n = total_memory / 8 / BYTES_PER_CONNECTION;
    usize::try_from(n.clamp(256, 65_536)).unwrap_or(DEFAULT_MAX_CONNECTIONS)
}

/// The idle time after which [`Pool::reap`] closes a connection, given how full the pool is:
/// the configured `idle` while at most half of `max` connections are open, then shorter in
/// proportion to the room left, down to 1 s (or `idle`, if shorter) when the pool is full.
pub fn effective_idle(idle: Duration, open: usize, max: usize) -> Duration {
    let max = max.max(1);
    let floor = idle.min(Duration::from_secs(1));
    if open.saturating_mul(2) <= max {
        return idle;
    }
    let left = max.saturating_sub(open);
    // left / (max / 2) of `idle`: 1 at half full, 0 when full.
    let scaled = idle.mul_f64((left as f64 * 2.0 / max as f64).clamp(0.0, 1.0));
    scaled.max(floor)
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle: Duration::from_secs(300),
            max_channels: 32,
            keepalive: Duration::from_secs(15),
            breaker: BreakerConfig::default(),
        }
    }
}

/// A target as the pool needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its inventory name.
    pub name: String,
    /// Its overlay address.
    pub ip: Ipv4Addr,
    /// Its SSH host key pinned at enrollment (OpenSSH line).
    pub host_key: String,
    /// The account to log in as: `None` for Tether's own SSH server (which runs commands as its
    /// `ssh.run_as` whatever the name), the target's `ssh.run_as` for a target in forward mode.
    pub user: Option<String>,
}

/// One command to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The shell command.
    pub line: String,
    /// Environment variables to ask for (the target keeps only its allow-list).
    pub env: Vec<(String, String)>,
    /// Limit for opening the connection if there is none (stream + handshake + auth).
    pub connect_timeout: Duration,
}

/// Output of a running command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Bytes on stdout.
    Stdout(Bytes),
    /// Bytes on stderr.
    Stderr(Bytes),
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(u32),
    /// A signal ended it.
    Signal(String),
}

/// The hub's pool.
pub struct Pool {
    inner: Arc<Inner>,
}

/// What the pool holds now and has done (for metrics and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Connections open now (pooled, sessions and subsystems), never more than `max`.
    pub open: usize,
    /// [`PoolConfig::max_connections`].
    pub max: usize,
    /// Connections opened so far.
    pub opened_total: u64,
    /// Idle connections closed to make room for another target's.
    pub evicted_total: u64,
    /// Idle connections closed by [`Pool::reap`].
    pub expired_total: u64,
    /// The most connections open at once so far.
    pub peak: usize,
}

/// The pool-wide count of open connections and the idle ones in least-recently-used order.
struct Lru {
    /// One permit per open connection ([`PoolConfig::max_connections`]).
    open: Arc<Semaphore>,
    /// Idle pooled connections by (idle since, id): the first is the least recently used.
    idle: Mutex<BTreeMap<(Instant, u64), Weak<Conn>>>,
    /// Told when a connection becomes idle (a waiting request may close it).
    became_idle: Notify,
    next_id: AtomicU64,
    opened: AtomicU64,
    evicted: AtomicU64,
    expired: AtomicU64,
    peak: AtomicUsize,
}

struct Inner {
    dialer: Arc<dyn Dialer>,
    events: Arc<dyn PoolEvents>,
    key: Arc<PrivateKey>,
    config: PoolConfig,
    client: Arc<client::Config>,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    shutdown: CancellationToken,
    /// Permits to open a connection ([`PoolConfig::max_handshakes`]).
    handshakes: tokio::sync::Semaphore,
    lru: Arc<Lru>,
}

/// One target's connection and breaker.
struct Slot {
    conn: Option<Arc<Conn>>,
    breaker: Breaker,
    /// The connections of its interactive sessions and relayed subsystems (one each, see
    /// [`Pool::session`], [`Pool::dedicated_subsystem`]), so a revoke or shutdown closes them
    /// too.
    sessions: Vec<std::sync::Weak<Conn>>,
}

/// One open connection.
struct Conn {
    /// Its target's name (to find its slot when it is evicted).
    host: String,
    id: u64,
    /// Itself, for the idle list.
    me: Weak<Conn>,
    lru: Arc<Lru>,
    /// Its place among the open connections; released when it is closed.
    open_permit: Mutex<Option<OwnedSemaphorePermit>>,
    /// Its key in [`Lru::idle`] while it is listed there.
    idle_key: Mutex<Option<(Instant, u64)>>,
    handle: Handle<Client>,
    /// The pinned key it was opened with (a reinvited host gets a new one).
    host_key: String,
    channels: Arc<Semaphore>,
    /// Commands running on it.
    active: Mutex<usize>,
    last_used: Mutex<Instant>,
    /// Cancelled when the hub closes it: its running commands fail with `why`.
    closed: CancellationToken,
    why: Mutex<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Conn {
    /// A command (or subsystem) starts on it: one more running, no longer idle.
    fn begin(&self) {
        let mut idle = lock(&self.lru.idle);
        *lock(&self.active) += 1;
        if let Some(k) = lock(&self.idle_key).take() {
            idle.remove(&k);
        }
    }

    /// A command on it is over (or never started): one fewer running, idle time restarts,
    /// its channel slot is free again. With none running it joins the idle list.
    fn finished(&self, permit: OwnedSemaphorePermit) {
        drop(permit);
        self.end();
    }

    /// Like [`Conn::finished`] for a use that never took a channel slot.
    fn end(&self) {
        let now = Instant::now();
        let became_idle = {
            let mut idle = lock(&self.lru.idle);
            let mut active = lock(&self.active);
            *active = active.saturating_sub(1);
            *lock(&self.last_used) = now;
            let mut key = lock(&self.idle_key);
            if let Some(k) = key.take() {
                idle.remove(&k);
            }
            if *active == 0 && self.alive() {
                let k = (now, self.id);
                idle.insert(k, self.me.clone());
                *key = Some(k);
                true
            } else {
                false
            }
        };
        if became_idle {
            self.lru.became_idle.notify_waiters();
        }
    }

    /// Off the idle list, and its place among the open connections given back (it is closed
    /// or being dropped from its slot).
    fn retire(&self) {
        {
            let mut idle = lock(&self.lru.idle);
            if let Some(k) = lock(&self.idle_key).take() {
                idle.remove(&k);
            }
        }
        lock(&self.open_permit).take();
    }

    fn alive(&self) -> bool {
        !self.handle.is_closed() && !self.closed.is_cancelled()
    }

    async fn close(&self, why: &str) {
        *self
            .why
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = why.to_owned();
        self.closed.cancel();
        // Send the goodbye and wait (briefly) until the session has written it and ended, so
        // it is on its way before the caller removes the tunnel peer.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            let _ = self
                .handle
                .disconnect(Disconnect::ByApplication, why, "en")
                .await;
            while !self.handle.is_closed() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        self.retire();
    }
}

/// The client handler: checks the host key against the pinned one.
struct Client {
    pinned: PublicKey,
    mismatch: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                if crate::keys::same_key(key, &self.pinned) {
                    Ok(true)
                } else {
                    *self
                        .mismatch
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(crate::keys::fingerprint(key));
                    Ok(false)
                }
            }
            PublicKeyOrCertificate::Certificate(_) => Ok(false),
        }
    }
}

impl Pool {
    /// A pool dialing with `dialer`, authenticating with the hub's client key.
    pub fn new(
        dialer: Arc<dyn Dialer>,
        events: Arc<dyn PoolEvents>,
        key: PrivateKey,
        config: PoolConfig,
    ) -> Self {
        let client = client::Config {
            preferred: crate::algorithms::preferred(false),
            keepalive_interval: Some(config.keepalive),
            keepalive_max: 3,
            inactivity_timeout: None,
            nodelay: true,
            ..Default::default()
        };
        let lru = Arc::new(Lru {
            open: Arc::new(Semaphore::new(config.max_connections.max(1))),
            idle: Mutex::new(BTreeMap::new()),
            became_idle: Notify::new(),
            next_id: AtomicU64::new(1),
            opened: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            peak: AtomicUsize::new(0),
        });
        Pool {
            inner: Arc::new(Inner {
                lru,
                handshakes: tokio::sync::Semaphore::new(config.max_handshakes.max(1)),
                dialer,
                events,
                key: Arc::new(key),
                config,
                client: Arc::new(client),
                slots: Mutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    fn slot(&self, name: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(slots.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(tokio::sync::Mutex::new(Slot {
                conn: None,
                breaker: Breaker::new(self.inner.config.breaker),
                sessions: Vec::new(),
            }))
        }))
    }

    /// Number of open connections.
    pub fn open_connections(&self) -> usize {
        let slots: Vec<_> = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        slots
            .iter()
            .filter(|s| {
                s.try_lock()
                    .map(|s| s.conn.as_ref().is_some_and(|c| c.alive()))
                    .unwrap_or(true)
            })
            .count()
    }

    /// What the pool holds now and has done.
    pub fn stats(&self) -> PoolStats {
        let lru = &self.inner.lru;
        let max = self.inner.config.max_connections.max(1);
        PoolStats {
            open: max.saturating_sub(lru.open.available_permits()),
            max,
            opened_total: lru.opened.load(Ordering::Relaxed),
            evicted_total: lru.evicted.load(Ordering::Relaxed),
            expired_total: lru.expired.load(Ordering::Relaxed),
            peak: lru.peak.load(Ordering::Relaxed),
        }
    }

    /// A place among the open connections for a new one to `host`: a free one, or the least
    /// recently used idle connection's (closed here), or the first that frees up.
    async fn open_permit(&self, host: &str) -> Result<OwnedSemaphorePermit, SshError> {
        let permit = self.wait_open_permit(host).await?;
        let lru = &self.inner.lru;
        let max = self.inner.config.max_connections.max(1);
        lru.peak.fetch_max(
            max.saturating_sub(lru.open.available_permits()),
            Ordering::Relaxed,
        );
        Ok(permit)
    }

    async fn wait_open_permit(&self, host: &str) -> Result<OwnedSemaphorePermit, SshError> {
        let lru = Arc::clone(&self.inner.lru);
        loop {
            // Listen before looking, so that a connection turning idle meanwhile is not missed.
            let idle = lru.became_idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if let Ok(p) = Arc::clone(&lru.open).try_acquire_owned() {
                return Ok(p);
            }
            if self.evict_one(host).await {
                continue;
            }
            tokio::select! {
                p = Arc::clone(&lru.open).acquire_owned() => {
                    return p.map_err(|_| SshError::ShutDown);
                }
                () = &mut idle => {}
                // A connection that died on its own is noticed here at the latest.
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                () = self.inner.shutdown.cancelled() => return Err(SshError::ShutDown),
            }
        }
    }

    /// Closes the least recently used idle pooled connection (not `host`'s). False if there
    /// was none to close.
    async fn evict_one(&self, host: &str) -> bool {
        let lru = &self.inner.lru;
        // Idle connections whose target is being served right now: listed again afterwards.
        let mut busy = Vec::new();
        let mut victim = None;
        loop {
            let Some((key, weak)) = lock(&lru.idle).pop_first() else {
                break;
            };
            let Some(conn) = weak.upgrade() else {
                continue;
            };
            {
                let mut k = lock(&conn.idle_key);
                if *k == Some(key) {
                    *k = None;
                }
            }
            let slot = lock(&self.inner.slots).get(&conn.host).cloned();
            let Some(slot) = slot else {
                // Its host is gone (revoked, removed): nothing else will close it.
                conn.retire();
                continue;
            };
            let taken = conn.host != host
                && match slot.try_lock() {
                    Ok(mut slot) => {
                        let ours = slot.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn));
                        let idle = *lock(&conn.active) == 0;
                        if ours && idle {
                            slot.conn = None;
                        }
                        ours && idle
                    }
                    Err(_) => false,
                };
            if taken {
                victim = Some(conn);
                break;
            }
            busy.push((key, weak));
        }
        if !busy.is_empty() {
            let mut idle = lock(&lru.idle);
            for (key, weak) in busy {
                if let Some(conn) = weak.upgrade() {
                    let mut k = lock(&conn.idle_key);
                    if k.is_none() && conn.alive() && *lock(&conn.active) == 0 {
                        idle.insert(key, weak);
                        *k = Some(key);
                    }
                }
            }
        }
        let Some(conn) = victim else {
            return false;
        };
        if conn.alive() {
            lru.evicted.fetch_add(1, Ordering::Relaxed);
            conn.close("closed to make room for another target's connection (ssh.max_connections)")
                .await;
        } else {
            conn.retire();
        }
        true
    }

    /// The live connection to `target`, opening one if needed (under the breaker), counted as
    /// busy ([`Conn::begin`]) until the caller's [`Conn::finished`] / [`Conn::end`].
    async fn connection(&self, target: &Target, timeout: Duration) -> Result<Arc<Conn>, SshError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(SshError::ShutDown);
        }
        let slot = self.slot(&target.name);
        let mut slot = slot.lock().await;
        if let Some(conn) = &slot.conn {
            if conn.alive() && conn.host_key == target.host_key {
                // Busy from here on, under the slot's lock: an eviction (which takes the same
                // lock) sees it running and leaves it alone.
                conn.begin();
                return Ok(Arc::clone(conn));
            }
            if conn.alive() {
                conn.close("its pinned host key changed").await;
            }
            conn.retire();
            slot.conn = None;
        }
        let now = Instant::now();
        if let Err(r) = slot.breaker.attempt(now) {
            return Err(SshError::CircuitOpen {
                host: target.name.clone(),
                retry_in_secs: r.retry_in.as_secs().max(1),
                failures: r.failures,
            });
        }
        let opened = self.open_bounded(target, timeout).await?;
        match opened {
            Ok(conn) => {
                slot.breaker.success();
                conn.begin();
                slot.conn = Some(Arc::clone(&conn));
                Ok(conn)
            }
            Err(e) => {
                if matches!(e, SshError::HostKeyMismatch { .. }) {
                    self.inner.events.host_key_mismatch(&target.name, &e);
                }
                if !matches!(e, SshError::ShutDown) && slot.breaker.failure(Instant::now()) {
                    self.inner
                        .events
                        .breaker_opened(&target.name, slot.breaker.failures(), &e);
                }
                Err(e)
            }
        }
    }

    /// Opens a connection to `target`; it holds `open_permit` until it is closed.
    async fn open(
        &self,
        target: &Target,
        open_permit: OwnedSemaphorePermit,
    ) -> Result<Arc<Conn>, SshError> {
        let pinned = crate::keys::parse_public(
            &target.host_key,
            &format!("pinned SSH host key of {}", target.name),
        )?;
        let stream = self
            .inner
            .dialer
            .dial(target.ip)
            .await
            .map_err(|e| SshError::Connect {
                host: target.name.clone(),
                reason: e.to_string(),
            })?;
        let mismatch = Arc::new(Mutex::new(None));
        let handler = Client {
            pinned: pinned.clone(),
            mismatch: Arc::clone(&mismatch),
        };
        let mut handle =
            match client::connect_stream(Arc::clone(&self.inner.client), stream, handler).await {
                Ok(h) => h,
                Err(e) => {
                    let presented = mismatch
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take();
                    return Err(match presented {
                        Some(presented) => SshError::HostKeyMismatch {
                            host: target.name.clone(),
                            presented,
                            pinned: crate::keys::fingerprint(&pinned),
                        },
                        None => SshError::Protocol {
                            host: target.name.clone(),
                            reason: format!("handshake failed: {e}"),
                        },
                    });
                }
            };
        let auth = handle
            .authenticate_publickey(
                target.user.as_deref().unwrap_or(crate::HUB_USER),
                PrivateKeyWithHashAlg::new(Arc::clone(&self.inner.key), None),
            )
            .await
            .map_err(|e| SshError::Protocol {
                host: target.name.clone(),
                reason: format!("authentication failed: {e}"),
            })?;
        if !auth.success() {
            return Err(SshError::AuthRejected {
                host: target.name.clone(),
            });
        }
        let lru = Arc::clone(&self.inner.lru);
        lru.opened.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new_cyclic(|me| Conn {
            host: target.name.clone(),
            id: lru.next_id.fetch_add(1, Ordering::Relaxed),
            me: me.clone(),
            lru: Arc::clone(&lru),
            open_permit: Mutex::new(Some(open_permit)),
            idle_key: Mutex::new(None),
            handle,
            host_key: target.host_key.clone(),
            channels: Arc::new(Semaphore::new(self.inner.config.max_channels)),
            active: Mutex::new(0),
            last_used: Mutex::new(Instant::now()),
            closed: CancellationToken::new(),
            why: Mutex::new(String::new()),
        }))
    }

    /// Opens a connection to `target` within the pool's bounds: first room among the open
    /// connections, then a handshake slot; `timeout` bounds this target's own handshake, not
    /// the queue of others' in front of it. `Err` only when the pool shut down while waiting;
    /// the handshake's own outcome is the inner result.
    async fn open_bounded(
        &self,
        target: &Target,
        timeout: Duration,
    ) -> Result<Result<Arc<Conn>, SshError>, SshError> {
        let open_permit = self.open_permit(&target.name).await?;
        let permit = tokio::select! {
            p = self.inner.handshakes.acquire() => p.map_err(|_| SshError::ShutDown)?,
            () = self.inner.shutdown.cancelled() => return Err(SshError::ShutDown),
        };
        let opened = tokio::select! {
            r = tokio::time::timeout(timeout, self.open(target, open_permit)) => match r {
                Ok(r) => r,
                Err(_) => Err(SshError::ConnectTimeout { host: target.name.clone(), secs: timeout.as_secs_f64() }),
            },
            () = self.inner.shutdown.cancelled() => Err(SshError::ShutDown),
        };
        drop(permit);
        Ok(opened)
    }

    /// A connection of its own to `target` for one interactive session or relayed subsystem, registered with the
    /// target's slot so that [`Pool::close_host`] and [`Pool::shutdown`] close it too.
    ///
    /// **Why not the pooled connection:** russh hands a channel's data to its reader through a
    /// bounded queue and waits when that queue is full — inside the connection's one reader
    /// loop. A client that stops reading its session would therefore stall every other channel
    /// of a shared connection (the same target's `exec`s). On a connection of its own, that wait
    /// is the backpressure we want: the hub stops reading the tunnel stream, the target's SSH
    /// server stops taking data while its window is used up, and the program on the pty
    /// blocks on write. Nothing in between grows without bound.
    async fn dedicated(&self, target: &Target, timeout: Duration) -> Result<Arc<Conn>, SshError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(SshError::ShutDown);
        }
        let opened = self.open_bounded(target, timeout).await?;
        let conn = match opened {
            Ok(c) => c,
            Err(e) => {
                if matches!(e, SshError::HostKeyMismatch { .. }) {
                    self.inner.events.host_key_mismatch(&target.name, &e);
                }
                return Err(e);
            }
        };
        let slot = self.slot(&target.name);
        let mut slot = slot.lock().await;
        slot.sessions.retain(|w| w.strong_count() > 0);
        slot.sessions.push(Arc::downgrade(&conn));
        Ok(conn)
    }

    /// Runs `command` on `target`, sending its output to `out` as it arrives. Cancelling
    /// `cancel` (or dropping `out`'s receiver) signals the remote command (`TERM`) and closes its
    /// channel; the target then kills its process group.
    pub async fn exec(
        &self,
        target: &Target,
        command: &Command,
        out: mpsc::Sender<Output>,
        cancel: CancellationToken,
    ) -> Result<Exit, SshError> {
        self.exec_when(target, command, std::future::ready(true), out, cancel)
            .await
    }

    /// Like [`Pool::exec`], but the command is sent only once `go` resolves to `true`. Meanwhile
    /// the pooled connection is taken (or opened) and the session channel opened, so that work
    /// overlaps whatever `go` waits for (the hub's durable `exec.requested` record). Nothing of
    /// the command (no environment, no `exec` request) reaches the target before `go` says yes;
    /// when it says no, the channel is closed unused and the result is [`SshError::Cancelled`].
    pub async fn exec_when(
        &self,
        target: &Target,
        command: &Command,
        go: impl Future<Output = bool> + Send,
        out: mpsc::Sender<Output>,
        cancel: CancellationToken,
    ) -> Result<Exit, SshError> {
        let (go, opened) = tokio::join!(go, self.open_channel(target, command, &cancel));
        let (conn, permit, channel) = match opened {
            Ok(o) => o,
            // Refused: the reason the command never ran is the refusal, not the connection.
            Err(_) if !go => return Err(SshError::Cancelled),
            Err(e) => return Err(e),
        };
        if !go {
            let _ = channel.close().await;
            conn.finished(permit);
            return Err(SshError::Cancelled);
        }
        let result = self.run(&conn, channel, target, command, out, cancel).await;
        conn.finished(permit);
        result
    }

    /// The pooled connection to `target` (counted as busy until [`Conn::finished`]), a channel
    /// slot on it and a freshly opened session channel.
    async fn open_channel(
        &self,
        target: &Target,
        command: &Command,
        cancel: &CancellationToken,
    ) -> Result<(Arc<Conn>, OwnedSemaphorePermit, russh::Channel<client::Msg>), SshError> {
        let conn = tokio::select! {
            c = self.connection(target, command.connect_timeout) => c?,
            () = cancel.cancelled() => return Err(SshError::Cancelled),
        };
        let permit: OwnedSemaphorePermit = tokio::select! {
            p = Arc::clone(&conn.channels).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => {
                    conn.end();
                    return Err(SshError::ShutDown);
                }
            },
            () = cancel.cancelled() => {
                conn.end();
                return Err(SshError::Cancelled);
            }
        };
        let opened = conn
            .handle
            .channel_open_session()
            .await
            .map_err(|e| SshError::Protocol {
                host: target.name.clone(),
                reason: e.to_string(),
            });
        match opened {
            Ok(channel) => Ok((conn, permit, channel)),
            Err(e) => {
                conn.finished(permit);
                Err(e)
            }
        }
    }

    async fn run(
        &self,
        conn: &Conn,
        mut channel: russh::Channel<client::Msg>,
        target: &Target,
        command: &Command,
        out: mpsc::Sender<Output>,
        cancel: CancellationToken,
    ) -> Result<Exit, SshError> {
        let host = || target.name.clone();
        let proto = |e: russh::Error| SshError::Protocol {
            host: target.name.clone(),
            reason: e.to_string(),
        };
        for (k, v) in &command.env {
            channel
                .set_env(false, k.clone(), v.clone())
                .await
                .map_err(proto)?;
        }
        channel
            .exec(true, command.line.as_bytes())
            .await
            .map_err(proto)?;
        let mut exit = None;
        loop {
            let msg = tokio::select! {
                m = channel.wait() => m,
                () = cancel.cancelled() => {
                    let _ = channel.signal(Sig::TERM).await;
                    let _ = channel.close().await;
                    return Err(SshError::Cancelled);
                }
                () = out.closed() => {
                    let _ = channel.signal(Sig::TERM).await;
                    let _ = channel.close().await;
                    return Err(SshError::Cancelled);
                }
                () = conn.closed.cancelled() => {
                    let why = conn.why.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                    return Err(SshError::Closed { host: host(), why });
                }
            };
            match msg {
                Some(ChannelMsg::Data { data }) => {
                    let _ = out
                        .send(Output::Stdout(Bytes::copy_from_slice(&data)))
                        .await;
                }
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    let _ = out
                        .send(Output::Stderr(Bytes::copy_from_slice(&data)))
                        .await;
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    exit = Some(Exit::Code(exit_status))
                }
                Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                    exit = Some(Exit::Signal(format!("{signal_name:?}")));
                }
                Some(ChannelMsg::Failure) => {
                    return Err(SshError::Refused {
                        host: host(),
                        reason: "the exec request was refused".to_owned(),
                    });
                }
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            }
        }
        exit.ok_or_else(|| {
            if conn.closed.is_cancelled() {
                SshError::Closed {
                    host: host(),
                    why: conn
                        .why
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone(),
                }
            } else {
                SshError::Protocol {
                    host: host(),
                    reason: "the connection ended before the command reported how it exited"
                        .to_owned(),
                }
            }
        })
    }

    /// Runs an interactive session on `target`: with [`SessionSpec::pty`] a pty (`pty-req`),
    /// then the login shell, or [`SessionSpec::command`] (`exec`). `input` is typed into it
    /// (data, resizes, end of input); its output goes to `out`. Cancelling `cancel` or dropping
    /// `out`'s receiver closes the channel, and the target kills the session's processes.
    /// Each session runs on an SSH connection of its own (see [`Pool::dedicated`]): when `out`
    /// is full the session waits, and that wait reaches the remote program without stalling
    /// the pooled connection's `exec`s.
    pub async fn session(
        &self,
        target: &Target,
        spec: &SessionSpec,
        connect_timeout: Duration,
        mut input: mpsc::Receiver<SessionInput>,
        out: mpsc::Sender<Output>,
        cancel: CancellationToken,
    ) -> Result<Exit, SshError> {
        let conn = tokio::select! {
            c = self.dedicated(target, connect_timeout) => c?,
            () = cancel.cancelled() => return Err(SshError::Cancelled),
        };
        let host = || target.name.clone();
        let proto = |e: russh::Error| SshError::Protocol {
            host: target.name.clone(),
            reason: e.to_string(),
        };
        let result = async {
            let mut channel = conn.handle.channel_open_session().await.map_err(proto)?;
            if let Some(pty) = &spec.pty {
                channel
                    .request_pty(true, &pty.term, pty.cols, pty.rows, 0, 0, &[])
                    .await
                    .map_err(proto)?;
            }
            match (&spec.command, &spec.pty) {
                (Some(c), _) => channel.exec(true, c.as_bytes()).await.map_err(proto)?,
                (None, Some(_)) => channel.request_shell(true).await.map_err(proto)?,
                (None, None) => {
                    return Err(SshError::Refused {
                        host: host(),
                        reason: "a shell needs a terminal; give a command to run without one"
                            .to_owned(),
                    });
                }
            }
            let mut exit = None;
            let mut input_open = true;
            loop {
                tokio::select! {
                    m = channel.wait() => match m {
                        Some(ChannelMsg::Data { data }) => {
                            let o = Output::Stdout(Bytes::copy_from_slice(&data));
                            if !forward(&out, o, &cancel, &conn.closed).await {
                                let _ = channel.signal(Sig::HUP).await;
                                let _ = channel.close().await;
                                return Err(SshError::Cancelled);
                            }
                        }
                        Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                            let o = Output::Stderr(Bytes::copy_from_slice(&data));
                            if !forward(&out, o, &cancel, &conn.closed).await {
                                let _ = channel.signal(Sig::HUP).await;
                                let _ = channel.close().await;
                                return Err(SshError::Cancelled);
                            }
                        }
                        Some(ChannelMsg::ExitStatus { exit_status }) => exit = Some(Exit::Code(exit_status)),
                        Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                            exit = Some(Exit::Signal(format!("{signal_name:?}")));
                        }
                        Some(ChannelMsg::Failure) => {
                            return Err(SshError::Refused {
                                host: host(),
                                reason: "the target refused the session (no pty or shell there)".to_owned(),
                            });
                        }
                        Some(ChannelMsg::Close) | None => break,
                        Some(_) => {}
                    },
                    i = input.recv(), if input_open => match i {
                        Some(SessionInput::Data(d)) => channel.data(&d[..]).await.map_err(proto)?,
                        Some(SessionInput::Resize { cols, rows }) => {
                            channel.window_change(cols, rows, 0, 0).await.map_err(proto)?;
                        }
                        Some(SessionInput::Eof) | None => {
                            input_open = false;
                            let _ = channel.eof().await;
                        }
                    },
                    () = cancel.cancelled() => {
                        let _ = channel.signal(Sig::HUP).await;
                        let _ = channel.close().await;
                        return Err(SshError::Cancelled);
                    }
                    () = out.closed() => {
                        let _ = channel.signal(Sig::HUP).await;
                        let _ = channel.close().await;
                        return Err(SshError::Cancelled);
                    }
                    () = conn.closed.cancelled() => {
                        let why = conn.why.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                        return Err(SshError::Closed { host: host(), why });
                    }
                }
            }
            exit.ok_or_else(|| SshError::Protocol {
                host: host(),
                reason: "the session ended without an exit status".to_owned(),
            })
        }
        .await;
        // The session's own connection ends with it (in the background: the goodbye may wait).
        tokio::spawn(async move { conn.close("the session ended").await });
        result
    }

    /// Opens a channel on `target`'s pooled connection and starts subsystem `name` on it
    /// (`sftp`). The channel counts against the connection's channel limit and keeps it from
    /// idling out until the returned stream is dropped. Closing the hub's connection
    /// ([`Pool::close_host`], shutdown) ends the stream.
    ///
    /// Whoever reads the stream must keep reading: while it doesn't, the connection's reader
    /// waits (see [`Pool::dedicated`]) and every other channel on it waits too. A relay to a
    /// client the hub doesn't control takes [`Pool::dedicated_subsystem`] instead.
    pub async fn subsystem(
        &self,
        target: &Target,
        name: &str,
        connect_timeout: Duration,
        cancel: CancellationToken,
    ) -> Result<SubsystemStream, SshError> {
        let conn = tokio::select! {
            c = self.connection(target, connect_timeout) => c?,
            () = cancel.cancelled() => return Err(SshError::Cancelled),
        };
        let permit: OwnedSemaphorePermit = tokio::select! {
            p = Arc::clone(&conn.channels).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => {
                    conn.end();
                    return Err(SshError::ShutDown);
                }
            },
            () = cancel.cancelled() => {
                conn.end();
                return Err(SshError::Cancelled);
            }
        };
        let channel = match start_subsystem(&conn, target, name).await {
            Ok(c) => c,
            Err(e) => {
                conn.finished(permit);
                return Err(e);
            }
        };
        Ok(SubsystemStream {
            stream: channel.into_stream(),
            conn,
            permit: Some(permit),
        })
    }

    /// Like [`Pool::subsystem`], but on an SSH connection of its own (see [`Pool::dedicated`]),
    /// for relaying a client the hub doesn't control (the stock `sftp`/`scp` through
    /// `tether proxy`): when that client stops reading, only this connection waits, and the
    /// wait reaches the target's SFTP server instead of stalling the pooled connection's
    /// `exec`s. The connection closes when the stream is dropped, and with the host
    /// ([`Pool::close_host`]) or the hub ([`Pool::shutdown`]).
    pub async fn dedicated_subsystem(
        &self,
        target: &Target,
        name: &str,
        connect_timeout: Duration,
        cancel: CancellationToken,
    ) -> Result<SubsystemStream, SshError> {
        let conn = tokio::select! {
            c = self.dedicated(target, connect_timeout) => c?,
            () = cancel.cancelled() => return Err(SshError::Cancelled),
        };
        let started = tokio::select! {
            r = start_subsystem(&conn, target, name) => r,
            () = cancel.cancelled() => Err(SshError::Cancelled),
        };
        match started {
            Ok(channel) => Ok(SubsystemStream {
                stream: channel.into_stream(),
                conn,
                permit: None,
            }),
            Err(e) => {
                conn.close(&format!("the {name} subsystem did not start"))
                    .await;
                Err(e)
            }
        }
    }

    /// Closes `host`'s connection (revoke, `hosts rm`): its running commands fail with
    /// [`SshError::Closed`] and the target kills them when the connection ends. Returns whether
    /// a connection was open.
    pub async fn close_host(&self, host: &str, why: &str) -> bool {
        let slot = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(host);
        if let Some(slot) = slot {
            let (conn, sessions) = {
                let mut slot = slot.lock().await;
                (slot.conn.take(), std::mem::take(&mut slot.sessions))
            };
            let mut closed = false;
            for s in sessions.iter().filter_map(std::sync::Weak::upgrade) {
                s.close(why).await;
                closed = true;
            }
            if let Some(conn) = conn {
                conn.close(why).await;
                closed = true;
            }
            return closed;
        }
        false
    }

    /// Closes connections idle since before `now - idle` with no command running, `idle`
    /// shortened while the pool is more than half full ([`effective_idle`]). Returns the hosts
    /// closed.
    pub async fn reap(&self, now: Instant) -> Vec<String> {
        let stats = self.stats();
        let idle = effective_idle(self.inner.config.idle, stats.open, stats.max);
        let slots: Vec<(String, Arc<tokio::sync::Mutex<Slot>>)> = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        let mut closed = Vec::new();
        for (name, slot) in slots {
            let Ok(mut slot) = slot.try_lock() else {
                continue;
            };
            let Some(conn) = slot.conn.clone() else {
                continue;
            };
            let idle_since = *conn
                .last_used
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let active = *conn
                .active
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !conn.alive() {
                conn.retire();
                slot.conn = None;
            } else if active == 0 && now.saturating_duration_since(idle_since) >= idle {
                slot.conn = None;
                conn.close("idle").await;
                self.inner.lru.expired.fetch_add(1, Ordering::Relaxed);
                closed.push(name);
            }
        }
        closed
    }

    /// Closes every connection, once; later requests fail with [`SshError::ShutDown`].
    pub async fn shutdown(&self) {
        if self.inner.shutdown.is_cancelled() {
            return;
        }
        self.inner.shutdown.cancel();
        let slots: Vec<_> = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .map(|(_, v)| v)
            .collect();
        for slot in slots {
            let (conn, sessions) = {
                let mut slot = slot.lock().await;
                (slot.conn.take(), std::mem::take(&mut slot.sessions))
            };
            for s in sessions.iter().filter_map(std::sync::Weak::upgrade) {
                s.close("the hub is shutting down").await;
            }
            if let Some(conn) = conn {
                conn.close("the hub is shutting down").await;
            }
        }
    }
}

/// Opens a session channel on `conn` and starts subsystem `name` on it.
async fn start_subsystem(
    conn: &Conn,
    target: &Target,
    name: &str,
) -> Result<russh::Channel<client::Msg>, SshError> {
    let proto = |e: russh::Error| SshError::Protocol {
        host: target.name.clone(),
        reason: e.to_string(),
    };
    let mut channel = conn.handle.channel_open_session().await.map_err(proto)?;
    channel.request_subsystem(true, name).await.map_err(proto)?;
    loop {
        match channel.wait().await {
            Some(ChannelMsg::Success) => return Ok(channel),
            Some(ChannelMsg::Failure) | Some(ChannelMsg::Close) | None => {
                return Err(SshError::Refused {
                    host: target.name.clone(),
                    reason: format!("it does not serve the {name} subsystem"),
                });
            }
            Some(_) => {}
        }
    }
}

/// A subsystem channel's byte stream (see [`Pool::subsystem`] and
/// [`Pool::dedicated_subsystem`]).
pub struct SubsystemStream {
    stream: russh::ChannelStream<client::Msg>,
    conn: Arc<Conn>,
    /// Its channel slot on the pooled connection; `None` on a connection of its own.
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for SubsystemStream {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.conn.finished(permit);
            return;
        }
        // Its own connection ends with it (in the background: the goodbye may wait). Without
        // a runtime (the process is ending) the connection goes with it anyway.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let conn = Arc::clone(&self.conn);
            rt.spawn(async move { conn.close("the subsystem session ended").await });
        }
    }
}

impl AsyncRead for SubsystemStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for SubsystemStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Hands `o` to `out`, waiting while it is full (backpressure) but not past a cancel or the
/// connection's close. False when the session must stop.
async fn forward(
    out: &mpsc::Sender<Output>,
    o: Output,
    cancel: &CancellationToken,
    closed: &CancellationToken,
) -> bool {
    tokio::select! {
        r = out.send(o) => r.is_ok(),
        () = cancel.cancelled() => false,
        () = closed.cancelled() => false,
    }
}
