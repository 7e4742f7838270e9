//! The relay server: TLS 1.3, an HTTP/1.1 upgrade, the key proof, then forwarding.
//!
//! Limits: new connections per source address (token bucket, default 5/s burst 10); every
//! authenticated key gets a byte budget (announced in `Welcome`) and its own bounded send queue
//! (a full queue drops the datagram and counts it: one heavy sender fills only its receivers'
//! queues, and only within its own budget); frames are capped at [`crate::proto::MAX_PAYLOAD`];
//! the handshake must finish within 10 s. Only allowed keys are accepted: the allowlist file
//! (re-read when it changes), the admin keys ([`RelayConfig::admin_keys`], the hubs), and the
//! keys each admin pushed ([`Frame::AllowSet`], kept in memory per admin until that admin
//! replaces them, across its reconnects; never written to disk). A key that leaves this union
//! is disconnected at once. On shutdown every client is told [`Frame::GoingAway`] first.
//!
//! Routes: `GET /relay` (datagrams), `GET /enroll-listen`, `GET /enroll-accept` (a hub's
//! enrollment listener and its accepted sessions, admin keys only) and `GET /enroll` (a target
//! without a key, see [`crate::enroll`]), all by HTTP/1.1 upgrade; `/healthz`; `/metrics`.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::RelayError;
use crate::proto::{
    Bucket, Decoder, Frame, Key, MAX_SET_KEYS, client_proof, proofs_match, relay_proof,
};
use crate::rendezvous;

/// Frames queued to one client before datagrams to it are dropped.
pub const CLIENT_QUEUE: usize = 256;
/// Longest HTTP request head accepted.
const MAX_HEAD: usize = 8192;
/// Time to finish TLS, upgrade and proof.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// How a relay runs.
pub struct RelayConfig {
    /// Where to listen (TCP).
    pub listen: SocketAddr,
    /// TLS 1.3 server config ([`crate::tls::server_config`]).
    pub tls: Arc<rustls::ServerConfig>,
    /// The relay's X25519 secret (its public half is what clients are configured with).
    pub secret: x25519_dalek::StaticSecret,
    /// File of allowed WireGuard keys, one base64 key per line (`#` comments); re-read when it
    /// changes. Unknown keys are refused before anything is forwarded.
    pub allowlist: PathBuf,
    /// Bytes per second each key may send, and its burst.
    pub rate: u32,
    /// Burst of bytes.
    pub burst: u32,
    /// New connections per second per source address, and the burst.
    pub conn_rate: (u32, u32),
    /// Bearer token for `/metrics`; `None`: `/metrics` is refused.
    pub metrics_token: Option<String>,
    /// The hubs' WireGuard public keys: always allowed to connect; they may push the keys they
    /// allow ([`crate::RelayClient::set_allowed`]) and listen for enrollments
    /// ([`crate::enroll::Listener`]).
    pub admin_keys: Vec<Key>,
    /// Limits of enrollment pairings ([`crate::enroll`]).
    pub enroll: EnrollLimits,
}

/// Limits of the enrollment rendezvous: it carries one small exchange per pairing.
#[derive(Debug, Clone)]
pub struct EnrollLimits {
    /// From a target's arrival, the time for the hub to accept and the exchange to finish
    /// (default 10 s).
    pub pairing_deadline: Duration,
    /// Pairings in progress for one invite hash (default 4); more are answered 429.
    pub max_per_hash: usize,
    /// Bytes forwarded each way in one pairing (default 64 KiB); past it the direction is
    /// closed.
    pub byte_cap: usize,
}

impl Default for EnrollLimits {
    fn default() -> Self {
        EnrollLimits {
            pairing_deadline: Duration::from_secs(10),
            max_per_hash: 4,
            byte_cap: 64 * 1024,
        }
    }
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("listen", &self.listen)
            .field("allowlist", &self.allowlist)
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .field("conn_rate", &self.conn_rate)
            .field("admin_keys", &self.admin_keys.len())
            .field("enroll", &self.enroll)
            .finish_non_exhaustive()
    }
}

