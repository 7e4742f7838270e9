//! The client side: what a hub or target uses to reach peers through a relay.

use std::time::Duration;

use std::collections::VecDeque;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use tokio::sync::{mpsc, oneshot};

use crate::RelayError;
use crate::proto::{
    Decoder, Frame, Key, MAX_DATAGRAM, MAX_SET_KEYS, chunked, client_proof, proofs_match,
    relay_proof,
};

/// A connection that received nothing for this long sends a Ping (the relay answers each).
pub const PING_EVERY: Duration = Duration::from_millis(1500);
/// A connection that received nothing at all for this long is given up (a relay host that
/// vanished without closing the connection): the tunnel moves its peers to another relay.
pub const DEAD_AFTER: Duration = Duration::from_secs(4);

/// Where a relay is and how it is recognised.
#[derive(Debug, Clone)]
pub struct RelayTarget {
    /// `host:port` to connect to.
    pub addr: String,
    /// TLS server name (SNI); any name works with a pinned certificate.
    pub server_name: String,
    /// Hex SHA-256 of the relay's TLS certificate.
    pub cert_sha256: String,
    /// The relay's X25519 public key (it must prove it holds the secret).
    pub relay_key: Key,
}

/// What arrives from the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A datagram from `src`.
    Datagram {
        /// The sender's WireGuard key.
        src: Key,
        /// The datagram.
        data: Vec<u8>,
    },
    /// The relay is going away (shutdown, or this key connected again elsewhere): switch path.
    GoingAway,
}

/// What the connection task hands up (a superset of [`Incoming`], so that type stays as the
/// tunnel driver knows it).
#[derive(Debug)]
pub(crate) enum Event {
    Datagram { src: Key, data: Vec<u8> },
    GoingAway,
    EnrollOpen { session: u64 },
}

/// What is handed to the connection task.
#[derive(Debug)]
pub(crate) enum Out {
    /// One frame, no answer expected.
    Frame(Frame),
    /// The chunks of a set; the relay's [`Frame::Ack`] (or refusal) answers on the channel.
    Set(Vec<Frame>, oneshot::Sender<Result<u32, RelayError>>),
}

/// A connection to a relay, authenticated with our WireGuard key.
#[derive(Debug)]
pub struct RelayClient {
    conn: Conn,
    /// Bytes per second the relay grants us, and the burst.
    pub budget: (u32, u32),
}

/// An authenticated framed connection and its task.
#[derive(Debug)]
pub(crate) struct Conn {
    out: mpsc::Sender<Out>,
    pub(crate) incoming: mpsc::Receiver<Event>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    /// Sends a set in chunks and waits for the relay to apply it.
    pub(crate) async fn send_set(&self, frames: Vec<Frame>) -> Result<u32, RelayError> {
        let (tx, rx) = oneshot::channel();
        self.out
            .send(Out::Set(frames, tx))
            .await
            .map_err(|_| closed())?;
        rx.await.map_err(|_| {
            RelayError::Protocol("the relay closed the connection before applying the set".into())
        })?
    }
}

fn closed() -> RelayError {
    RelayError::Protocol("the relay connection is closed".into())
}

/// Checks a set's size before sending it (the relay would close the connection).
pub(crate) fn check_set_size(n: usize) -> Result<(), RelayError> {
    if n > MAX_SET_KEYS {
        return Err(RelayError::Protocol(format!(
            "a set of {n} entries; the relay takes at most {MAX_SET_KEYS}"
        )));
    }
    Ok(())
}

pub(crate) type Tls = tokio_rustls::client::TlsStream<TcpStream>;

pub(crate) async fn read_frame(tls: &mut Tls, decoder: &mut Decoder) -> Result<Frame, RelayError> {
    loop {
        if let Some(f) = decoder.next_frame()? {
            return Ok(f);
        }
        let mut buf = [0u8; 4096];
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            return Err(RelayError::Protocol(
                "the relay closed the connection".into(),
            ));
        }
        decoder.push(&buf[..n]);
    }
}

impl RelayClient {
    /// Connects, upgrades, proves our key and checks the relay's proof; `timeout` bounds all of
    /// it.
    pub async fn connect(
        target: &RelayTarget,
        secret: &x25519_dalek::StaticSecret,
        timeout: Duration,
    ) -> Result<RelayClient, RelayError> {
        tokio::time::timeout(timeout, async {
            let (tls, decoder, budget) = handshake(target, secret, "/relay").await?;
            Ok(RelayClient {
                conn: Conn::spawn(tls, decoder),
                budget,
            })
        })
        .await
        .map_err(|_| RelayError::Timeout("connecting to the relay"))?
    }

