//! The relay over real TLS on 127.0.0.1: forwarding between allowed keys, every refusal the
//! issue names (unknown key, a client claiming another's key, TLS below 1.3, oversized frames,
//! connection floods, over-budget senders), the allowlist re-read, health and metrics, and
//! going away on shutdown. Certificates come from the `openssl` CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tether_relay::client::Incoming;
use tether_relay::proto::{Decoder, Frame, client_proof};
use tether_relay::{Relay, RelayClient, RelayConfig, RelayError, RelayTarget};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use x25519_dalek::StaticSecret;

mod common;
use common::{b64, cert, key};

struct Setup {
    _dir: tempfile::TempDir,
    allowlist: std::path::PathBuf,
    relay: Relay,
    target: RelayTarget,
}

async fn setup(allowed: &[&StaticSecret], rate: u32, burst: u32) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem) = cert(dir.path());
    let allowlist = dir.path().join("allowed-keys");
    let text: String = allowed
        .iter()
        .map(|s| format!("{}  # a peer\n", b64(&key(s))))
        .collect();
    std::fs::write(&allowlist, format!("# allowed WireGuard keys\n{text}")).unwrap();
    let relay = Relay::start(RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: tether_relay::tls::server_config(&cert_pem, &key_pem).unwrap(),
        secret: StaticSecret::from([7u8; 32]),
        allowlist: allowlist.clone(),
        rate,
        burst,
        conn_rate: (5, 10),
        metrics_token: Some("s3cret-token".into()),
        admin_keys: Vec::new(),
        enroll: Default::default(),
    })
    .await
    .unwrap();
    let target = RelayTarget {
        addr: relay.local_addr().to_string(),
        server_name: "relay.test".into(),
        cert_sha256: tether_relay::tls::cert_sha256(&cert_pem).unwrap(),
        relay_key: relay.public_key(),
    };
    Setup {
        _dir: dir,
        allowlist,
        relay,
        target,
    }
}

/// How long a test waits for something that must happen: far beyond what it takes on a loaded
/// machine (milliseconds), so only a real failure runs into it.
const PATIENCE: Duration = Duration::from_secs(30);

async fn connect(t: &RelayTarget, s: &StaticSecret) -> Result<RelayClient, RelayError> {
    RelayClient::connect(t, s, PATIENCE).await
}

async fn next(c: &mut RelayClient) -> Option<Incoming> {
    tokio::time::timeout(PATIENCE, c.recv())
        .await
        .ok()
        .flatten()
}

