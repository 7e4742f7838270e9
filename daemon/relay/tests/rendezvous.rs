//! Enrollment through the relay, over real TLS on 127.0.0.1 with a real enrollment hub (state
//! in a temp dir) and a real target: the hub listens on the relay (no reachable endpoint of its
//! own), the target enrolls through it; a consumed token gets the hub's refusal through the
//! relay; unknown hashes are refused at once; the pairing deadline and the per-hash cap hold;
//! a flood of `/enroll` from one address is rate-limited; only admin keys may listen.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use tether_enroll::{
    ClientOptions, EnrollMetrics, Hub, HubIdentity, InviteRequest, OverlayNet, ServerConfig,
    TargetKeys, Token, enroll_over, serve_stream, unix_now,
};
use tether_relay::enroll::{self, Listener};
use tether_relay::{EnrollLimits, RelayError, RelayTarget, enroll_hash};
use tether_vault::SecretBox;
use x25519_dalek::StaticSecret;

const HUB_SSH: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHSiLAhIitvRcOWt6XdNo4ie+uPb05kkFXj8cXyl7xQr hub";
const TARGET_SSH: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINXREtEmFoLqswjEYtVLvVkJE5oD6KZMNLVQeaadzZGH a";

fn random32() -> [u8; 32] {
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).unwrap();
    k
}

/// A hub whose enroll endpoint is nowhere reachable: targets reach it only through the relay.
fn hub(dir: &std::path::Path, wg_public: [u8; 32]) -> Arc<Hub> {
    let id = HubIdentity {
        enroll_endpoint: "hub-without-endpoint.invalid:51821".into(),
        wg_public,
        wg_endpoint: "hub-without-endpoint.invalid:51820".into(),
        ssh_client_public: HUB_SSH.into(),
        relays: Vec::new(),
    };
    Arc::new(
        Hub::open(
            dir,
            id,
            SecretBox::from_slice(&random32()).unwrap(),
            OverlayNet::default(),
        )
        .unwrap(),
    )
}

fn invite(hub: &Hub, name: &str) -> (Token, [u8; 32]) {
    let (token, record) = hub
        .invite(
            &InviteRequest {
                name: name.into(),
                tags: BTreeMap::new(),
                groups: vec!["web".into()],
                ttl_secs: 600,
            },
            unix_now(),
        )
        .unwrap();
    // The hub keeps only SHA-256 of the nonce; the relay hash is derived from it.
    let mut stored = [0u8; 32];
    hex::decode_to_slice(&record.nonce_hash, &mut stored).unwrap();
    (token, tether_relay::enroll_hash_from_nonce_sha256(&stored))
}

fn target_keys() -> TargetKeys {
    TargetKeys {
        wg_public: random32(),
        ssh_host_key: TARGET_SSH.into(),
        hostname: "target.local".into(),
        ssh_user: None,
    }
}

/// The hub's side: take every session the listener announces and serve it.
fn serve_sessions(
    mut listener: Listener,
    relay: RelayTarget,
    secret: StaticSecret,
    hub: Arc<Hub>,
    metrics: EnrollMetrics,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(session) = listener.next_session().await {
            let stream = enroll::accept(&relay, &secret, session, Duration::from_secs(5))
                .await
                .unwrap();
            let (hub, metrics) = (hub.clone(), metrics.clone());
            tokio::spawn(async move {
                serve_stream(stream, "relay", hub, &ServerConfig::default(), &metrics).await;
            });
        }
    })
}

