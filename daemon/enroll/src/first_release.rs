#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A faithful emulation of the first release (enrollment protocol v1), for the compatibility
//! tests in both directions.
//!
//! The first release's hub (before commit eadd2dd) decoded every frame into its `Message` enum
//! whose `Hello` and `Welcome` rejected unknown fields; a frame that did not decode ended in
//! `read_hello` as `EnrollError::Protocol { what: "invalid message: {serde error}" }` and went
//! back as an error frame (`proto::error_frame`, unchanged since) without the hub core ever
//! seeing the Hello. A Hello that decoded went to the hub core, which for a Hello without a
//! version is this release's [`Hub::handle_hello`] unchanged: eadd2dd added the version field
//! and its negotiation, and left the v1 transcripts and every check as they were.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::error::EnrollError;
use crate::hub::Hub;
use crate::proto::{self, ErrorFrame, Hello, Message};
use crate::util::unix_now;

/// The first release's Hello, field for field and in order (it rejected unknown fields).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct V1Hello {
    pub payload: String,
    pub wg_public_key: String,
    pub ssh_host_key: String,
    pub hostname: String,
    pub client_nonce: String,
    pub proof: String,
}

/// The first release's Welcome, field for field (it rejected unknown fields).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct V1Welcome {
    pub name: String,
    pub overlay_ip: Ipv4Addr,
    pub hub_wg_public_key: String,
    pub hub_wg_endpoint: String,
    pub hub_ssh_client_key: String,
    pub tags: BTreeMap<String, String>,
    pub groups: Vec<String>,
    pub proof: String,
}

/// The first release's message enum (same tag and names as today's).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum V1Message {
    Hello(V1Hello),
    Welcome(V1Welcome),
    Error(ErrorFrame),
}

/// Decodes a frame's JSON with the first release's strict structs, as its `FrameDecoder` did.
pub(crate) fn decode(json: &[u8]) -> Result<V1Message, EnrollError> {
    serde_json::from_slice::<V1Message>(json).map_err(|e| EnrollError::Protocol {
        what: format!("invalid message: {e}"),
    })
}

/// The frame a first-release hub answered to one frame's JSON (its `read_hello` and
/// `handle_connection`).
pub(crate) fn answer(hub: &Hub, json: &[u8], peer: Option<std::net::IpAddr>) -> Vec<u8> {
    let hello = match decode(json) {
        Ok(V1Message::Hello(h)) => h,
        Ok(_) => {
            let e = EnrollError::Protocol {
                what: "expected a Hello".into(),
            };
            hub.notify_rejected(peer, &e);
            return proto::error_frame(&e);
        }
        Err(e) => {
            hub.notify_rejected(peer, &e);
            return proto::error_frame(&e);
        }
    };
    let hello = Hello {
        payload: hello.payload,
        wg_public_key: hello.wg_public_key,
        ssh_host_key: hello.ssh_host_key,
        hostname: hello.hostname,
        client_nonce: hello.client_nonce,
        proof: hello.proof,
        version: None,
        wg_proof: None,
        ssh_user: None,
    };
    match hub.handle_hello(&hello, peer, unix_now()) {
        Ok(w) => {
            let frame = proto::encode_frame(&Message::Welcome(w)).unwrap_or_default();
            // What goes out must be what the first release's own Welcome struct took.
            let fields = frame.get(4..).unwrap_or_default();
            assert!(
                matches!(decode(fields), Ok(V1Message::Welcome(_))),
                "a first-release hub could not have sent this Welcome"
            );
            frame
        }
        Err(e) => proto::error_frame(&e),
    }
}

/// One connection as a first-release hub saw it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// The frame's JSON named a `version`.
    pub versioned: bool,
    /// Invites still pending on the hub when the frame arrived.
    pub pending_before: usize,
}

/// A first-release hub on 127.0.0.1 (port 0) answering with [`answer`]; returns its address and
/// what each connection sent.
pub(crate) async fn serve(hub: Arc<Hub>) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = listener.accept().await {
            let mut len = [0u8; 4];
            if s.read_exact(&mut len).await.is_err() {
                continue;
            }
            let mut json = vec![0u8; u32::from_be_bytes(len) as usize];
            if s.read_exact(&mut json).await.is_err() {
                continue;
            }
            let versioned = serde_json::from_slice::<serde_json::Value>(&json)
                .is_ok_and(|v| v.get("version").is_some());
            log.lock().expect("log").push(Seen {
                versioned,
                pending_before: hub.pending_invites(unix_now()).len(),
            });
            let frame = answer(&hub, &json, Some(peer.ip()));
            let _ = s.write_all(&frame).await;
            let _ = s.shutdown().await;
        }
    });
    (addr, seen)
}