/// Waits until `what` holds (checked every 10 ms), for at most [`PATIENCE`]; false if it never
/// did.
async fn eventually(mut what: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !what() {
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_keys_exchange_datagrams_and_unknown_or_forged_keys_are_refused() {
    let (a, b, c) = (
        StaticSecret::from([1u8; 32]),
        StaticSecret::from([2u8; 32]),
        StaticSecret::from([3u8; 32]),
    );
    let s = setup(&[&a, &b], 10_000_000, 10_000_000).await;
    let mut ca = connect(&s.target, &a).await.unwrap();
    let mut cb = connect(&s.target, &b).await.unwrap();
    assert_eq!(ca.budget, (10_000_000, 10_000_000));
    // The relay welcomes a key before it routes to it; a datagram sent in between is dropped
    // like a UDP packet to an absent peer. So wait until both keys are routed.
    let connected = || {
        s.relay
            .stats()
            .connected
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert!(eventually(|| connected() == 2).await, "{}", connected());
    ca.send(key(&b), b"wireguard ciphertext").await.unwrap();
    assert_eq!(
        next(&mut cb).await,
        Some(Incoming::Datagram {
            src: key(&a),
            data: b"wireguard ciphertext".to_vec()
        })
    );
    cb.send(key(&a), &[9u8; 1420]).await.unwrap();
    assert!(
        matches!(next(&mut ca).await, Some(Incoming::Datagram { data, .. }) if data.len() == 1420)
    );

    // A key not in the allowlist.
    match connect(&s.target, &c).await {
        Err(RelayError::Refused(why)) => assert!(why.contains("allowlist"), "{why}"),
        other => panic!("{other:?}"),
    }
    // C claiming A's key: the proof is made with C's secret.
    let forged = raw_auth(&s.target, key(&a), &c).await;
    assert!(
        matches!(forged, Frame::Refused { ref reason } if reason.contains("proof")),
        "{forged:?}"
    );
    // A relay with another key: the client refuses it.
    let mut wrong = s.target.clone();
    wrong.relay_key = [0u8; 32];
    assert!(matches!(
        connect(&wrong, &a).await,
        Err(RelayError::WrongRelay(_))
    ));
    // A certificate other than the pinned one.
    let mut pinned = s.target.clone();
    pinned.cert_sha256 = "00".repeat(32);
    assert!(connect(&pinned, &a).await.is_err());
    // Nothing forwarded to an unconnected key, counted.
    ca.send(key(&c), b"x").await.unwrap();
    let dropped = || {
        s.relay
            .stats()
            .dropped_no_route
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert!(eventually(|| dropped() >= 1).await, "{}", dropped());
    assert_eq!(connected(), 2);
}

/// A hand-made handshake announcing `claimed` but proving with `secret`; returns the relay's
/// answer.
async fn raw_auth(t: &RelayTarget, claimed: [u8; 32], secret: &StaticSecret) -> Frame {
    let cfg = tether_relay::tls::client_config(&t.cert_sha256).unwrap();
    let tcp = tokio::net::TcpStream::connect(&t.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect("relay.test".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /relay HTTP/1.1\r\nhost: x\r\nupgrade: tether-relay/1\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut d = Decoder::new();
    let mut head_done = false;
    let mut hello = None;
    loop {
        let mut b = [0u8; 4096];
        let n = tls.read(&mut b).await.unwrap();
        assert!(n > 0, "closed");
        got.extend_from_slice(&b[..n]);
        if !head_done && let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            d.push(&got[i + 4..]);
            head_done = true;
        } else if head_done {
            d.push(&b[..n]);
        }
        while let Some(f) = d.next_frame().unwrap() {
            match (f, hello) {
                (Frame::ServerHello { nonce, relay_key }, None) => {
                    hello = Some(nonce);
                    let cn = [5u8; 32];
                    let proof = client_proof(secret, &relay_key, &nonce, &cn, &claimed);
                    tls.write_all(
                        &Frame::ClientAuth {
                            key: claimed,
                            nonce: cn,
                            proof,
                        }
                        .encode(),
                    )
                    .await
                    .unwrap();
                }
                (f, Some(_)) => return f,
                (f, None) => panic!("{f:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_floods_oversized_frames_tls12_health_metrics_reload_and_going_away() {
    let (a, b) = (StaticSecret::from([1u8; 32]), StaticSecret::from([2u8; 32]));
    // 10 KB/s with a 10 KB burst.
    let s = setup(&[&a, &b], 10_000, 10_000).await;
    let ca = connect(&s.target, &a).await.unwrap();
    let mut cb = connect(&s.target, &b).await.unwrap();
    for _ in 0..50 {
        ca.send(key(&b), &[1u8; 1000]).await.unwrap();
    }
    let mut received = 0;
    while let Ok(Some(Incoming::Datagram { .. })) =
        tokio::time::timeout(Duration::from_millis(500), cb.recv()).await
    {
        received += 1;
    }
    assert!(
        (10..=12).contains(&received),
        "{received} of 50 within the budget"
    );
    let st = s.relay.stats();
    assert!(st.dropped_budget.load(std::sync::atomic::Ordering::Relaxed) >= 38);

    // TLS 1.2 is refused.
    // (tokio's process API: the relay runs on this test's runtime and must keep serving.)
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new("openssl")
            .args(["s_client", "-tls1_2", "-connect"])
            .arg(s.target.addr.clone())
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("openssl s_client hung")
    .unwrap();
    assert!(!out.status.success(), "a TLS 1.2 handshake succeeded");

    // An oversized frame closes the connection.
    let mut raw = raw_upgraded(&s.target).await;
    raw.write_all(&[5, 0xff, 0xff]).await.unwrap();
    let mut b = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match raw.read(&mut b).await {
                Ok(0) | Err(_) => break true,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(
        closed,
        "the relay kept a connection that sent an oversized frame"
    );

    // Health, and metrics only with the bearer token.
    let get = |path: &'static str, auth: Option<&'static str>| {
        let t = s.target.clone();
        async move {
            let cfg = tether_relay::tls::client_config(&t.cert_sha256).unwrap();
            let tcp = tokio::net::TcpStream::connect(&t.addr).await.unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(cfg)
                .connect("relay.test".try_into().unwrap(), tcp)
                .await
                .unwrap();
            let auth = auth
                .map(|a| format!("authorization: Bearer {a}\r\n"))
                .unwrap_or_default();
            tls.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n{auth}\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = Vec::new();
            let _ = tls.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    assert!(get("/healthz", None).await.starts_with("HTTP/1.1 200"));
    assert!(get("/metrics", None).await.starts_with("HTTP/1.1 401"));
    assert!(
        get("/metrics", Some("wrong"))
            .await
            .starts_with("HTTP/1.1 401")
    );
    let m = get("/metrics", Some("s3cret-token")).await;
    assert!(m.contains("tether_relay_connected_keys 2"), "{m}");

    // A flood of connections from one address: beyond the burst they are dropped at once.
    let before = st.refused.load(std::sync::atomic::Ordering::Relaxed);
    let mut socks = Vec::new();
    for _ in 0..30 {
        socks.push(
            tokio::net::TcpStream::connect(&s.target.addr)
                .await
                .unwrap(),
        );
    }
    // Counted in the accept loop; wait for it (at most 2 s) rather than a fixed time.
    let count = || st.refused.load(std::sync::atomic::Ordering::Relaxed) - before;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while count() < 15 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused = count();
    assert!(
        refused >= 15,
        "only {refused} of 30 flood connections refused"
    );
    drop(socks);

    // B removed from the allowlist: disconnected without a restart.
    std::fs::write(&s.allowlist, format!("{}\n", b64(&key(&a)))).unwrap();
    match tokio::time::timeout(Duration::from_secs(5), cb.recv()).await {
        Ok(Some(Incoming::GoingAway) | None) => {}
        other => panic!("B still connected: {other:?}"),
    }

    // Shutdown: A is told the relay is going away.
    let mut ca = ca;
    s.relay.shutdown().await;
    assert_eq!(next(&mut ca).await, Some(Incoming::GoingAway));
}

async fn raw_upgraded(t: &RelayTarget) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let cfg = tether_relay::tls::client_config(&t.cert_sha256).unwrap();
    let tcp = tokio::net::TcpStream::connect(&t.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect("relay.test".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /relay HTTP/1.1\r\nhost: x\r\nupgrade: tether-relay/1\r\n\r\n")
        .await
        .unwrap();
    tls
}

/// Copies `r` to `w` until the flag is set; then holds both open and forwards nothing more.
async fn pump(
    mut r: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    mut w: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
    hole: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if hole.load(std::sync::atomic::Ordering::SeqCst) {
            let _keep = (r, w);
            std::future::pending::<()>().await;
            return;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A TCP middlebox on 127.0.0.1 in front of the relay that can start blackholing: it keeps
/// both connections open but forwards nothing more, as when the relay's host vanishes (no FIN,
/// no RST reaches the client).
async fn blackholing_proxy(
    relay: std::net::SocketAddr,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::AtomicBool;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let hole = std::sync::Arc::new(AtomicBool::new(false));
    let flag = hole.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(relay).await.unwrap();
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(Box::new(cr), Box::new(sw), flag.clone()));
            tokio::spawn(pump(Box::new(sr), Box::new(cw), flag.clone()));
        }
    });
    (addr, hole)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_goes_silent_is_given_up_and_a_healthy_idle_one_is_kept() {
    use tether_relay::client::{DEAD_AFTER, PING_EVERY};
    let (a, b) = (StaticSecret::from([1u8; 32]), StaticSecret::from([2u8; 32]));
    let s = setup(&[&a, &b], 10_000_000, 10_000_000).await;
    let (proxy, hole) = blackholing_proxy(s.relay.local_addr()).await;
    let mut via_proxy = s.target.clone();
    via_proxy.addr = proxy;
    let mut ca = connect(&via_proxy, &a).await.unwrap();
    let mut cb = connect(&s.target, &b).await.unwrap();
    // Idle past DEAD_AFTER: the pings are answered, so the connection stays and still works.
    tokio::time::sleep(DEAD_AFTER + PING_EVERY).await;
    ca.send(key(&b), b"still here").await.unwrap();
    assert!(matches!(
        next(&mut cb).await,
        Some(Incoming::Datagram { .. })
    ));
    // The relay's host "vanishes": the client notices by silence, not minutes later.
    hole.store(true, std::sync::atomic::Ordering::SeqCst);
    let started = std::time::Instant::now();
    let gone = tokio::time::timeout(DEAD_AFTER + PING_EVERY * 2, ca.recv()).await;
    assert!(matches!(gone, Ok(None)), "{gone:?}");
    let took = started.elapsed();
    eprintln!("a silent relay was given up after {took:?}");
    // Not at once: only after the silence reached DEAD_AFTER (the last answer came at most
    // two ping periods before the blackhole).
    assert!(
        took >= DEAD_AFTER.saturating_sub(PING_EVERY * 2),
        "{took:?}"
    );
}
