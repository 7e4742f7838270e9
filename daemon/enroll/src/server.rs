//! Thin tokio drivers: the hub's enrollment listener and the target's client, and the same
//! exchange over any byte stream ([`serve_stream`] / [`enroll_over`], e.g. spliced through a
//! relay when the hub has no reachable endpoint).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{EnrollError, Result};
use crate::hub::Hub;
use crate::proto::{
    self, FrameDecoder, Hello, MAX_FRAME, Message, TargetKeys, TargetSession, Welcome,
};
use crate::ratelimit::{DEFAULT_BURST, DEFAULT_MAX_SOURCES, DEFAULT_RATE_PER_SEC, RateLimiter};
use crate::token::Token;
use crate::util::unix_now;

/// Default per-connection deadline (10 s).
pub use crate::limits::DEFAULT_DEADLINE;

/// Default per-source rate of attempts with an authenticated token (100/s).
pub const DEFAULT_TOKEN_RATE_PER_SEC: f64 = 100.0;
/// Default per-source burst of attempts with an authenticated token (500).
pub const DEFAULT_TOKEN_BURST: u32 = 500;
/// The retry-after sent when the connection cap (not the rate) refused a connection.
const CAP_RETRY_AFTER: Duration = Duration::from_millis(500);

/// The listener's two per-source budgets (see [`crate::ratelimit`]).
#[derive(Debug)]
struct Budgets {
    /// Charged at accept for every connection.
    any: RateLimiter,
    /// Charged once a Hello's token MAC checked out (the accept-time token is refunded).
    authenticated: RateLimiter,
}

fn millis(d: Duration) -> u64 {
    // Round up: a client retrying exactly then finds the token there.
    u64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
}

/// Refused connections that are answered with an error frame at the same time; beyond this
/// they are closed without waiting.
const MAX_LINGERING_REFUSALS: usize = 64;

/// Listener limits. `Default` is the production setting (`[enroll]` in tetherd.toml).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest frame accepted (default 1 MiB).
    pub max_frame: usize,
    /// Whole-connection deadline (default 10 s): a connection that has not delivered its Hello
    /// by then is answered with a timeout error and closed (slowloris defense).
    pub deadline: Duration,
    /// Per-source refill rate (default 5/s).
    pub rate_per_sec: f64,
    /// Per-source burst (default 10).
    pub burst: u32,
    /// Most sources tracked by the rate limiter.
    pub max_sources: usize,
    /// Per-source refill rate for attempts whose token MAC checked out (default 100/s): a fleet
    /// enrolling through one NAT address. Such an attempt gets its token of the
    /// unauthenticated budget (`rate_per_sec`/`burst`) back and is charged here instead,
    /// before the hub reads or writes any state.
    pub token_rate_per_sec: f64,
    /// Per-source burst of authenticated attempts (default 500).
    pub token_burst: u32,
    /// Most connections handled at once (default 256); more are refused.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_frame: MAX_FRAME,
            deadline: DEFAULT_DEADLINE,
            rate_per_sec: DEFAULT_RATE_PER_SEC,
            burst: DEFAULT_BURST,
            max_sources: DEFAULT_MAX_SOURCES,
            token_rate_per_sec: DEFAULT_TOKEN_RATE_PER_SEC,
            token_burst: DEFAULT_TOKEN_BURST,
            max_connections: 256,
        }
    }
}

/// The listener's metrics.
#[derive(Debug, Clone)]
pub struct EnrollMetrics {
    attempts: IntCounterVec,
    rate_limited: IntCounter,
}

impl EnrollMetrics {
    /// Creates and registers `tether_enroll_attempts_total{outcome}` and
    /// `tether_enroll_rate_limited_total` in `registry`.
    pub fn register(registry: &Registry) -> Result<Self> {
        let attempts = IntCounterVec::new(
            Opts::new(
                "tether_enroll_attempts_total",
                "Enrollment connections by outcome (enrolled, or the error code).",
            ),
            &["outcome"],
        )
        .map_err(|e| EnrollError::Metrics(e.to_string()))?;
        let rate_limited = IntCounter::new(
            "tether_enroll_rate_limited_total",
            "Enrollment connections refused by the per-address rate limit or the connection cap.",
        )
        .map_err(|e| EnrollError::Metrics(e.to_string()))?;
        registry
            .register(Box::new(attempts.clone()))
            .map_err(|e| EnrollError::Metrics(e.to_string()))?;
        registry
            .register(Box::new(rate_limited.clone()))
            .map_err(|e| EnrollError::Metrics(e.to_string()))?;
        Ok(EnrollMetrics {
            attempts,
            rate_limited,
        })
    }