    /// Sends one datagram to `dst` (dropped by the relay if `dst` is not connected or we are
    /// over budget, like UDP).
    pub async fn send(&self, dst: Key, data: &[u8]) -> Result<(), RelayError> {
        if data.len() > MAX_DATAGRAM {
            return Err(RelayError::Protocol(format!(
                "a datagram of {} bytes; the limit is {MAX_DATAGRAM}",
                data.len()
            )));
        }
        self.conn
            .out
            .send(Out::Frame(Frame::Send {
                dst,
                data: data.to_vec(),
            }))
            .await
            .map_err(|_| closed())
    }

    /// Admin keys only (the hubs, [`crate::RelayConfig::admin_keys`]): replaces the set of keys
    /// this hub allows on the relay with `keys` (at most [`MAX_SET_KEYS`]), and returns once the
    /// relay applied it. Keys it no longer allows (and nobody else does) are disconnected at
    /// once. The relay keeps the set in memory across this hub's reconnects until replaced.
    /// From a key that is not an admin key the relay refuses it and closes the connection
    /// ([`RelayError::Refused`]).
    pub async fn set_allowed(&self, keys: Vec<Key>) -> Result<(), RelayError> {
        check_set_size(keys.len())?;
        let frames = chunked(&keys, |first, last, keys| Frame::AllowSet {
            first,
            last,
            keys,
        });
        self.conn.send_set(frames).await.map(|_| ())
    }

    /// The next thing from the relay; `None` once the connection is gone.
    pub async fn recv(&mut self) -> Option<Incoming> {
        loop {
            return match self.conn.incoming.recv().await? {
                Event::Datagram { src, data } => Some(Incoming::Datagram { src, data }),
                Event::GoingAway => Some(Incoming::GoingAway),
                Event::EnrollOpen { .. } => continue,
            };
        }
    }
}

/// Reads an HTTP answer head: the bytes past it if it is a 101, else a refusal with its status
/// line and body.
pub(crate) async fn read_upgrade(tls: &mut Tls) -> Result<Vec<u8>, RelayError> {
    let mut head = Vec::new();
    let end = loop {
        let mut b = [0u8; 512];
        let n = tls.read(&mut b).await?;
        if n == 0 {
            return Err(RelayError::Protocol("closed during the upgrade".into()));
        }
        head.extend_from_slice(&b[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > 8192 {
            return Err(RelayError::Protocol("upgrade answer over 8 KiB".into()));
        }
    };
    if head.starts_with(b"HTTP/1.1 101") {
        return Ok(head[end..].to_vec());
    }
    // The refusal's body (short, text) says why.
    let mut body = head[end..].to_vec();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let mut b = [0u8; 512];
        while body.len() < 1024 {
            match tls.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&b[..n]),
            }
        }
    })
    .await;
    let status = String::from_utf8_lossy(&head[..end]);
    let status = status
        .lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("HTTP/1.1 ");
    let body = String::from_utf8_lossy(&body);
    Err(RelayError::Refused(format!("{status}: {}", body.trim())))
}

/// TLS with the pinned certificate, then the HTTP/1.1 request `head` (without the final blank
/// line) to `target`.
pub(crate) async fn open(target: &RelayTarget, request: &str) -> Result<Tls, RelayError> {
    let cfg = crate::tls::client_config(&target.cert_sha256)?;
    let tcp = TcpStream::connect(&target.addr).await?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(target.server_name.clone())
        .map_err(|e| RelayError::Tls(format!("server name {:?}: {e}", target.server_name)))?;
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await?;
    tls.write_all(format!("{request}host: {}\r\n\r\n", target.server_name).as_bytes())
        .await?;
    tls.flush().await?;
    Ok(tls)
}

