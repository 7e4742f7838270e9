//! Enrollment costs, each next to a baseline measured in the same run:
//!
//! * `token/parse` (baseline) vs `token/parse_and_verify`: what the hub's HMAC check adds.
//! * `hub/inventory_rewrite` (baseline: one durable atomic rewrite of hosts.json) vs
//!   `hub/handle_hello` (authenticate + consume the nonce + record the host: two durable rewrites).
//! * `tcp/connect_roundtrip` (baseline: TCP connect + one small request/response on loopback)
//!   vs `tcp/enroll`: a whole enrollment through `EnrollServer` and `enroll_client`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tether_enroll::proto::{Hello, Message};
use tether_enroll::*;
use tether_vault::SecretBox;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HUB_SSH: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHSiLAhIitvRcOWt6XdNo4ie+uPb05kkFXj8cXyl7xQr hub";
const TARGET_SSH: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINXREtEmFoLqswjEYtVLvVkJE5oD6KZMNLVQeaadzZGH a";

fn identity(endpoint: &str) -> HubIdentity {
    HubIdentity {
        enroll_endpoint: endpoint.into(),
        wg_public: [7u8; 32],
        wg_endpoint: "127.0.0.1:51820".into(),
        ssh_client_public: HUB_SSH.into(),
        relays: Vec::new(),
    }
}

fn hub(dir: &std::path::Path, endpoint: &str) -> Hub {
    Hub::open(
        dir,
        identity(endpoint),
        SecretBox::from_slice(&[9u8; 32]).unwrap(),
        OverlayNet::default(),
    )
    .unwrap()
}

fn req(name: &str) -> InviteRequest {
    InviteRequest {
        name: name.into(),
        tags: BTreeMap::from([("env".into(), "prod".into())]),
        groups: vec!["web".into()],
        ttl_secs: 3600,
    }
}

fn keys() -> TargetKeys {
    TargetKeys {
        wg_public: [3u8; 32],
        ssh_host_key: TARGET_SSH.into(),
        hostname: "bench".into(),
        ssh_user: None,
    }
}

fn hello_for(token: &Token) -> Hello {
    let (_, frame) =
        TargetSession::start(token, &keys(), unix_now(), proto::MAX_FRAME, None).unwrap();
    match serde_json::from_slice(&frame[4..]).unwrap() {
        Message::Hello(h) => h,
        _ => unreachable!(),
    }
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let h = hub(dir.path(), "127.0.0.1:1");
    let (token, _) = h.invite(&req("tok1"), unix_now()).unwrap();
    let text = token.expose(str::to_string);
    let key = SecretBox::from_slice(&[9u8; 32]).unwrap();
    let now = unix_now();

    let mut g = c.benchmark_group("token");
    g.bench_function("parse", |b| b.iter(|| parse_token(&text).unwrap()));
    g.bench_function("parse_and_verify", |b| {
        b.iter(|| {
            parse_token(&text)
                .unwrap()
                .verify(&key, h.hub_id(), now)
                .unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("hub");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    let inv_dir = tempfile::tempdir().unwrap();
    let inv = Inventory::open(inv_dir.path()).unwrap();
    inv.insert(HostRecord {
        name: "base1".into(),
        overlay_ip: "10.99.0.2".parse().unwrap(),
        wg_public_key: "k".repeat(44),
        ssh_host_key: TARGET_SSH.into(),
        hostname: "bench".into(),
        tags: BTreeMap::new(),
        groups: vec![],
        enrolled_at: 0,
        last_seen: None,
        state: HostState::Active,
        revoked_at: None,
        ssh_user: None,
    })
    .unwrap();
    g.bench_function("inventory_rewrite", |b| {
        b.iter(|| inv.mark_revoked("base1", 1).unwrap())
    });
    let hdir = tempfile::tempdir().unwrap();
    let hh = hub(hdir.path(), "127.0.0.1:1");
    let mut n = 0u64;
    g.bench_function("handle_hello", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let name = format!("h{n}");
                let (t, _) = hh.invite(&req(&name), unix_now()).unwrap();
                let hello = hello_for(&t);
                let start = Instant::now();
                hh.handle_hello(&hello, None, unix_now()).unwrap();
                total += start.elapsed();
                hh.remove_host(&name, unix_now()).unwrap();
            }
            total
        })
    });
    g.finish();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("tcp");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    // Baseline: a loopback echo server, one connect + 600-byte request + 600-byte answer.
    let echo = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 600];
                    if s.read_exact(&mut buf).await.is_ok() {
                        let _ = s.write_all(&buf).await;
                    }
                });
            }
        });
        addr
    });
    g.bench_function("connect_roundtrip", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut s = tokio::net::TcpStream::connect(echo).await.unwrap();
                s.write_all(&[1u8; 600]).await.unwrap();
                let mut buf = [0u8; 600];
                s.read_exact(&mut buf).await.unwrap();
            })
        })
    });

    let sdir = tempfile::tempdir().unwrap();
    let (shub, _addr) = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let shub = Arc::new(hub(sdir.path(), &addr.to_string()));
        let server = EnrollServer::from_listener(
            l,
            shub.clone(),
            ServerConfig {
                rate_per_sec: 1e9,
                burst: 1_000_000,
                ..ServerConfig::default()
            },
            &prometheus::Registry::new(),
        )
        .unwrap();
        tokio::spawn(server.serve(tokio_util::sync::CancellationToken::new()));
        (shub, addr)
    });
    let mut m = 0u64;
    g.bench_function("enroll", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                m += 1;
                let name = format!("e{m}");
                let (t, _) = shub.invite(&req(&name), unix_now()).unwrap();
                let start = Instant::now();
                rt.block_on(enroll_client(&t, &keys(), &ClientOptions::default()))
                    .unwrap();
                total += start.elapsed();
                shub.remove_host(&name, unix_now()).unwrap();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(enroll, benches);
criterion_main!(enroll);