    /// Attempts counted with this outcome so far.
    pub fn attempts(&self, outcome: &str) -> u64 {
        self.attempts.with_label_values(&[outcome]).get()
    }

    /// Connections refused by the rate limit so far.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.get()
    }
}

/// The hub's enrollment listener.
#[derive(Debug)]
pub struct EnrollServer {
    listener: TcpListener,
    hub: Arc<Hub>,
    config: ServerConfig,
    metrics: EnrollMetrics,
}

impl EnrollServer {
    /// Binds the listener (`[enroll] listen`, default `0.0.0.0:51821`) and registers metrics.
    pub async fn bind(
        addr: SocketAddr,
        hub: Arc<Hub>,
        config: ServerConfig,
        registry: &Registry,
    ) -> Result<EnrollServer> {
        let metrics = EnrollMetrics::register(registry)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| EnrollError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        Ok(EnrollServer {
            listener,
            hub,
            config,
            metrics,
        })
    }

    /// Uses an already bound listener (e.g. bound first to learn the port for the hub's
    /// advertised endpoint) and registers metrics.
    pub fn from_listener(
        listener: TcpListener,
        hub: Arc<Hub>,
        config: ServerConfig,
        registry: &Registry,
    ) -> Result<EnrollServer> {
        let metrics = EnrollMetrics::register(registry)?;
        Ok(EnrollServer {
            listener,
            hub,
            config,
            metrics,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|source| EnrollError::Bind {
                addr: "<bound socket>".into(),
                source,
            })
    }

    /// A handle on the metrics (to read them in tests or the health endpoint).
    pub fn metrics(&self) -> EnrollMetrics {
        self.metrics.clone()
    }

    /// Accepts connections until `shutdown` is cancelled, then waits for in-flight exchanges
    /// (each bounded by the deadline).
    pub async fn serve(self, shutdown: CancellationToken) -> Result<()> {
        let EnrollServer {
            listener,
            hub,
            config,
            metrics,
        } = self;
        let config = Arc::new(config);
        let budgets = Arc::new(Mutex::new(Budgets {
            any: RateLimiter::new(config.rate_per_sec, config.burst, config.max_sources),
            authenticated: RateLimiter::new(
                config.token_rate_per_sec,
                config.token_burst,
                config.max_sources,
            ),
        }));
        let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let refusals = Arc::new(Semaphore::new(MAX_LINGERING_REFUSALS));
        let tracker = TaskTracker::new();
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "enrollment accept failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let allowed = budgets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .any
                .check(peer.ip(), std::time::Instant::now());
            let permit = match allowed {
                Ok(()) => slots.clone().try_acquire_owned().map_err(|_| {
                    // Not this source's fault: give its token back.
                    budgets
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .any
                        .refund(peer.ip());
                    CAP_RETRY_AFTER
                }),
                Err(wait) => Err(wait),
            };
            let permit = match permit {
                Ok(p) => p,
                Err(wait) => {
                    metrics.rate_limited.inc();
                    tracing::debug!(%peer, retry_after_ms = millis(wait), "enrollment connection refused (rate limit / cap)");
                    // Tell the client why and when to come back, then close. A few refusals linger
                    // briefly (so the client reads the error rather than a reset); under a flood
                    // the rest are just dropped.
                    let frame = proto::error_frame(&EnrollError::RateLimited {
                        retry_after_ms: Some(millis(wait)),
                    });
                    match refusals.clone().try_acquire_owned() {
                        Ok(p) => {
                            tracker.spawn(async move {
                                let mut stream = stream;
                                let _ = tokio::time::timeout(Duration::from_millis(200), async {
                                    stream.write_all(&frame).await?;
                                    stream.shutdown().await
                                })
                                .await;
                                linger_drain(&mut stream).await;
                                drop(p);
                            });
                        }
                        Err(_) => {
                            let _ = stream.try_write(&frame);
                            drop(stream);
                        }
                    }
                    continue;
                }
            };
            let hub = hub.clone();
            let config = config.clone();
            let metrics = metrics.clone();
            let budgets = budgets.clone();
            tracker.spawn(async move {
                let label = peer.to_string();
                let source = Source {
                    label: &label,
                    addr: Some(peer),
                    budgets: Some(&budgets),
                };
                handle_connection(stream, source, hub, &config, &metrics).await;
                drop(permit);
            });
        }
        tracker.close();
        let _ =
            tokio::time::timeout(config.deadline + Duration::from_secs(2), tracker.wait()).await;
        Ok(())
    }
}