/// Upgrades `path` to frames and proves our key; returns the connection, what was read past the
/// Welcome, and the budget.
pub(crate) async fn handshake(
    target: &RelayTarget,
    secret: &x25519_dalek::StaticSecret,
    path: &str,
) -> Result<(Tls, Decoder, (u32, u32)), RelayError> {
    let mut tls = open(
        target,
        &format!("GET {path} HTTP/1.1\r\nupgrade: tether-relay/1\r\nconnection: upgrade\r\n"),
    )
    .await?;
    let rest = read_upgrade(&mut tls).await?;
    let mut decoder = Decoder::new();
    decoder.push(&rest);
    let Frame::ServerHello { nonce, relay_key } = read_frame(&mut tls, &mut decoder).await? else {
        return Err(RelayError::Protocol("expected ServerHello".into()));
    };
    if relay_key != target.relay_key {
        return Err(RelayError::WrongRelay(target.addr.clone()));
    }
    let me = x25519_dalek::PublicKey::from(secret).to_bytes();
    let mut my_nonce = [0u8; 32];
    getrandom::fill(&mut my_nonce).map_err(|e| RelayError::Protocol(e.to_string()))?;
    tls.write_all(
        &Frame::ClientAuth {
            key: me,
            nonce: my_nonce,
            proof: client_proof(secret, &relay_key, &nonce, &my_nonce, &me),
        }
        .encode(),
    )
    .await?;
    tls.flush().await?;
    let budget = match read_frame(&mut tls, &mut decoder).await? {
        Frame::Welcome { proof, rate, burst } => {
            let want = relay_proof(secret, &relay_key, &nonce, &my_nonce, &me);
            if !proofs_match(&proof, &want) {
                return Err(RelayError::WrongRelay(target.addr.clone()));
            }
            (rate, burst)
        }
        Frame::Refused { reason } => return Err(RelayError::Refused(reason)),
        other => {
            return Err(RelayError::Protocol(format!(
                "expected Welcome, got {other:?}"
            )));
        }
    };
    Ok((tls, decoder, budget))
}

impl Conn {
    pub(crate) fn spawn(tls: Tls, decoder: Decoder) -> Conn {
        let (out, out_rx) = mpsc::channel(256);
        let (in_tx, incoming) = mpsc::channel(256);
        let task = tokio::spawn(run(tls, decoder, out_rx, in_tx));
        Conn {
            out,
            incoming,
            task,
        }
    }
}

async fn write_out(
    tls: &mut Tls,
    o: Out,
    acks: &mut VecDeque<oneshot::Sender<Result<u32, RelayError>>>,
) -> std::io::Result<()> {
    match o {
        Out::Frame(f) => tls.write_all(&f.encode()).await,
        Out::Set(frames, ack) => {
            acks.push_back(ack);
            for f in frames {
                tls.write_all(&f.encode()).await?;
            }
            Ok(())
        }
    }
}

async fn run(
    mut tls: Tls,
    mut decoder: Decoder,
    mut out: mpsc::Receiver<Out>,
    incoming: mpsc::Sender<Event>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A relay whose host vanished (no FIN, no RST) is noticed by silence, not by the kernel's
    // TCP timeout minutes later: the relay answers every Ping.
    let mut last_rx = tokio::time::Instant::now();
    // Sets sent and not yet applied, oldest first (the relay answers in order).
    let mut acks: VecDeque<oneshot::Sender<Result<u32, RelayError>>> = VecDeque::new();
    loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(Frame::Recv { src, data })) => {
                    if incoming.try_send(Event::Datagram { src, data }).is_err() {
                        // A slow reader loses datagrams, as with UDP.
                    }
                }
                Ok(Some(Frame::GoingAway)) => {
                    let _ = incoming.send(Event::GoingAway).await;
                    return;
                }
                Ok(Some(Frame::Ack { count })) => {
                    if let Some(ack) = acks.pop_front() {
                        let _ = ack.send(Ok(count));
                    }
                }
                Ok(Some(Frame::Refused { reason })) => {
                    if let Some(ack) = acks.pop_front() {
                        let _ = ack.send(Err(RelayError::Refused(reason)));
                    }
                    return;
                }
                Ok(Some(Frame::EnrollOpen { session })) => {
                    // Announcements are not dropped: the listener's owner reads them.
                    if incoming.send(Event::EnrollOpen { session }).await.is_err() {
                        return;
                    }
                }
                Ok(Some(Frame::Ping)) => {
                    if tls.write_all(&Frame::Pong.encode()).await.is_err()
                        || tls.flush().await.is_err()
                    {
                        return;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        tokio::select! {
            f = out.recv() => {
                let Some(f) = f else {
                    let _ = tls.shutdown().await;
                    return;
                };
                if write_out(&mut tls, f, &mut acks).await.is_err() {
                    return;
                }
                while let Ok(f) = out.try_recv() {
                    if write_out(&mut tls, f, &mut acks).await.is_err() {
                        return;
                    }
                }
                if tls.flush().await.is_err() {
                    return;
                }
            }
            n = tls.read(&mut buf) => {
                match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        last_rx = tokio::time::Instant::now();
                        decoder.push(&buf[..n]);
                    }
                }
            }
            _ = ping.tick() => {
                let quiet = last_rx.elapsed();
                if quiet >= DEAD_AFTER {
                    tracing::warn!(quiet_ms = quiet.as_millis() as u64, "the relay stopped answering; dropping the connection");
                    return;
                }
                if quiet >= PING_EVERY
                    && (tls.write_all(&Frame::Ping.encode()).await.is_err() || tls.flush().await.is_err())
                {
                    return;
                }
            }
        }
    }
}