/// Counters (also served on `/metrics`).
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Keys connected now.
    pub connected: AtomicU64,
    /// Datagrams forwarded.
    pub forwarded: AtomicU64,
    /// Bytes forwarded.
    pub bytes: AtomicU64,
    /// Datagrams dropped: over the sender's budget.
    pub dropped_budget: AtomicU64,
    /// Datagrams dropped: the receiver's queue was full.
    pub dropped_queue: AtomicU64,
    /// Datagrams dropped: the receiver is not connected.
    pub dropped_no_route: AtomicU64,
    /// Connections refused (rate, unknown key, failed proof, bad protocol, a non-admin's
    /// admin frame, an unknown enrollment hash).
    pub refused: AtomicU64,
    /// Enrollment pairings spliced (hub accepted).
    pub enroll_paired: AtomicU64,
    /// Enrollment connections for a hash no hub expects (answered 404).
    pub enroll_unknown: AtomicU64,
}

pub(crate) struct Shared {
    secret: x25519_dalek::StaticSecret,
    public: Key,
    file_allowed: RwLock<HashSet<Key>>,
    admins: HashSet<Key>,
    /// The keys each admin pushed, by admin key.
    pushed: Mutex<HashMap<Key, HashSet<Key>>>,
    clients: Mutex<HashMap<Key, (u64, mpsc::Sender<Frame>)>>,
    next_conn: AtomicU64,
    rate: u32,
    burst: u32,
    pub(crate) stats: Arc<RelayStats>,
    metrics_token: Option<String>,
    pub(crate) rdv: rendezvous::State,
    pub(crate) enroll: EnrollLimits,
}

impl Shared {
    /// In the effective allowlist: an admin, in the file, or pushed by some admin.
    fn is_allowed(&self, key: &Key) -> bool {
        self.admins.contains(key)
            || self
                .file_allowed
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(key)
            || self
                .pushed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .any(|s| s.contains(key))
    }

    pub(crate) fn is_admin(&self, key: &Key) -> bool {
        self.admins.contains(key)
    }

    /// Disconnects every datagram client no longer allowed (dropping its queue's sender makes
    /// its connection say GoingAway and close). Lock order: clients, then the allowlists.
    fn prune(&self) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.retain(|k, _| self.is_allowed(k));
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}

/// Collects the chunks of one [`Frame::AllowSet`] / [`Frame::Expect`] set.
#[derive(Default)]
pub(crate) struct SetBuilder {
    pending: Option<HashSet<[u8; 32]>>,
}

impl SetBuilder {
    /// Adds a chunk; the whole set once `last` arrived.
    pub(crate) fn chunk(
        &mut self,
        first: bool,
        last: bool,
        items: Vec<[u8; 32]>,
    ) -> Result<Option<HashSet<[u8; 32]>>, RelayError> {
        if first {
            self.pending = Some(HashSet::new());
        }
        let Some(set) = self.pending.as_mut() else {
            return Err(RelayError::Protocol(
                "a set chunk without a first chunk".into(),
            ));
        };
        set.extend(items);
        if set.len() > MAX_SET_KEYS {
            return Err(RelayError::Protocol(format!(
                "a set of more than {MAX_SET_KEYS} entries"
            )));
        }
        Ok(if last { self.pending.take() } else { None })
    }
}

/// A running relay.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    public: Key,
    stats: Arc<RelayStats>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn parse_allowlist(text: &str) -> HashSet<Key> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let b = base64::engine::general_purpose::STANDARD.decode(l).ok()?;
            <[u8; 32]>::try_from(b.as_slice()).ok()
        })
        .collect()
}