/// The hub's side of one exchange over an already connected `stream` (e.g. an enrollment
/// spliced through a relay, `tether_relay::enroll::accept`): reads the Hello within
/// `config.deadline`, answers the Welcome or an error frame, counts the outcome in `metrics`.
/// `peer_label` names the source in logs. The per-address rate limits of [`EnrollServer`] do
/// not apply (the source address is not known here; the relay rate-limits connections per
/// address and pairings per invite), nor does its connection cap: the caller bounds how many
/// it serves at once. The hub core's checks (token MAC, single use, expiry, hooks) all apply.
pub async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer_label: &str,
    hub: Arc<Hub>,
    config: &ServerConfig,
    metrics: &EnrollMetrics,
) {
    let source = Source {
        label: peer_label,
        addr: None,
        budgets: None,
    };
    handle_connection(stream, source, hub, config, metrics).await;
}

/// Where a connection comes from: its label for logs, its address if known, and the
/// listener's budgets when they apply.
struct Source<'a> {
    label: &'a str,
    addr: Option<SocketAddr>,
    budgets: Option<&'a Mutex<Budgets>>,
}

async fn read_hello<S: AsyncRead + Unpin>(stream: &mut S, max_frame: usize) -> Result<Hello> {
    let mut decoder = FrameDecoder::new(max_frame);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if let Some(msg) = decoder.next_message()? {
            return match msg {
                Message::Hello(h) => Ok(h),
                _ => Err(EnrollError::Protocol {
                    what: "expected a Hello".into(),
                }),
            };
        }
        let want = decoder.wanted().min(buf.len());
        let n = stream
            .read(&mut buf[..want])
            .await
            .map_err(|e| EnrollError::Protocol {
                what: format!("read failed: {e}"),
            })?;
        if n == 0 {
            return Err(EnrollError::Protocol {
                what: "the connection closed before a complete Hello".into(),
            });
        }
        decoder.push(&buf[..n])?;
    }
}

async fn handle_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    source: Source<'_>,
    hub: Arc<Hub>,
    config: &ServerConfig,
    metrics: &EnrollMetrics,
) {
    let peer = source.label;
    let ip = source.addr.map(|a| a.ip());
    let started = tokio::time::Instant::now();
    let hello = match tokio::time::timeout(
        config.deadline,
        read_hello(&mut stream, config.max_frame),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(EnrollError::Timeout {
            what: "hello",
            after_ms: u64::try_from(config.deadline.as_millis()).unwrap_or(u64::MAX),
        }),
    };
    // A token holder's attempt: back from the unauthenticated budget to the token holders'
    // one, before the hub reads or writes any state.
    let hello = match (hello, source.addr.zip(source.budgets)) {
        (Ok(hello), Some((addr, budgets))) if hub.authenticates(&hello) => {
            let mut b = budgets.lock().unwrap_or_else(|e| e.into_inner());
            b.any.refund(addr.ip());
            match b.authenticated.check(addr.ip(), std::time::Instant::now()) {
                Ok(()) => Ok(hello),
                Err(wait) => {
                    metrics.rate_limited.inc();
                    Err(EnrollError::RateLimited {
                        retry_after_ms: Some(millis(wait)),
                    })
                }
            }
        }
        (other, _) => other,
    };
    let result = match hello {
        Ok(hello) => {
            let hub2 = hub.clone();
            tokio::task::spawn_blocking(move || hub2.handle_hello(&hello, ip, unix_now()))
                .await
                .unwrap_or_else(|e| {
                    Err(EnrollError::Internal {
                        what: format!("enrollment task failed: {e}"),
                    })
                })
        }
        Err(e) => {
            hub.notify_rejected(ip, &e);
            Err(e)
        }
    };
    let frame = match &result {
        Ok(w) => {
            metrics.attempts.with_label_values(&["enrolled"]).inc();
            tracing::info!(%peer, host = %w.name, ip = %w.overlay_ip, "host enrolled");
            proto::encode_frame(&Message::Welcome(w.clone())).unwrap_or_default()
        }
        Err(e) => {
            metrics.attempts.with_label_values(&[e.code()]).inc();
            // Unauthenticated input: a fixed code and a short escaped excerpt, never the full text.
            tracing::info!(%peer, code = e.code(), error = %crate::rejections::excerpt(&e.to_string()), "enrollment refused");
            proto::error_frame(e)
        }
    };
    let remaining = config
        .deadline
        .saturating_sub(started.elapsed())
        .max(Duration::from_secs(1));
    let _ = tokio::time::timeout(remaining, async {
        stream.write_all(&frame).await?;
        stream.shutdown().await
    })
    .await;
    if result.is_err() {
        linger_drain(&mut stream).await;
    }
}