/// The target's side: through the relay by the token's nonce.
async fn enroll_via(relay: &RelayTarget, token: &Token) -> Result<tether_enroll::Welcome, String> {
    let nonce = token.parse(unix_now()).unwrap().checked.nonce;
    let stream = enroll::connect(relay, enroll_hash(&nonce), Duration::from_secs(15))
        .await
        .map_err(|e| e.to_string())?;
    let opts = ClientOptions {
        endpoint: Some(format!("relay {}", relay.addr)),
        ..ClientOptions::default()
    };
    enroll_over(stream, token, &target_keys(), &opts)
        .await
        .map_err(|e| format!("{}: {e}", e.code()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_enrolls_through_the_relay_and_a_used_token_gets_the_hubs_refusal() {
    let hub_secret = secret(1);
    let s = relay(
        &[],
        &[key(&hub_secret)],
        (100, 100),
        EnrollLimits::default(),
    )
    .await;
    let hub = hub(s.dir.path(), key(&hub_secret));
    let metrics = EnrollMetrics::register(&prometheus::Registry::new()).unwrap();
    let (token, hash) = invite(&hub, "web1");
    let (_, other_hash) = invite(&hub, "web2");

    let listener = Listener::connect(&s.target, &hub_secret, Duration::from_secs(5))
        .await
        .unwrap();
    listener.expect(vec![hash, other_hash]).await.unwrap();
    let task = serve_sessions(
        listener,
        s.target.clone(),
        hub_secret.clone(),
        hub.clone(),
        metrics.clone(),
    );

    let welcome = enroll_via(&s.target, &token).await.unwrap();
    assert_eq!(welcome.name, "web1");
    assert_eq!(welcome.hub_wg_public().unwrap(), key(&hub_secret));
    assert!(hub.inventory().get("web1").is_some_and(|h| h.is_active()));
    assert_eq!(metrics.attempts("enrolled"), 1);

    // The same token again: the hub's own refusal comes through the relay.
    let err = enroll_via(&s.target, &token).await.unwrap_err();
    assert!(err.starts_with("already_used"), "{err}");
    assert_eq!(metrics.attempts("already_used"), 1);
    assert_eq!(s.relay.stats().enroll_paired.load(Ordering::Relaxed), 2);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_hashes_and_non_admin_listeners_are_refused_at_once() {
    let (hub_secret, peer) = (secret(1), secret(2));
    let s = relay(
        &[key(&peer)],
        &[key(&hub_secret)],
        (100, 100),
        EnrollLimits::default(),
    )
    .await;
    // No listener at all, then a listener that expects something else.
    let started = Instant::now();
    match enroll::connect(&s.target, random32(), Duration::from_secs(5)).await {
        Err(RelayError::Refused(why)) => assert!(why.starts_with("404"), "{why}"),
        other => panic!("{other:?}"),
    }
    let listener = Listener::connect(&s.target, &hub_secret, Duration::from_secs(5))
        .await
        .unwrap();
    listener.expect(vec![random32()]).await.unwrap();
    match enroll::connect(&s.target, random32(), Duration::from_secs(5)).await {
        Err(RelayError::Refused(why)) => {
            assert!(why.contains("no hub listens for this invite"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s.relay.stats().enroll_unknown.load(Ordering::Relaxed), 2);

    // An allowed key that is not an admin key may neither listen nor accept.
    match Listener::connect(&s.target, &peer, Duration::from_secs(5)).await {
        Err(RelayError::Refused(why)) => assert!(why.contains("admin"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        enroll::accept(&s.target, &peer, 1, Duration::from_secs(5)).await,
        Err(RelayError::Refused(_))
    ));
    // The admin naming a session that does not exist.
    match enroll::accept(&s.target, &hub_secret, 12345, Duration::from_secs(5)).await {
        Err(RelayError::Refused(why)) => assert!(why.contains("no such enrollment session")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pairing_deadline_and_the_per_invite_cap_hold() {
    let hub_secret = secret(1);
    let limits = EnrollLimits {
        pairing_deadline: Duration::from_secs(1),
        max_per_hash: 2,
        ..EnrollLimits::default()
    };
    let s = relay(&[], &[key(&hub_secret)], (100, 100), limits).await;
    let mut listener = Listener::connect(&s.target, &hub_secret, Duration::from_secs(5))
        .await
        .unwrap();
    let hash = random32();
    listener.expect(vec![hash]).await.unwrap();
    // The hub hears of the targets but never accepts.
    let t = s.target.clone();
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let t = t.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let r = enroll::connect(&t, hash, Duration::from_secs(10)).await;
                (r, started.elapsed())
            })
        })
        .collect();
    let first = tokio::time::timeout(Duration::from_secs(5), listener.next_session())
        .await
        .unwrap()
        .unwrap();
    let _second = listener.next_session().await.unwrap();
    // A third at once is over the per-invite cap.
    match enroll::connect(&s.target, hash, Duration::from_secs(5)).await {
        Err(RelayError::Refused(why)) => assert!(why.starts_with("429"), "{why}"),
        other => panic!("{other:?}"),
    }
    for w in waiting {
        let (r, took) = w.await.unwrap();
        match r {
            Err(RelayError::Refused(why)) => assert!(why.starts_with("504"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }
    // Accepting after the deadline finds nothing.
    assert!(matches!(
        enroll::accept(&s.target, &hub_secret, first, Duration::from_secs(5)).await,
        Err(RelayError::Refused(_))
    ));
    // The cap is released with the pairings.
    let again = tokio::spawn({
        let t = s.target.clone();
        async move { enroll::connect(&t, hash, Duration::from_secs(10)).await }
    });
    let session = listener.next_session().await.unwrap();
    let _hub_side = enroll::accept(&s.target, &hub_secret, session, Duration::from_secs(5))
        .await
        .unwrap();
    again.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_enrollment_connections_from_one_address_is_rate_limited() {
    let hub_secret = secret(1);
    let s = relay(&[], &[key(&hub_secret)], (5, 10), EnrollLimits::default()).await;
    let attempts: Vec<_> = (0..30)
        .map(|_| {
            let t = s.target.clone();
            tokio::spawn(
                async move { enroll::connect(&t, random32(), Duration::from_secs(5)).await },
            )
        })
        .collect();
    let (mut not_found, mut dropped) = (0, 0);
    for a in attempts {
        match a.await.unwrap() {
            Err(RelayError::Refused(why)) if why.starts_with("404") => not_found += 1,
            Err(_) => dropped += 1,
            Ok(_) => panic!("an unknown hash was paired"),
        }
    }
    assert!(not_found <= 12, "{not_found} of 30 got past the rate limit");
    assert!(dropped >= 18, "only {dropped} of 30 were rate-limited");
    assert_eq!(
        s.relay.stats().enroll_unknown.load(Ordering::Relaxed),
        not_found
    );
}