/// A current target against a first-release hub, through [`crate::enroll_client`] over real
/// loopback TCP.
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::proto::TargetKeys;
    use crate::server::{ClientOptions, enroll_client};
    use crate::{HubIdentity, InviteRequest, OverlayNet};

    const HUB_SSH: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHSiLAhIitvRcOWt6XdNo4ie+uPb05kkFXj8cXyl7xQr hub";
    const TARGET_SSH: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINXREtEmFoLqswjEYtVLvVkJE5oD6KZMNLVQeaadzZGH a";

    fn hub(dir: &std::path::Path) -> Arc<Hub> {
        let identity = HubIdentity {
            enroll_endpoint: "127.0.0.1:1".into(),
            wg_public: [7u8; 32],
            wg_endpoint: "127.0.0.1:51820".into(),
            ssh_client_public: HUB_SSH.into(),
            relays: Vec::new(),
        };
        let key = tether_vault::SecretBox::from_slice(&[9u8; 32]).expect("key");
        Arc::new(Hub::open(dir, identity, key, OverlayNet::default()).expect("hub"))
    }

    fn invite(hub: &Hub) -> crate::Token {
        let req = InviteRequest {
            name: "new1".into(),
            tags: BTreeMap::new(),
            groups: vec![],
            ttl_secs: crate::DEFAULT_TTL_SECS,
        };
        hub.invite(&req, unix_now()).expect("invite").0
    }

    fn keys() -> TargetKeys {
        TargetKeys {
            wg_public: [3u8; 32],
            ssh_host_key: TARGET_SSH.into(),
            hostname: "new.local".into(),
            ssh_user: None,
        }
    }

    fn opts(addr: SocketAddr, deadline: Duration) -> ClientOptions {
        ClientOptions {
            endpoint: Some(addr.to_string()),
            deadline,
            ..ClientOptions::default()
        }
    }

    #[tokio::test]
    async fn a_current_target_enrolls_against_a_first_release_hub() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = hub(dir.path());
        let token = invite(&hub);
        let (addr, seen) = serve(Arc::clone(&hub)).await;
        // A target of this release proves its WireGuard key; the v1 retry leaves the proof out
        // (the first release refuses unknown fields).
        struct Wg(tether_tunnel::SecretKey);
        impl crate::WgKeyAgreement for Wg {
            fn agree(&self, p: &[u8; 32]) -> Option<zeroize::Zeroizing<[u8; 32]>> {
                Some(zeroize::Zeroizing::new(self.0.diffie_hellman(p)))
            }
        }
        let wg = tether_tunnel::SecretKey::generate().expect("key");
        let mine = TargetKeys {
            wg_public: wg.public_key().0,
            ..keys()
        };
        let mut o = opts(addr, Duration::from_secs(10));
        o.wg_key = Some(crate::WgProver(Arc::new(Wg(wg))));
        let w = enroll_client(&token, &mine, &o)
            .await
            .expect("enrolls in v1");
        assert_eq!((w.name.as_str(), w.version), ("new1", None));
        let seen = seen.lock().expect("seen").clone();
        assert_eq!(
            seen.len(),
            2,
            "one versioned attempt, one v1 retry: {seen:?}"
        );
        assert!(seen[0].versioned && !seen[1].versioned, "{seen:?}");
        // The refused attempt left the invite pending for the retry, which consumed it.
        assert_eq!(seen[1].pending_before, 1);
        assert!(hub.pending_invites(unix_now()).is_empty());
        let host = hub.inventory().get("new1").expect("recorded");
        // stored as the canonical line that goes to known_hosts (no comment)
        assert_eq!(
            host.ssh_host_key,
            crate::SshPublicKey::parse(TARGET_SSH)
                .expect("key")
                .canonical()
        );
        // The invite is single-use in v1 as well: a second enrollment is refused after its retry.
        let e = enroll_client(&token, &keys(), &opts(addr, Duration::from_secs(10)))
            .await
            .unwrap_err();
        assert!(matches!(e, EnrollError::AlreadyUsed { .. }), "{e}");
    }

    /// A server that answers every connection with `frame`, counting connections; the
    /// second connection is answered only when `hang_on_retry` is false.
    async fn answering(frame: Vec<u8>, hang_on_retry: bool) -> (SocketAddr, Arc<Mutex<usize>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let count = Arc::new(Mutex::new(0usize));
        let c = Arc::clone(&count);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut s, _)) = listener.accept().await {
                let n = {
                    let mut c = c.lock().expect("count");
                    *c += 1;
                    *c
                };
                if hang_on_retry && n > 1 {
                    held.push(s);
                    continue;
                }
                let _ = s.write_all(&frame).await;
                let _ = s.shutdown().await;
            }
        });
        (addr, count)
    }

    #[tokio::test]
    async fn other_refusals_are_not_retried_and_the_retry_happens_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = hub(dir.path());
        let token = invite(&hub);
        let (session, v2) =
            proto::TargetSession::start(&token, &keys(), unix_now(), proto::MAX_FRAME, None)
                .expect("session");
        drop(session);
        let refusal = answer(&hub, &v2[4..], None);
        let other = proto::error_frame(&EnrollError::Protocol {
            what: "invalid message: unknown field `colour`".into(),
        });
        for (frame, connections) in [(other, 1), (proto::error_frame(&EnrollError::Tampered), 1)] {
            let (addr, count) = answering(frame, false).await;
            let e = enroll_client(&token, &keys(), &opts(addr, Duration::from_secs(10))).await;
            assert!(e.is_err(), "{e:?}");
            assert_eq!(*count.lock().expect("count"), connections, "{e:?}");
        }
        // A server that refuses the v1 retry the same way (no first release does) gets no third.
        let (addr, count) = answering(refusal.clone(), false).await;
        let e = enroll_client(&token, &keys(), &opts(addr, Duration::from_secs(10)))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, EnrollError::Remote { code, .. } if code == "protocol"),
            "{e}"
        );
        assert_eq!(*count.lock().expect("count"), 2);

        // The retry runs within the one deadline.
        let (addr, count) = answering(refusal, true).await;
        let started = Instant::now();
        let e = enroll_client(&token, &keys(), &opts(addr, Duration::from_millis(600)))
            .await
            .unwrap_err();
        assert!(
            matches!(e, EnrollError::Timeout { after_ms: 600, .. }),
            "{e}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(1100),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(*count.lock().expect("count"), 2);
        assert_eq!(hub.pending_invites(unix_now()).len(), 1, "nothing consumed");
    }
}