/// Reads (and discards) what the client still sends for up to 200 ms / 64 KiB, so closing with
/// unread bytes does not reset the connection before the client has read the error frame.
async fn linger_drain<S: AsyncRead + Unpin>(stream: &mut S) {
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        let mut sink = [0u8; 4096];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Options of [`enroll_client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Deadline for connect + exchange (default 10 s).
    pub deadline: Duration,
    /// Largest frame accepted from the hub.
    pub max_frame: usize,
    /// Contact this `host:port` instead of the endpoint in the token (tests, NAT).
    pub endpoint: Option<String>,
    /// The target's WireGuard private key (through the vault), to prove it holds the key it
    /// enrolls with ([`crate::proto::wg_possession_proof`]). `None`: no proof is sent.
    pub wg_key: Option<crate::proto::WgProver>,
    /// Retry refusals for too many attempts from this address (the hub's rate limit or
    /// connection cap) for up to this long from the start, each time after the hub's
    /// retry-after plus an exponential backoff with full jitter (250 ms doubling to 8 s), so a
    /// fleet behind one NAT address spreads out instead of failing. `None` (the default):
    /// the refusal is returned at once. Each attempt still has its own `deadline`.
    pub retry_rate_limited_for: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            deadline: DEFAULT_DEADLINE,
            max_frame: MAX_FRAME,
            endpoint: None,
            wg_key: None,
            retry_rate_limited_for: None,
        }
    }
}

/// The target's side (`tetherd enroll TOKEN`): parses the token (an expired or malformed token
/// fails here, without contacting the hub), sends the public keys, and returns the hub's
/// authenticated [`Welcome`]. Write the config only after this returns `Ok`.
///
/// A first-release hub refuses the versioned Hello in its own way; the exchange is then tried
/// once more in v1 on a new connection, within the same deadline (see [`crate::proto`]).
/// With [`ClientOptions::retry_rate_limited_for`], a rate-limit refusal is retried after a
/// backoff (a refused attempt consumed nothing on the hub).
pub async fn enroll_client(
    token: &Token,
    keys: &TargetKeys,
    opts: &ClientOptions,
) -> Result<Welcome> {
    let started = tokio::time::Instant::now();
    let mut attempt = 0u32;
    loop {
        match enroll_once(token, keys, opts).await {
            Err(EnrollError::RateLimited { retry_after_ms }) => {
                let budget = opts.retry_rate_limited_for.unwrap_or(Duration::ZERO);
                let delay = retry_delay(attempt, retry_after_ms);
                if started.elapsed() + delay >= budget {
                    return Err(EnrollError::RateLimited { retry_after_ms });
                }
                tracing::info!(
                    attempt,
                    delay_ms = millis(delay),
                    "the hub is busy with enrollments from this address; retrying"
                );
                tokio::time::sleep(delay).await;
                attempt = attempt.saturating_add(1);
            }
            done => return done,
        }
    }
}

/// The wait before retry number `attempt` (0-based) after a rate-limit refusal: the hub's
/// retry-after, plus a uniformly random share of an exponential backoff (250 ms × 2^attempt,
/// at most 8 s), so clients refused together come back spread out.
pub fn retry_delay(attempt: u32, retry_after_ms: Option<u64>) -> Duration {
    let cap_ms = 250u64.saturating_mul(1u64 << attempt.min(5)).min(8_000);
    let mut r = [0u8; 8];
    // Without OS randomness the whole backoff is used (still bounded, just not spread).
    let jitter_ms = match getrandom::fill(&mut r) {
        Ok(()) => u64::from_le_bytes(r) % (cap_ms + 1),
        Err(_) => cap_ms,
    };
    Duration::from_millis(retry_after_ms.unwrap_or(0).min(60_000) + jitter_ms)
}

/// The target's side over an already connected `stream` (e.g. to the hub through a relay,
/// `tether_relay::enroll::connect`): like [`enroll_client`] (same Hello, same checks of the
/// hub's Welcome, within `opts.deadline`), but one exchange on this one stream: no fallback to
/// a first-release hub (it would need a new connection; a hub reached this way is of this
/// release) and no retry of rate-limit refusals (`opts.endpoint` only names the hub in
/// errors). Write the config only after this returns `Ok`.
pub async fn enroll_over<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    token: &Token,
    keys: &TargetKeys,
    opts: &ClientOptions,
) -> Result<Welcome> {
    let (mut session, hello) = start_session(token, keys, opts)?;
    within_deadline(opts, exchange_on(&mut stream, &hello, &mut session)).await
}

fn start_session(
    token: &Token,
    keys: &TargetKeys,
    opts: &ClientOptions,
) -> Result<(TargetSession, Vec<u8>)> {
    TargetSession::start_proving(
        token,
        keys,
        opts.wg_key.as_ref().map(|p| &*p.0),
        unix_now(),
        opts.max_frame,
        opts.endpoint.as_deref(),
    )
}

async fn within_deadline(
    opts: &ClientOptions,
    exchange: impl std::future::Future<Output = Result<Welcome>>,
) -> Result<Welcome> {
    let after_ms = u64::try_from(opts.deadline.as_millis()).unwrap_or(u64::MAX);
    tokio::time::timeout(opts.deadline, exchange)
        .await
        .unwrap_or(Err(EnrollError::Timeout {
            what: "exchange with the hub",
            after_ms,
        }))
}

/// One enrollment within `opts.deadline`, with the v1 fallback.
async fn enroll_once(token: &Token, keys: &TargetKeys, opts: &ClientOptions) -> Result<Welcome> {
    let (mut session, hello) = start_session(token, keys, opts)?;
    let endpoint = session.endpoint().to_string();
    let exchange = async {
        let mut hello = hello;
        loop {
            match exchange_once(&endpoint, &hello, &mut session).await {
                Err(e) => match session.fallback_to_v1()? {
                    Some(v1) => {
                        tracing::info!(
                            %endpoint,
                            "the hub is of the first release (enrollment protocol v1); retrying in v1"
                        );
                        hello = v1;
                    }
                    None => return Err(e),
                },
                done => return done,
            }
        }
    };
    within_deadline(opts, exchange).await
}

/// One connection: sends `hello`, feeds the answer to `session`.
async fn exchange_once(
    endpoint: &str,
    hello: &[u8],
    session: &mut TargetSession,
) -> Result<Welcome> {
    let mut stream = TcpStream::connect(endpoint)
        .await
        .map_err(|source| EnrollError::Connect {
            endpoint: endpoint.to_string(),
            source,
        })?;
    exchange_on(&mut stream, hello, session).await
}

/// On a connected stream: sends `hello`, feeds the answer to `session`.
async fn exchange_on<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    hello: &[u8],
    session: &mut TargetSession,
) -> Result<Welcome> {
    let sent = async {
        stream.write_all(hello).await?;
        stream.flush().await
    };
    sent.await.map_err(|e| EnrollError::Protocol {
        what: format!("sending the Hello failed: {e}"),
    })?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let want = session.wanted().min(buf.len());
        let n = stream
            .read(&mut buf[..want])
            .await
            .map_err(|e| EnrollError::Protocol {
                what: format!("reading the hub's answer failed: {e}"),
            })?;
        if n == 0 {
            return Err(EnrollError::Protocol {
                what: "the hub closed the connection without an answer".into(),
            });
        }
        if let Some(w) = session.receive(&buf[..n])? {
            return Ok(w);
        }
    }
}
