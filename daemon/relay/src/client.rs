//! The client side: what a hub or target uses to reach peers through a relay.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::RelayError;
use crate::proto::{Decoder, Frame, Key, MAX_DATAGRAM, client_proof, proofs_match, relay_proof};

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

/// A connection to a relay, authenticated with our WireGuard key.
#[derive(Debug)]
pub struct RelayClient {
    out: mpsc::Sender<Frame>,
    incoming: mpsc::Receiver<Incoming>,
    /// Bytes per second the relay grants us, and the burst.
    pub budget: (u32, u32),
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RelayClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn read_frame(tls: &mut Tls, decoder: &mut Decoder) -> Result<Frame, RelayError> {
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
        tokio::time::timeout(timeout, Self::connect_inner(target, secret))
            .await
            .map_err(|_| RelayError::Timeout("connecting to the relay"))?
    }

    async fn connect_inner(
        target: &RelayTarget,
        secret: &x25519_dalek::StaticSecret,
    ) -> Result<RelayClient, RelayError> {
        let cfg = crate::tls::client_config(&target.cert_sha256)?;
        let tcp = TcpStream::connect(&target.addr).await?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(target.server_name.clone())
            .map_err(|e| RelayError::Tls(format!("server name {:?}: {e}", target.server_name)))?;
        let mut tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await?;
        tls.write_all(
            format!(
                "GET /relay HTTP/1.1\r\nhost: {}\r\nupgrade: tether-relay/1\r\nconnection: upgrade\r\n\r\n",
                target.server_name
            )
            .as_bytes(),
        )
        .await?;
        tls.flush().await?;
        // The 101 head, then frames.
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
        if !head.starts_with(b"HTTP/1.1 101") {
            let line = String::from_utf8_lossy(&head[..end]);
            return Err(RelayError::Refused(
                line.lines().next().unwrap_or("").to_owned(),
            ));
        }
        let mut decoder = Decoder::new();
        decoder.push(&head[end..]);
        let Frame::ServerHello { nonce, relay_key } = read_frame(&mut tls, &mut decoder).await?
        else {
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
        let (out, out_rx) = mpsc::channel(256);
        let (in_tx, incoming) = mpsc::channel(256);
        let task = tokio::spawn(run(tls, decoder, out_rx, in_tx));
        Ok(RelayClient {
            out,
            incoming,
            budget,
            task,
        })
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
        self.out
            .send(Frame::Send {
                dst,
                data: data.to_vec(),
            })
            .await
            .map_err(|_| RelayError::Protocol("the relay connection is closed".into()))
    }

    /// The next thing from the relay; `None` once the connection is gone.
    pub async fn recv(&mut self) -> Option<Incoming> {
        self.incoming.recv().await
    }
}

async fn run(
    mut tls: Tls,
    mut decoder: Decoder,
    mut out: mpsc::Receiver<Frame>,
    incoming: mpsc::Sender<Incoming>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut ping = tokio::time::interval(Duration::from_secs(15));
    loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(Frame::Recv { src, data })) => {
                    if incoming.try_send(Incoming::Datagram { src, data }).is_err() {
                        // A slow reader loses datagrams, as with UDP.
                    }
                }
                Ok(Some(Frame::GoingAway)) => {
                    let _ = incoming.send(Incoming::GoingAway).await;
                    return;
                }
                Ok(Some(Frame::Ping)) => {
                    if tls.write_all(&Frame::Pong.encode()).await.is_err() {
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
                if tls.write_all(&f.encode()).await.is_err() {
                    return;
                }
                while let Ok(f) = out.try_recv() {
                    if tls.write_all(&f.encode()).await.is_err() {
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
                    Ok(n) => decoder.push(&buf[..n]),
                }
            }
            _ = ping.tick() => {
                if tls.write_all(&Frame::Ping.encode()).await.is_err() || tls.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}
