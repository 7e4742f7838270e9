//! The hub's admin channel over real TLS on 127.0.0.1: pushed allowlists let keys in and,
//! when replaced, throw them out at once; only admin keys may push; a pushed set survives the
//! admin's reconnect; a 10,000-key set goes through in chunks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use tether_relay::RelayError;
use tether_relay::client::Incoming;

async fn next(c: &mut tether_relay::RelayClient) -> Option<Incoming> {
    tokio::time::timeout(Duration::from_secs(5), c.recv())
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_set_admits_keys_and_removing_one_closes_its_connection_at_once() {
    let (hub, a, b, c) = (secret(1), secret(2), secret(3), secret(4));
    let s = relay(&[], &[key(&hub)], (100, 100), Default::default()).await;
    // The admin key needs no allowlist entry.
    let mut admin = connect(&s.target, &hub).await.unwrap();
    // Before the push, A is unknown.
    match connect(&s.target, &a).await {
        Err(RelayError::Refused(why)) => assert!(why.contains("allowlist"), "{why}"),
        other => panic!("{other:?}"),
    }
    admin.set_allowed(vec![key(&a), key(&b)]).await.unwrap();
    let mut ca = connect(&s.target, &a).await.unwrap();
    let mut cb = connect(&s.target, &b).await.unwrap();
    // An unlisted key is still refused before anything is forwarded.
    let before = refused(&s);
    assert!(matches!(
        connect(&s.target, &c).await,
        Err(RelayError::Refused(_))
    ));
    assert_eq!(refused_after(&s, before + 1).await, before + 1);
    // Forwarding between pushed keys and the hub works.
    ca.send(key(&hub), b"to the hub").await.unwrap();
    assert_eq!(
        next(&mut admin).await,
        Some(Incoming::Datagram {
            src: key(&a),
            data: b"to the hub".to_vec()
        })
    );
    // B is revoked: its live connection is closed at once, A's stays.
    admin.set_allowed(vec![key(&a)]).await.unwrap();
    match next(&mut cb).await {
        Some(Incoming::GoingAway) | None => {}
        other => panic!("B still connected: {other:?}"),
    }
    assert!(matches!(
        connect(&s.target, &b).await,
        Err(RelayError::Refused(_))
    ));
    admin.send(key(&a), b"still here").await.unwrap();
    assert!(matches!(
        next(&mut ca).await,
        Some(Incoming::Datagram { .. })
    ));
    assert_eq!(s.relay.stats().connected.load(Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_admin_push_is_refused_and_disconnected() {
    let (hub, a, b) = (secret(1), secret(2), secret(3));
    let s = relay(&[key(&a)], &[key(&hub)], (100, 100), Default::default()).await;
    let mut ca = connect(&s.target, &a).await.unwrap();
    let before = refused(&s);
    match ca.set_allowed(vec![key(&b)]).await {
        Err(RelayError::Refused(why)) => assert!(why.contains("admin"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(refused_after(&s, before + 1).await, before + 1);
    // Disconnected, and nothing was applied.
    assert_eq!(next(&mut ca).await, None);
    assert!(matches!(
        connect(&s.target, &b).await,
        Err(RelayError::Refused(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_set_survives_the_admins_reconnect_and_sets_of_admins_add_up() {
    let (hub1, hub2, a, b, f) = (secret(1), secret(2), secret(3), secret(4), secret(5));
    let s = relay(
        &[key(&f)],
        &[key(&hub1), key(&hub2)],
        (100, 100),
        Default::default(),
    )
    .await;
    let admin = connect(&s.target, &hub1).await.unwrap();
    admin.set_allowed(vec![key(&a)]).await.unwrap();
    drop(admin);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // hub1 is gone; its set stays.
    let ca = connect(&s.target, &a).await.unwrap();
    // hub2 allows B; the file allows F: the union counts.
    let admin2 = connect(&s.target, &hub2).await.unwrap();
    admin2.set_allowed(vec![key(&b)]).await.unwrap();
    let _cb = connect(&s.target, &b).await.unwrap();
    let _cf = connect(&s.target, &f).await.unwrap();
    // hub1 reconnects and replaces its set with nothing: A goes, B (hub2's) stays.
    let admin = connect(&s.target, &hub1).await.unwrap();
    admin.set_allowed(Vec::new()).await.unwrap();
    let mut ca = ca;
    match next(&mut ca).await {
        Some(Incoming::GoingAway) | None => {}
        other => panic!("A still connected: {other:?}"),
    }
    assert!(connect(&s.target, &a).await.is_err());
    assert!(connect(&s.target, &b).await.is_ok());
    drop(admin2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_of_ten_thousand_keys_is_pushed_in_chunks() {
    let hub = secret(1);
    let s = relay(&[], &[key(&hub)], (100, 100), Default::default()).await;
    let admin = connect(&s.target, &hub).await.unwrap();
    let peers: Vec<x25519_dalek::StaticSecret> = (0..3u8).map(|i| secret(100 + i)).collect();
    let mut keys: Vec<[u8; 32]> = (0..10_000u32)
        .map(|i| {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_be_bytes());
            k[31] = 0xee;
            k
        })
        .collect();
    // Real keys first, in the middle and last, so chunks at both ends are applied.
    keys[0] = key(&peers[0]);
    keys[5_000] = key(&peers[1]);
    keys[9_999] = key(&peers[2]);
    let started = std::time::Instant::now();
    admin.set_allowed(keys).await.unwrap();
    eprintln!("10,000 keys pushed in {:?}", started.elapsed());
    for p in &peers {
        connect(&s.target, p).await.unwrap();
    }
    // Over the cap: refused locally, the connection stays usable.
    let too_many = vec![[9u8; 32]; tether_relay::proto::MAX_SET_KEYS + 1];
    assert!(matches!(
        admin.set_allowed(too_many).await,
        Err(RelayError::Protocol(_))
    ));
    admin.set_allowed(vec![key(&peers[0])]).await.unwrap();
}