impl Relay {
    /// Binds and starts serving.
    pub async fn start(cfg: RelayConfig) -> Result<Relay, RelayError> {
        let text = tokio::fs::read_to_string(&cfg.allowlist)
            .await
            .map_err(|e| {
                RelayError::Io(std::io::Error::new(
                    e.kind(),
                    format!("allowlist {}: {e}", cfg.allowlist.display()),
                ))
            })?;
        let listener = TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        let public = x25519_dalek::PublicKey::from(&cfg.secret).to_bytes();
        let stats = Arc::new(RelayStats::default());
        let shared = Arc::new(Shared {
            secret: cfg.secret,
            public,
            file_allowed: RwLock::new(parse_allowlist(&text)),
            admins: cfg.admin_keys.into_iter().collect(),
            pushed: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            rate: cfg.rate,
            burst: cfg.burst,
            stats: stats.clone(),
            metrics_token: cfg.metrics_token,
            rdv: rendezvous::State::default(),
            enroll: cfg.enroll,
        });
        let (stop, stop_rx) = watch::channel(false);
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg.tls);
        let task = tokio::spawn(serve(
            listener,
            acceptor,
            shared,
            cfg.allowlist,
            cfg.conn_rate,
            stop_rx,
        ));
        Ok(Relay {
            addr,
            public,
            stats,
            stop,
            task,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its X25519 public key (what clients configure as `relay_key`).
    pub fn public_key(&self) -> Key {
        self.public
    }

    /// Its counters.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// Tells every client it is going away, then stops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    allowlist: PathBuf,
    conn_rate: (u32, u32),
    mut stop: watch::Receiver<bool>,
) {
    let mut per_ip: HashMap<IpAddr, Bucket> = HashMap::new();
    let mut reload = tokio::time::interval(Duration::from_secs(1));
    let mut mtime = tokio::fs::metadata(&allowlist)
        .await
        .and_then(|m| m.modified())
        .ok();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = reload.tick() => {
                let m = tokio::fs::metadata(&allowlist).await.and_then(|m| m.modified()).ok();
                if m != mtime {
                    mtime = m;
                    if let Ok(text) = tokio::fs::read_to_string(&allowlist).await {
                        let set = parse_allowlist(&text);
                        *shared.file_allowed.write().unwrap_or_else(|e| e.into_inner()) = set;
                        // Keys no longer allowed are disconnected at once.
                        shared.prune();
                    }
                }
                let now = Instant::now();
                per_ip.retain(|_, b| !b.clone().take(conn_rate.1, now));
            }
            accepted = listener.accept() => {
                let Ok((tcp, peer)) = accepted else { continue };
                let now = Instant::now();
                if per_ip.len() > 100_000 {
                    per_ip.clear();
                }
                let bucket = per_ip
                    .entry(peer.ip())
                    .or_insert_with(|| Bucket::new(conn_rate.0, conn_rate.1, now));
                if !bucket.take(1, now) {
                    shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                    drop(tcp);
                    continue;
                }
                let acceptor = acceptor.clone();
                let shared = shared.clone();
                let stop = stop.clone();
                conns.spawn(async move {
                    if let Err(e) = connection(tcp, acceptor, shared.clone(), stop).await {
                        shared.stats.refused.fetch_add(u64::from(e.is_refusal()), Ordering::Relaxed);
                        tracing::debug!(%peer, "relay connection ended: {e}");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // Going away: every connection task sees `stop` and tells its client.
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

impl RelayError {
    fn is_refusal(&self) -> bool {
        matches!(self, RelayError::Refused(_) | RelayError::Protocol(_))
    }
}

pub(crate) type Tls = tokio_rustls::server::TlsStream<TcpStream>;

/// What a connection is for, from its request line.
enum Route {
    /// Answered in [`http_head`] (health, metrics, 404).
    Answered,
    /// Upgraded to frames: datagrams, an enrollment listener, or an accepted enrollment.
    Frames(Kind, Vec<u8>),
    /// A target's enrollment connection for this invite hash (not answered yet).
    Enroll([u8; 32], Vec<u8>),
}

/// The three framed connection kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `GET /relay`: datagrams (and, for admins, [`Frame::AllowSet`]).
    Relay,
    /// `GET /enroll-listen`: a hub's enrollment announcements (admins only).
    Listen,
    /// `GET /enroll-accept`: a hub taking one enrollment session (admins only).
    Accept,
}

async fn connection(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> Result<(), RelayError> {
    let _ = tcp.set_nodelay(true);
    let started = tokio::time::Instant::now();
    let (mut tls, route) = tokio::time::timeout(HANDSHAKE, async {
        let mut tls = acceptor.accept(tcp).await?;
        let route = http_head(&mut tls, &shared).await?;
        Ok::<_, RelayError>((tls, route))
    })
    .await
    .map_err(|_| RelayError::Timeout("the handshake"))??;
    let (kind, rest) = match route {
        Route::Answered => return Ok(()),
        Route::Enroll(hash, rest) => {
            return rendezvous::target(tls, hash, rest, &shared, started).await;
        }
        Route::Frames(kind, rest) => (kind, rest),
    };
    let mut decoder = Decoder::new();
    decoder.push(&rest);
    let (key, welcome_frame) = tokio::time::timeout_at(
        started + HANDSHAKE,
        authenticate(&mut tls, &mut decoder, &shared, kind != Kind::Relay),
    )
    .await
    .map_err(|_| RelayError::Timeout("the handshake"))??;
    if kind == Kind::Accept {
        welcome(&mut tls, &welcome_frame).await?;
        return rendezvous::accept(tls, decoder, key, &shared, started + HANDSHAKE).await;
    }

    let (tx, mut rx) = mpsc::channel::<Frame>(CLIENT_QUEUE);
    let conn_id = shared.next_conn_id();
    if kind == Kind::Relay {
        // The newest connection for a key wins; the old one is told to go away. Checked again
        // under the clients lock: a key removed while this one authenticated is not let in.
        let mut clients = shared.clients.lock().unwrap_or_else(|e| e.into_inner());
        if !shared.is_allowed(&key) {
            drop(clients);
            tls.write_all(&Frame::GoingAway.encode()).await?;
            let _ = tls.shutdown().await;
            return Ok(());
        }
        if let Some((_, old)) = clients.insert(key, (conn_id, tx)) {
            let _ = old.try_send(Frame::GoingAway);
        }
        drop(clients);
        shared.stats.connected.fetch_add(1, Ordering::Relaxed);
    } else {
        shared.rdv.listen(key, conn_id, tx);
    }
    // Welcome only now that the key is routed (a datagram sent at once is delivered); a
    // failed write ends the connection through the same cleanup as the end of `forward`.
    let result = match welcome(&mut tls, &welcome_frame).await {
        Ok(()) => forward(&mut tls, &mut decoder, &mut rx, key, kind, &shared, stop).await,
        Err(e) => Err(e),
    };
    if kind == Kind::Relay {
        let mut clients = shared.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.get(&key).is_some_and(|(id, _)| *id == conn_id) {
            clients.remove(&key);
        }
        drop(clients);
        shared.stats.connected.fetch_sub(1, Ordering::Relaxed);
    } else {
        shared.rdv.unlisten(key, conn_id);
    }
    let _ = tls.shutdown().await;
    result
}

/// An HTTP answer with a text body that closes the connection.
pub(crate) fn http_answer(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Reads the HTTP request head and answers it or says how to go on (see [`Route`]); for the
/// framed routes the 101 is sent here, for `/enroll` only once the hub joined.
async fn http_head(tls: &mut Tls, shared: &Shared) -> Result<Route, RelayError> {
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        let mut chunk = [0u8; 1024];
        let n = tls.read(&mut chunk).await?;
        if n == 0 {
            return Err(RelayError::Protocol("closed before the request".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(RelayError::Protocol("request head over 8 KiB".into()));
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or("");
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let upgrade = |proto: &str| header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case(proto));
    let mut parts = request.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let framed = match (method, path) {
        ("GET", "/relay") => Some(Kind::Relay),
        ("GET", "/enroll-listen") => Some(Kind::Listen),
        ("GET", "/enroll-accept") => Some(Kind::Accept),
        _ => None,
    };
    let answer = match (method, path) {
        ("GET", "/healthz") => http_answer("200 OK", "ok\n"),
        ("GET", "/metrics") => {
            let auth = header("authorization").unwrap_or_default();
            let ok = shared.metrics_token.as_ref().is_some_and(|t| {
                let want = format!("Bearer {t}");
                subtle::ConstantTimeEq::ct_eq(auth.as_bytes(), want.as_bytes()).into()
            });
            if ok {
                http_answer("200 OK", &metrics(&shared.stats))
            } else {
                http_answer("401 Unauthorized", "a bearer token is needed\n")
            }
        }
        ("GET", "/enroll") if upgrade(crate::enroll::UPGRADE) => {
            let mut hash = [0u8; 32];
            let parsed = header(crate::enroll::HASH_HEADER)
                .is_some_and(|h| hex::decode_to_slice(h, &mut hash).is_ok());
            if parsed {
                return Ok(Route::Enroll(hash, buf[end..].to_vec()));
            }
            shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            http_answer(
                "400 Bad Request",
                "the tether-enroll header must hold 64 hex digits\n",
            )
        }
        _ if framed.is_some() && upgrade("tether-relay/1") => {
            tls.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: tether-relay/1\r\nconnection: upgrade\r\n\r\n",
            )
            .await?;
            tls.flush().await?;
            let kind = framed.unwrap_or(Kind::Relay);
            return Ok(Route::Frames(kind, buf[end..].to_vec()));
        }
        _ => http_answer("404 Not Found", "not here\n"),
    };
    tls.write_all(answer.as_bytes()).await?;
    tls.flush().await?;
    let _ = tls.shutdown().await;
    Ok(Route::Answered)
}

fn metrics(s: &RelayStats) -> String {
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    format!(
        "tether_relay_connected_keys {}\ntether_relay_forwarded_total {}\ntether_relay_forwarded_bytes_total {}\n\
         tether_relay_dropped_total{{reason=\"budget\"}} {}\ntether_relay_dropped_total{{reason=\"queue\"}} {}\n\
         tether_relay_dropped_total{{reason=\"no_route\"}} {}\ntether_relay_refused_total {}\n\
         tether_relay_enroll_paired_total {}\ntether_relay_enroll_unknown_total {}\n",
        g(&s.connected),
        g(&s.forwarded),
        g(&s.bytes),
        g(&s.dropped_budget),
        g(&s.dropped_queue),
        g(&s.dropped_no_route),
        g(&s.refused),
        g(&s.enroll_paired),
        g(&s.enroll_unknown),
    )
}

pub(crate) async fn read_frame(tls: &mut Tls, decoder: &mut Decoder) -> Result<Frame, RelayError> {
    loop {
        if let Some(f) = decoder.next_frame()? {
            return Ok(f);
        }
        let mut buf = [0u8; 4096];
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            return Err(RelayError::Protocol("closed".into()));
        }
        decoder.push(&buf[..n]);
    }
}

/// Checks the client's key and proof; returns the key and the `Welcome` frame (encoded) that
/// the caller sends once the key is routed, so that nothing the client sends right after
/// `Welcome` can find its own key without a route.
async fn authenticate(
    tls: &mut Tls,
    decoder: &mut Decoder,
    shared: &Shared,
    admin_only: bool,
) -> Result<(Key, Vec<u8>), RelayError> {
    let mut server_nonce = [0u8; 32];
    getrandom::fill(&mut server_nonce).map_err(|e| RelayError::Protocol(e.to_string()))?;
    tls.write_all(
        &Frame::ServerHello {
            nonce: server_nonce,
            relay_key: shared.public,
        }
        .encode(),
    )
    .await?;
    tls.flush().await?;
    let Frame::ClientAuth { key, nonce, proof } = read_frame(tls, decoder).await? else {
        return Err(RelayError::Protocol("expected ClientAuth".into()));
    };
    let refuse = |reason: &str| Frame::Refused {
        reason: reason.to_owned(),
    };
    if !shared.is_allowed(&key) {
        tls.write_all(&refuse("this key is not in the relay's allowlist").encode())
            .await?;
        return Err(RelayError::Refused("unknown key".into()));
    }
    if admin_only && !shared.is_admin(&key) {
        tls.write_all(&refuse("enrollment needs one of the relay's admin (hub) keys").encode())
            .await?;
        return Err(RelayError::Refused("not an admin key".into()));
    }
    let want = client_proof(&shared.secret, &key, &server_nonce, &nonce, &key);
    if !proofs_match(&proof, &want) {
        tls.write_all(&refuse("the key proof failed").encode())
            .await?;
        return Err(RelayError::Refused("failed key proof".into()));
    }
    let welcome = Frame::Welcome {
        proof: relay_proof(&shared.secret, &key, &server_nonce, &nonce, &key),
        rate: shared.rate,
        burst: shared.burst,
    }
    .encode();
    Ok((key, welcome))
}

/// Sends the `Welcome` that [`authenticate`] prepared.
async fn welcome(tls: &mut Tls, frame: &[u8]) -> Result<(), RelayError> {
    tls.write_all(frame).await?;
    tls.flush().await?;
    Ok(())
}

/// Refuses a frame this connection may not send: tells the client why, then closes.
async fn refuse_frame(tls: &mut Tls, why: &str) -> Result<(), RelayError> {
    tls.write_all(
        &Frame::Refused {
            reason: why.to_owned(),
        }
        .encode(),
    )
    .await?;
    tls.flush().await?;
    Err(RelayError::Refused(why.to_owned()))
}

fn count(set: &HashSet<[u8; 32]>) -> u32 {
    u32::try_from(set.len()).unwrap_or(u32::MAX)
}

async fn forward(
    tls: &mut Tls,
    decoder: &mut Decoder,
    rx: &mut mpsc::Receiver<Frame>,
    key: Key,
    kind: Kind,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) -> Result<(), RelayError> {
    let mut budget = Bucket::new(shared.rate, shared.burst, Instant::now());
    let mut allow_set = SetBuilder::default();
    let mut expect_set = SetBuilder::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Frames already buffered first.
        while let Some(frame) = decoder.next_frame()? {
            match frame {
                Frame::Send { dst, data } if kind == Kind::Relay => {
                    let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
                    if !budget.take(n, Instant::now()) {
                        shared.stats.dropped_budget.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let target = shared
                        .clients
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&dst)
                        .map(|(_, tx)| tx.clone());
                    let Some(target) = target else {
                        shared
                            .stats
                            .dropped_no_route
                            .fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let len = data.len() as u64;
                    match target.try_send(Frame::Recv { src: key, data }) {
                        Ok(()) => {
                            shared.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                            shared.stats.bytes.fetch_add(len, Ordering::Relaxed);
                        }
                        Err(_) => {
                            shared.stats.dropped_queue.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Frame::AllowSet { first, last, keys } => {
                    if !shared.is_admin(&key) {
                        return refuse_frame(
                            tls,
                            "only the relay's admin (hub) keys may set the allowlist",
                        )
                        .await;
                    }
                    if let Some(set) = allow_set.chunk(first, last, keys)? {
                        let n = count(&set);
                        shared
                            .pushed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(key, set);
                        // Keys this admin no longer allows (and nobody else does) go at once.
                        shared.prune();
                        tls.write_all(&Frame::Ack { count: n }.encode()).await?;
                        tls.flush().await?;
                    }
                }
                Frame::Expect {
                    first,
                    last,
                    hashes,
                } if kind == Kind::Listen => {
                    if let Some(set) = expect_set.chunk(first, last, hashes)? {
                        let n = count(&set);
                        shared.rdv.expect(key, set);
                        tls.write_all(&Frame::Ack { count: n }.encode()).await?;
                        tls.flush().await?;
                    }
                }
                Frame::Ping => {
                    tls.write_all(&Frame::Pong.encode()).await?;
                    tls.flush().await?;
                }
                Frame::Pong => {}
                other => {
                    return Err(RelayError::Protocol(format!(
                        "unexpected frame from a client: {other:?}"
                    )));
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => {
                tls.write_all(&Frame::GoingAway.encode()).await?;
                tls.flush().await?;
                return Ok(());
            }
            out = rx.recv() => {
                let Some(frame) = out else {
                    // Replaced by a newer connection of the same key, or disallowed.
                    tls.write_all(&Frame::GoingAway.encode()).await?;
                    tls.flush().await?;
                    return Ok(());
                };
                let last = frame == Frame::GoingAway;
                tls.write_all(&frame.encode()).await?;
                // Write whatever else is queued before flushing once.
                while let Ok(f) = rx.try_recv() {
                    tls.write_all(&f.encode()).await?;
                }
                tls.flush().await?;
                if last {
                    return Ok(());
                }
            }
            n = tls.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                decoder.push(&buf[..n]);
            }
        }
    }
}
