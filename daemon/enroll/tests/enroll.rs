//! Integration tests of tether-enroll: real files, real TCP on 127.0.0.1 (port 0), real child
//! processes killed with SIGKILL.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tether_enroll::proto::{self, FrameDecoder, Message};
use tether_enroll::*;
use tether_vault::SecretBox;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const HUB_SSH: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHSiLAhIitvRcOWt6XdNo4ie+uPb05kkFXj8cXyl7xQr hub";
const TARGET_SSH_A: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINXREtEmFoLqswjEYtVLvVkJE5oD6KZMNLVQeaadzZGH a";
const TARGET_SSH_B: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBQWCNyiexpApvcBIMtFX7L36X7MDgZrLatKy6ldjIq0 b";

/// A valid, distinct OpenSSH ed25519 public key line for `name` (one machine, one key).
fn ssh_key_for(name: &str) -> String {
    use base64::Engine;
    let mut blob = Vec::new();
    blob.extend_from_slice(&11u32.to_be_bytes());
    blob.extend_from_slice(b"ssh-ed25519");
    blob.extend_from_slice(&32u32.to_be_bytes());
    let mut k = [0u8; 32];
    for (i, b) in name.bytes().enumerate() {
        k[i % 32] ^= b.wrapping_add(i as u8);
    }
    k[31] ^= name.len() as u8;
    blob.extend_from_slice(&k);
    format!(
        "ssh-ed25519 {}",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

fn random32() -> [u8; 32] {
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).unwrap();
    k
}

fn identity(endpoint: &str, wg_public: [u8; 32]) -> HubIdentity {
    HubIdentity {
        enroll_endpoint: endpoint.to_string(),
        wg_public,
        wg_endpoint: "127.0.0.1:51820".into(),
        ssh_client_public: HUB_SSH.into(),
        relays: Vec::new(),
    }
}

fn open_hub(dir: &Path, id: HubIdentity, key: &[u8]) -> Hub {
    Hub::open(
        dir,
        id,
        SecretBox::from_slice(key).unwrap(),
        OverlayNet::default(),
    )
    .unwrap()
}

fn req(name: &str) -> InviteRequest {
    InviteRequest {
        name: name.into(),
        tags: BTreeMap::from([("env".to_string(), "prod".to_string())]),
        groups: vec!["web".into()],
        ttl_secs: DEFAULT_TTL_SECS,
    }
}

fn keys(ssh: &str) -> TargetKeys {
    TargetKeys {
        wg_public: random32(),
        ssh_host_key: ssh.into(),
        hostname: "target.local".into(),
        ssh_user: None,
    }
}

/// A running hub: its listener, state dir, metrics, event channel.
struct TestHub {
    hub: Arc<Hub>,
    addr: SocketAddr,
    stop: CancellationToken,
    metrics: EnrollMetrics,
    events: tokio::sync::mpsc::UnboundedReceiver<EnrollEvent>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
    key: Vec<u8>,
    wg: [u8; 32],
}

impl TestHub {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve stops after cancel")
            .unwrap();
    }
}

async fn start_hub_with(
    config: ServerConfig,
    key: Option<Vec<u8>>,
    wg: Option<[u8; 32]>,
    hook: Option<Arc<dyn EnrollHook>>,
) -> TestHub {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let key = key.unwrap_or_else(|| random32().to_vec());
    let wg = wg.unwrap_or_else(random32);
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    let mut hub =
        open_hub(dir.path(), identity(&addr.to_string(), wg), &key).with_observer(Arc::new(tx));
    if let Some(h) = hook {
        hub = hub.with_hook(h);
    }
    let hub = Arc::new(hub);
    let registry = prometheus::Registry::new();
    let server = EnrollServer::from_listener(listener, hub.clone(), config, &registry).unwrap();
    let metrics = server.metrics();
    let stop = CancellationToken::new();
    let s2 = stop.clone();
    let task = tokio::spawn(async move { server.serve(s2).await.unwrap() });
    TestHub {
        hub,
        addr,
        stop,
        metrics,
        events,
        task,
        _dir: dir,
        key,
        wg,
    }
}

async fn start_hub() -> TestHub {
    start_hub_with(ServerConfig::default(), None, None, None).await
}

/// Reads one frame (or None at EOF/reset) from a raw connection.
async fn read_message(stream: &mut TcpStream) -> Option<Message> {
    let mut d = FrameDecoder::new(proto::MAX_FRAME);
    let mut buf = [0u8; 4096];
    loop {
        if let Some(m) = d.next_message().unwrap() {
            return Some(m);
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => d.push(&buf[..n]).unwrap(),
        }
    }
}

fn error_code(m: Option<Message>) -> String {
    match m {
        Some(Message::Error(e)) => e.code,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

mod flow {
    use super::*;

    #[tokio::test]
    async fn invite_enroll_inventory() {
        let mut th = start_hub().await;
        let now = unix_now();
        let (token, record) = th.hub.invite(&req("web1"), now).unwrap();
        assert_eq!(format!("{token:?}"), "Token([redacted])");
        assert_eq!(record.overlay_ip.to_string(), "10.99.0.2");
        // The hub stores only the nonce hash: neither the token nor its nonce is on disk (in the
        // snapshot `invites.json`, or the journal of changes since, `invites.journal`).
        let parsed = token.parse(now).unwrap();
        let stored = ["invites.json", "invites.journal"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(th._dir.path().join(f)).ok())
            .collect::<String>();
        assert!(stored.contains(&record.nonce_hash));
        assert!(!stored.contains(&parsed.payload().nonce));
        token.expose(|t| assert!(!stored.contains(t.rsplit('.').next().unwrap())));

        let k = keys(TARGET_SSH_A);
        let w = enroll_client(&token, &k, &ClientOptions::default())
            .await
            .unwrap();
        assert_eq!(w.name, "web1");
        assert_eq!(w.overlay_ip, record.overlay_ip);
        assert_eq!(w.hub_wg_public().unwrap(), th.wg);
        assert_eq!(w.hub_ssh_client_key, HUB_SSH);
        assert_eq!(w.hub_wg_endpoint, "127.0.0.1:51820");
        assert_eq!(w.tags.get("env").map(String::as_str), Some("prod"));
        assert_eq!(w.groups, vec!["web".to_string()]);

        let host = th.hub.inventory().get("web1").unwrap();
        assert_eq!(host.state, HostState::Active);
        // stored without the comment: the line that goes to known_hosts
        assert_eq!(
            host.ssh_host_key,
            SshPublicKey::parse(TARGET_SSH_A).unwrap().canonical()
        );
        use base64::Engine;
        assert_eq!(
            host.wg_public_key,
            base64::engine::general_purpose::STANDARD.encode(k.wg_public)
        );
        assert_eq!(host.hostname, "target.local");
        let sel = tether_model::selector::Selector::parse("tag:env=prod").unwrap();
        assert_eq!(th.hub.inventory().select(&sel).len(), 1);
        // Survives a reopen from disk.
        let inv = Inventory::open(th._dir.path()).unwrap();
        assert_eq!(inv.get("web1").unwrap(), host);
        // The lead is told.
        match th.events.recv().await.unwrap() {
            EnrollEvent::Enrolled { host: h, peer } => {
                assert_eq!(h.name, "web1");
                assert_eq!(peer.unwrap().to_string(), "127.0.0.1");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(th.metrics.attempts("enrolled"), 1);
        assert!(th.hub.pending_invites(now).is_empty());

        // Revoke: the host is marked revoked and no longer selected; the name can be reinvited
        // and keeps its address.
        let out = th.hub.revoke_host("web1", now).unwrap();
        assert_eq!(out.host.unwrap().state, HostState::Revoked);
        assert!(th.hub.inventory().select(&sel).is_empty());
        let (t2, r2) = th.hub.reinvite(&req("web1"), now).unwrap();
        assert_eq!(r2.overlay_ip, record.overlay_ip);
        let w2 = enroll_client(&t2, &keys(TARGET_SSH_B), &ClientOptions::default())
            .await
            .unwrap();
        assert_eq!(w2.overlay_ip, record.overlay_ip);
        let host = th.hub.inventory().get("web1").unwrap();
        assert_eq!(host.state, HostState::Active);
        assert_eq!(
            host.ssh_host_key,
            SshPublicKey::parse(TARGET_SSH_B).unwrap().canonical()
        );
        th.stop().await;
    }

    fn relay(name: &str) -> tether_model::relay::RelaySpec {
        use base64::Engine as _;
        tether_model::relay::RelaySpec {
            name: name.into(),
            addr: "127.0.0.1:4433".into(),
            server_name: String::new(),
            cert_sha256: "ab".repeat(32),
            relay_key: base64::engine::general_purpose::STANDARD.encode(random32()),
        }
    }

    #[test]
    fn a_hub_with_no_reachable_endpoint_and_no_relay_refuses_to_make_an_invite() {
        let dir = tempfile::tempdir().unwrap();
        let hub = open_hub(dir.path(), identity("", random32()), &random32());
        let err = hub.invite(&req("lost1"), unix_now()).unwrap_err();
        assert_eq!(err.code(), "unreachable");
        assert!(err.to_string().contains("[[tunnel.relays]]"), "{err}");
        // Nothing was recorded: the same name can be invited once the hub is fixed.
        assert!(hub.pending_invites(unix_now()).is_empty());
    }

    #[test]
    fn an_invite_carries_the_hubs_relays_and_may_omit_the_endpoint_then() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let mut id = identity("", random32());
        id.relays = vec![relay("r1"), relay("r2")];
        let hub = open_hub(dir.path(), id, &random32());
        let (token, _) = hub.invite(&req("behind-nat1"), unix_now()).unwrap();
        let parsed = token.parse(unix_now()).unwrap();
        let names: Vec<_> = parsed
            .payload()
            .relays
            .iter()
            .map(|r| r.name.clone())
            .collect();
        assert_eq!(names, ["r1", "r2"]);
        assert_eq!(parsed.payload().endpoint, "");
        // Without relays a token's JSON has no `relays` key at all (what older hubs issued).
        let dir2 = tempfile::tempdir().unwrap();
        let hub2 = open_hub(
            dir2.path(),
            identity("127.0.0.1:1", random32()),
            &random32(),
        );
        let (plain, _) = hub2.invite(&req("web9"), unix_now()).unwrap();
        let json = plain.expose(|t| {
            let body = t
                .strip_prefix("tether1.")
                .unwrap()
                .split('.')
                .next()
                .unwrap()
                .to_owned();
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(body)
                .unwrap()
        });
        assert!(!String::from_utf8(json).unwrap().contains("relays"));
    }

    #[tokio::test]
    async fn invites_survive_a_hub_restart() {
        let dir = tempfile::tempdir().unwrap();
        let key = random32();
        let wg = random32();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = {
            let hub = open_hub(dir.path(), identity(&addr.to_string(), wg), &key);
            hub.invite(&req("db1"), unix_now()).unwrap().0
        };
        // A new Hub on the same state dir (the daemon restarted) accepts the pending invite.
        let hub = Arc::new(open_hub(dir.path(), identity(&addr.to_string(), wg), &key));
        let registry = prometheus::Registry::new();
        let server =
            EnrollServer::from_listener(listener, hub.clone(), ServerConfig::default(), &registry)
                .unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.serve(stop.clone()));
        let w = enroll_client(&token, &keys(TARGET_SSH_A), &ClientOptions::default())
            .await
            .unwrap();
        assert_eq!(w.name, "db1");
        stop.cancel();
        task.await.unwrap().unwrap();
        // Registering the metrics twice in one registry is a clear error.
        let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let e =
            EnrollServer::from_listener(l2, hub, ServerConfig::default(), &registry).unwrap_err();
        assert!(matches!(e, EnrollError::Metrics(_)), "{e}");
    }

    #[tokio::test]
    async fn invite_checks_names_and_addresses() {
        let th = start_hub().await;
        let now = unix_now();
        let (_, r1) = th.hub.invite(&req("a1"), now).unwrap();
        let (_, r2) = th.hub.invite(&req("a2"), now).unwrap();
        assert_ne!(
            r1.overlay_ip, r2.overlay_ip,
            "pending invites reserve addresses"
        );
        assert!(matches!(
            th.hub.invite(&req("a1"), now),
            Err(EnrollError::NameTaken { .. })
        ));
        assert!(matches!(
            th.hub.invite(&req("Bad_Name"), now),
            Err(EnrollError::InvalidName { .. })
        ));
        let mut bad_tag = req("a3");
        bad_tag.tags.insert("env".into(), "a,b".into());
        assert!(matches!(
            th.hub.invite(&bad_tag, now),
            Err(EnrollError::InvalidName { .. })
        ));
        assert_eq!(th.hub.revoke_host("a1", now).unwrap().invites_revoked, 1);
        assert!(matches!(
            th.hub.revoke_host("nobody", now),
            Err(EnrollError::NoSuchHost { .. })
        ));
        th.stop().await;
    }
}

mod bad_tokens {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    async fn enroll(th: &TestHub, token: &Token) -> EnrollError {
        let opts = ClientOptions {
            endpoint: Some(th.addr.to_string()),
            ..ClientOptions::default()
        };
        enroll_client(token, &keys(TARGET_SSH_A), &opts)
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn malformed_fails_locally() {
        assert!(matches!(
            Token::from_text("  \n".into()),
            Err(EnrollError::Malformed { .. })
        ));
        for text in [
            "garbage",
            "tether1.",
            "tether1.a.b",
            "tether2.x.y",
            "tether1.e30.AAAA",
        ] {
            let t = Token::from_text(text.into()).unwrap();
            let e = enroll_client(
                &t,
                &keys(TARGET_SSH_A),
                &ClientOptions {
                    // Nothing listens here: a local failure must not even try to connect.
                    endpoint: Some("127.0.0.1:1".into()),
                    ..ClientOptions::default()
                },
            )
            .await
            .unwrap_err();
            assert!(matches!(e, EnrollError::Malformed { .. }), "{text:?}: {e}");
            assert!(e.to_string().contains("tether vpn invite"), "{e}");
        }
    }

    #[tokio::test]
    async fn expired_fails_locally_and_at_the_hub() {
        let th = start_hub().await;
        let now = unix_now();
        // Locally: a token past its expiry never contacts the hub.
        let mut r = req("old1");
        r.ttl_secs = 0;
        let (t, _) = th.hub.invite(&r, now).unwrap();
        let e = enroll(&th, &t).await;
        assert!(
            matches!(&e, EnrollError::Expired { name, .. } if name == "old1"),
            "{e}"
        );
        assert!(e.to_string().contains("tether vpn reinvite old1"), "{e}");
        assert_eq!(
            th.metrics.attempts("expired"),
            0,
            "the hub was not contacted"
        );

        // At the hub: a target whose clock is behind sends an expired token anyway.
        let mut r = req("old2");
        r.ttl_secs = 60;
        let (t, _) = th.hub.invite(&r, now - 7200).unwrap();
        let (mut s, hello) =
            TargetSession::start(&t, &keys(TARGET_SSH_A), now - 7200, proto::MAX_FRAME, None)
                .unwrap();
        let mut c = TcpStream::connect(th.addr).await.unwrap();
        c.write_all(&hello).await.unwrap();
        let mut buf = Vec::new();
        c.read_to_end(&mut buf).await.unwrap();
        let e = s.receive(&buf).unwrap_err();
        assert!(
            matches!(&e, EnrollError::Expired { name, .. } if name == "old2"),
            "{e}"
        );
        assert_eq!(th.metrics.attempts("expired"), 1);
        th.stop().await;
    }

    #[tokio::test]
    async fn tampered_payload_is_rejected_by_the_hub() {
        let th = start_hub().await;
        let (t, _) = th.hub.invite(&req("tam1"), unix_now()).unwrap();
        // Change the host name inside the payload and re-encode it, keeping the MAC.
        let forged = t.expose(|s| {
            let body = s.strip_prefix("tether1.").unwrap();
            let (p, mac) = body.split_once('.').unwrap();
            let json = String::from_utf8(URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap();
            let json = json.replace("\"tam1\"", "\"tam2\"");
            format!("tether1.{}.{mac}", URL_SAFE_NO_PAD.encode(json))
        });
        let forged = Token::from_text(forged).unwrap();
        forged
            .parse(unix_now())
            .expect("the target cannot tell without the key");
        let e = enroll(&th, &forged).await;
        assert!(matches!(e, EnrollError::Tampered), "{e}");
        // A different MAC (the secret part) fails the same way.
        let forged_mac = t.expose(|s| {
            let (head, _) = s.rsplit_once('.').unwrap();
            format!("{head}.{}", URL_SAFE_NO_PAD.encode([7u8; 32]))
        });
        let e = enroll(&th, &Token::from_text(forged_mac).unwrap()).await;
        assert!(matches!(e, EnrollError::Tampered), "{e}");
        // No error text carries the token's secret part.
        let mac = t.expose(|s| s.rsplit('.').next().unwrap().to_string());
        assert!(!e.to_string().contains(&mac) && !format!("{e:?}").contains(&mac));
        assert_eq!(th.metrics.attempts("tampered"), 2);
        assert!(th.hub.inventory().list().is_empty());
        th.stop().await;
    }

    #[tokio::test]
    async fn foreign_hub_unknown_revoked_denied() {
        let th = start_hub().await;
        let now = unix_now();

        // Foreign: another hub (other WireGuard key) issued it.
        let other_dir = tempfile::tempdir().unwrap();
        let other = open_hub(
            other_dir.path(),
            identity("127.0.0.1:9", random32()),
            &random32(),
        );
        let (t, _) = other.invite(&req("f1"), now).unwrap();
        let e = enroll(&th, &t).await;
        assert!(
            matches!(&e, EnrollError::ForeignHub { token_hub, .. } if token_hub == &other.hub_id().0),
            "{e}"
        );

        // Unknown: same hub identity and key, but this hub never recorded the nonce.
        let twin_dir = tempfile::tempdir().unwrap();
        let twin = open_hub(
            twin_dir.path(),
            identity(&th.addr.to_string(), th.wg),
            &th.key,
        );
        let (t, _) = twin.invite(&req("u1"), now).unwrap();
        let e = enroll(&th, &t).await;
        assert!(matches!(e, EnrollError::UnknownInvite), "{e}");

        // Revoked before use.
        let (t, _) = th.hub.invite(&req("r1"), now).unwrap();
        th.hub.revoke_host("r1", now).unwrap();
        let e = enroll(&th, &t).await;
        assert!(
            matches!(&e, EnrollError::Revoked { name } if name == "r1"),
            "{e}"
        );

        for (code, n) in [("foreign_hub", 1), ("unknown_invite", 1), ("revoked", 1)] {
            assert_eq!(th.metrics.attempts(code), n, "{code}");
        }
        assert!(th.hub.inventory().list().is_empty());
        th.stop().await;
    }

    struct Labeller;
    impl EnrollHook for Labeller {
        fn review(&self, r: &EnrollRequest) -> HookDecision {
            if r.name.starts_with("deny") {
                HookDecision::Deny {
                    reason: "hostname not in the CMDB".into(),
                }
            } else {
                HookDecision::Approve {
                    extra_tags: BTreeMap::from([("cmdb".into(), "ok".into())]),
                }
            }
        }
    }

    #[tokio::test]
    async fn hook_denies_or_labels() {
        let th = start_hub_with(
            ServerConfig::default(),
            None,
            None,
            Some(Arc::new(Labeller)),
        )
        .await;
        let now = unix_now();
        let (t, _) = th.hub.invite(&req("deny1"), now).unwrap();
        let e = enroll(&th, &t).await;
        assert!(
            matches!(&e, EnrollError::Denied { reason } if reason.contains("CMDB")),
            "{e}"
        );
        assert_eq!(
            th.hub.pending_invites(now).len(),
            1,
            "a denial does not consume"
        );
        let (t, _) = th.hub.invite(&req("ok1"), now).unwrap();
        let opts = ClientOptions::default();
        let w = enroll_client(&t, &keys(TARGET_SSH_A), &opts).await.unwrap();
        assert_eq!(w.tags.get("cmdb").map(String::as_str), Some("ok"));
        assert_eq!(
            th.hub
                .inventory()
                .get("ok1")
                .unwrap()
                .tags
                .get("cmdb")
                .map(String::as_str),
            Some("ok")
        );
        th.stop().await;
    }
}

mod single_use {
    use super::*;

    #[tokio::test]
    async fn replay_is_already_used() {
        let th = start_hub().await;
        let (t, _) = th.hub.invite(&req("rep1"), unix_now()).unwrap();
        let a = enroll_client(&t, &keys(TARGET_SSH_A), &ClientOptions::default()).await;
        assert!(a.is_ok());
        let before = th.hub.inventory().get("rep1").unwrap();
        let e = enroll_client(&t, &keys(TARGET_SSH_B), &ClientOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&e, EnrollError::AlreadyUsed { name } if name == "rep1"),
            "{e}"
        );
        assert_eq!(
            th.hub.inventory().get("rep1").unwrap(),
            before,
            "the replay changed nothing"
        );
        assert_eq!(th.metrics.attempts("already_used"), 1);
        th.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_enrollments_exactly_one_wins() {
        for round in 0..5 {
            let th = start_hub().await;
            let (t, _) = th.hub.invite(&req("race1"), unix_now()).unwrap();
            let t = Arc::new(t);
            let mut tasks = Vec::new();
            for i in 0..8 {
                let t = t.clone();
                let ssh = if i % 2 == 0 {
                    TARGET_SSH_A
                } else {
                    TARGET_SSH_B
                };
                tasks.push(tokio::spawn(async move {
                    enroll_client(&t, &keys(ssh), &ClientOptions::default()).await
                }));
            }
            let mut ok = Vec::new();
            for task in tasks {
                match task.await.unwrap() {
                    Ok(w) => ok.push(w),
                    Err(EnrollError::AlreadyUsed { .. }) => {}
                    Err(e) => panic!("round {round}: unexpected error {e}"),
                }
            }
            assert_eq!(
                ok.len(),
                1,
                "round {round}: exactly one enrollment succeeds"
            );
            assert_eq!(th.hub.inventory().list().len(), 1);
            assert_eq!(th.metrics.attempts("enrolled"), 1);
            assert_eq!(th.metrics.attempts("already_used"), 7);
            th.stop().await;
        }
    }
}

mod hardening {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn eleventh_rapid_connection_is_refused_and_counted() {
        let th = start_hub_with(
            ServerConfig {
                deadline: Duration::from_secs(3),
                ..ServerConfig::default()
            },
            None,
            None,
            None,
        )
        .await;
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(TcpStream::connect(th.addr).await.unwrap());
        }
        let mut eleventh = TcpStream::connect(th.addr).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(2), read_message(&mut eleventh))
            .await
            .expect("the refusal comes at once");
        assert_eq!(error_code(m), "rate_limited");
        assert_eq!(th.metrics.rate_limited(), 1);
        // The first ten were accepted: each is still waiting for its Hello.
        for c in &mut held {
            let mut b = [0u8; 1];
            assert!(
                tokio::time::timeout(Duration::from_millis(20), c.read(&mut b))
                    .await
                    .is_err(),
                "accepted connections stay open"
            );
        }
        drop(held);
        th.stop().await;
    }

    #[tokio::test]
    async fn client_reports_rate_limited_and_tokens_come_back() {
        let th = start_hub_with(
            ServerConfig {
                rate_per_sec: 5.0,
                burst: 1,
                ..ServerConfig::default()
            },
            None,
            None,
            None,
        )
        .await;
        let (t, _) = th.hub.invite(&req("rl1"), unix_now()).unwrap();
        let mut c = TcpStream::connect(th.addr).await.unwrap();
        c.write_all(b"\0\0\0\x02{}").await.unwrap();
        assert_eq!(error_code(read_message(&mut c).await), "protocol");
        let e = enroll_client(&t, &keys(TARGET_SSH_A), &ClientOptions::default()).await;
        assert!(
            matches!(
                e,
                Err(EnrollError::RateLimited {
                    retry_after_ms: Some(1..)
                })
            ),
            "{e:?}"
        );
        assert_eq!(th.metrics.rate_limited(), 1);
        // Tokens come back at 5/s.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let w = enroll_client(&t, &keys(TARGET_SSH_A), &ClientOptions::default()).await;
        assert!(w.is_ok(), "{w:?}");
        th.stop().await;
    }

    #[tokio::test]
    async fn token_holders_get_their_own_budget_and_the_client_waits_as_told() {
        let th = start_hub_with(
            ServerConfig {
                rate_per_sec: 2.0,
                burst: 2,
                token_rate_per_sec: 2.0,
                token_burst: 25,
                ..ServerConfig::default()
            },
            None,
            None,
            None,
        )
        .await;
        // 20 enrollments from one address, far beyond the unauthenticated burst of 2: each
        // valid Hello gets its accept-time token back and is charged to the token budget.
        for i in 0..20 {
            let name = format!("fleet{i}");
            let (t, _) = th.hub.invite(&req(&name), unix_now()).unwrap();
            let ssh = ssh_key_for(&name);
            let w = enroll_client(&t, &keys(&ssh), &ClientOptions::default()).await;
            assert!(w.is_ok(), "{name}: {w:?}");
        }
        assert_eq!(th.metrics.attempts("enrolled"), 20);
        assert_eq!(th.metrics.rate_limited(), 0);
        // Garbage still spends the unauthenticated budget: the third is refused at accept,
        // with a retry-after of at most 1/rate.
        for _ in 0..2 {
            let mut c = TcpStream::connect(th.addr).await.unwrap();
            c.write_all(b"\0\0\0\x02{}").await.unwrap();
            assert_eq!(error_code(read_message(&mut c).await), "protocol");
        }
        let (t, _) = th.hub.invite(&req("late"), unix_now()).unwrap();
        let e = enroll_client(&t, &keys(TARGET_SSH_A), &ClientOptions::default()).await;
        match e {
            Err(EnrollError::RateLimited {
                retry_after_ms: Some(ms),
            }) => assert!((1..=500).contains(&ms), "{ms}"),
            other => panic!("{other:?}"),
        }
        // With a retry budget the client waits as told (plus jitter) and gets through.
        let opts = ClientOptions {
            retry_rate_limited_for: Some(Duration::from_secs(5)),
            ..ClientOptions::default()
        };
        for _ in 0..2 {
            let mut c = TcpStream::connect(th.addr).await.unwrap();
            let _ = c.write_all(b"\0\0\0\x02{}").await;
            let _ = read_message(&mut c).await;
        }
        let w = enroll_client(&t, &keys(TARGET_SSH_A), &opts).await;
        assert!(w.is_ok(), "{w:?}");
        assert!(th.metrics.rate_limited() >= 2);
        th.stop().await;
    }

    #[test]
    fn retry_delays_follow_the_hub_and_back_off_with_jitter() {
        for attempt in 0..10u32 {
            let cap = (250u64 << attempt.min(5)).min(8_000);
            for _ in 0..50 {
                let d = retry_delay(attempt, Some(300)).as_millis() as u64;
                assert!((300..=300 + cap).contains(&d), "attempt {attempt}: {d}");
            }
        }
        // Jitter spreads clients refused together.
        let spread: std::collections::HashSet<_> = (0..50).map(|_| retry_delay(3, None)).collect();
        assert!(spread.len() > 10, "{spread:?}");
    }

    #[tokio::test]
    async fn oversized_frame_is_refused() {
        let th = start_hub().await;
        let mut c = TcpStream::connect(th.addr).await.unwrap();
        c.write_all(&(2u32 << 20).to_be_bytes()).await.unwrap();
        // Start streaming the body; the hub must not wait for (or buffer) 2 MiB.
        let _ = c.write_all(&[b'{'; 1000]).await;
        let m = tokio::time::timeout(Duration::from_secs(3), read_message(&mut c))
            .await
            .unwrap();
        assert_eq!(error_code(m), "frame_too_large");
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), c.read_to_end(&mut rest)).await;
        assert!(rest.is_empty(), "closed after the error");
        assert_eq!(th.metrics.attempts("frame_too_large"), 1);
        // The target's decoder enforces the same limit on the hub's answers.
        let mut d = FrameDecoder::new(proto::MAX_FRAME);
        assert!(matches!(
            d.push(&((proto::MAX_FRAME as u32) + 1).to_be_bytes()),
            Err(EnrollError::FrameTooLarge { .. })
        ));
        th.stop().await;
    }

    #[tokio::test]
    async fn slowloris_is_closed_by_the_deadline() {
        let th = start_hub_with(
            ServerConfig {
                deadline: Duration::from_millis(500),
                ..ServerConfig::default()
            },
            None,
            None,
            None,
        )
        .await;
        let mut c = TcpStream::connect(th.addr).await.unwrap();
        let started = Instant::now();
        // Announce a 200-byte frame, then trickle one byte every 50 ms.
        c.write_all(&200u32.to_be_bytes()).await.unwrap();
        let (mut rd, mut wr) = c.into_split();
        let trickle = tokio::spawn(async move {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if wr.write_all(b" ").await.is_err() {
                    break;
                }
            }
        });
        let mut d = FrameDecoder::new(proto::MAX_FRAME);
        let mut buf = [0u8; 512];
        let m = loop {
            if let Some(m) = d.next_message().unwrap() {
                break Some(m);
            }
            match tokio::time::timeout(Duration::from_secs(5), rd.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break None,
                Ok(Ok(n)) => d.push(&buf[..n]).unwrap(),
                Err(_) => panic!("the hub kept a trickling connection open past its deadline"),
            }
        };
        let elapsed = started.elapsed();
        assert_eq!(error_code(m), "timeout");
        assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
        trickle.abort();
        assert_eq!(th.metrics.attempts("timeout"), 1);
        th.stop().await;
    }
}

mod authentication {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    /// A hub with the same public identity (the attacker knows the hub's WireGuard public key)
    /// but not the invite key cannot authenticate the target, and the target learns that.
    #[tokio::test]
    async fn server_with_another_invite_key_cannot_enroll() {
        let real = start_hub().await;
        let (t, _) = real.hub.invite(&req("fk1"), unix_now()).unwrap();
        let fake = start_hub_with(ServerConfig::default(), None, Some(real.wg), None).await;
        let opts = ClientOptions {
            endpoint: Some(fake.addr.to_string()),
            ..ClientOptions::default()
        };
        let e = enroll_client(&t, &keys(TARGET_SSH_A), &opts)
            .await
            .unwrap_err();
        assert!(matches!(e, EnrollError::Tampered), "{e}");
        assert!(fake.hub.inventory().list().is_empty());
        // The real hub's invite was not consumed by the detour.
        let w = enroll_client(&t, &keys(TARGET_SSH_A), &ClientOptions::default()).await;
        assert!(w.is_ok(), "{w:?}");
        real.stop().await;
        fake.stop().await;
    }

    /// A malicious server that skips all checks and answers a Welcome with its own key is
    /// detected by the target's check of the hub's proof.
    #[tokio::test]
    async fn forged_welcome_is_detected() {
        let real = start_hub().await;
        let (t, _) = real.hub.invite(&req("fk2"), unix_now()).unwrap();
        let fake = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake_addr = fake.local_addr().unwrap();
        let wg = real.wg;
        let server = tokio::spawn(async move {
            let (mut s, _) = fake.accept().await.unwrap();
            let Some(Message::Hello(hello)) = read_message(&mut s).await else {
                panic!("no hello")
            };
            let k = proto::session_key(&random32(), &random32());
            let mut w = Welcome {
                name: "fk2".into(),
                overlay_ip: "10.99.0.2".parse().unwrap(),
                hub_wg_public_key: STANDARD.encode(wg),
                hub_wg_endpoint: "127.0.0.1:1".into(),
                hub_ssh_client_key: HUB_SSH.into(),
                tags: BTreeMap::new(),
                groups: vec![],
                proof: String::new(),
                version: hello.version,
            };
            w.proof = URL_SAFE_NO_PAD.encode(proto::welcome_proof(&k, &hello, &w));
            s.write_all(&proto::encode_frame(&Message::Welcome(w)).unwrap())
                .await
                .unwrap();
        });
        let opts = ClientOptions {
            endpoint: Some(fake_addr.to_string()),
            ..ClientOptions::default()
        };
        let e = enroll_client(&t, &keys(TARGET_SSH_A), &opts)
            .await
            .unwrap_err();
        assert!(matches!(e, EnrollError::HubNotAuthenticated { .. }), "{e}");
        server.await.unwrap();
        real.stop().await;
    }

    /// A man in the middle relaying to the real hub can neither swap the target's key in the
    /// Hello nor the hub's key in the Welcome.
    #[tokio::test]
    async fn man_in_the_middle_cannot_swap_keys() {
        let real = start_hub().await;
        for swap_hello in [true, false] {
            let name = if swap_hello { "mitm1" } else { "mitm2" };
            let (t, _) = real.hub.invite(&req(name), unix_now()).unwrap();
            let mitm = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mitm_addr = mitm.local_addr().unwrap();
            let hub_addr = real.addr;
            let relay = tokio::spawn(async move {
                let (mut client, _) = mitm.accept().await.unwrap();
                let Some(Message::Hello(mut hello)) = read_message(&mut client).await else {
                    panic!("no hello")
                };
                if swap_hello {
                    hello.wg_public_key = STANDARD.encode(random32());
                }
                let mut up = TcpStream::connect(hub_addr).await.unwrap();
                up.write_all(&proto::encode_frame(&Message::Hello(hello)).unwrap())
                    .await
                    .unwrap();
                let mut answer = read_message(&mut up).await.unwrap();
                if let Message::Welcome(w) = &mut answer {
                    w.hub_wg_public_key = STANDARD.encode(random32());
                }
                client
                    .write_all(&proto::encode_frame(&answer).unwrap())
                    .await
                    .unwrap();
            });
            let opts = ClientOptions {
                endpoint: Some(mitm_addr.to_string()),
                ..ClientOptions::default()
            };
            let e = enroll_client(&t, &keys(TARGET_SSH_A), &opts)
                .await
                .unwrap_err();
            if swap_hello {
                assert!(matches!(e, EnrollError::Tampered), "{e}");
                assert!(real.hub.inventory().get(name).is_none());
            } else {
                // The hub enrolled the real keys, but the target refuses the altered answer.
                assert!(matches!(e, EnrollError::HubNotAuthenticated { .. }), "{e}");
            }
            relay.await.unwrap();
        }
        real.stop().await;
    }

    #[test]
    fn hub_side_verify_distinguishes_foreign_tampered_expired() {
        let dir = tempfile::tempdir().unwrap();
        let key = random32();
        let hub = open_hub(dir.path(), identity("127.0.0.1:1", random32()), &key);
        let now = unix_now();
        let (t, _) = hub.invite(&req("v1"), now).unwrap();
        let p = t.expose(|s| parse_token(s).unwrap());
        let kb = SecretBox::from_slice(&key).unwrap();
        p.verify(&kb, hub.hub_id(), now).unwrap();
        assert!(matches!(
            p.verify(&kb, &HubId("0000000000000000".into()), now),
            Err(EnrollError::ForeignHub { .. })
        ));
        let other = SecretBox::from_slice(&random32()).unwrap();
        assert!(matches!(
            p.verify(&other, hub.hub_id(), now),
            Err(EnrollError::Tampered)
        ));
        assert!(matches!(
            p.verify(&kb, hub.hub_id(), now + DEFAULT_TTL_SECS),
            Err(EnrollError::Expired { .. })
        ));
        assert!(format!("{p:?}").contains("[redacted]"));
    }
}

mod tokens_prop {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    struct Fixture {
        text: String,
        key: Vec<u8>,
        hub_id: HubId,
        now: u64,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let key = random32().to_vec();
            let hub = open_hub(dir.path(), identity("hub.example:51821", random32()), &key);
            let now = unix_now();
            let (t, _) = hub.invite(&req("prop1"), now).unwrap();
            Fixture {
                text: t.expose(str::to_string),
                key,
                hub_id: hub.hub_id().clone(),
                now,
                _dir: dir,
            }
        })
    }

    fn accepted_by_hub(text: &str) -> bool {
        let f = fixture();
        let key = SecretBox::from_slice(&f.key).unwrap();
        parse_token(text)
            .and_then(|p| p.verify(&key, &f.hub_id, f.now))
            .is_ok()
    }

    #[test]
    fn fixture_token_is_accepted() {
        assert!(accepted_by_hub(&fixture().text));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,300}|tether1\\.[A-Za-z0-9_.=+/-]{0,400}") {
            let _ = parse_token(&s);
            if let Ok(t) = Token::from_text(s) {
                let _ = t.parse(0);
            }
        }

        #[test]
        fn any_single_char_change_is_rejected(
            pos in 0usize..4096,
            c in prop::sample::select(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ x"
                    .chars()
                    .collect::<Vec<_>>()
            ),
        ) {
            let text = &fixture().text;
            let pos = pos % text.len();
            let mut chars: Vec<char> = text.chars().collect();
            prop_assume!(chars[pos] != c);
            chars[pos] = c;
            let changed: String = chars.into_iter().collect();
            prop_assert!(!accepted_by_hub(&changed), "accepted a change at {pos} to {c:?}");
        }

        #[test]
        fn any_truncation_or_extension_is_rejected(cut in 1usize..4096, extra in "[A-Za-z0-9_-]{1,4}") {
            let text = &fixture().text;
            let cut = cut % text.len();
            prop_assert!(!accepted_by_hub(&text[..cut]));
            let longer = format!("{text}{extra}");
            prop_assert!(!accepted_by_hub(&longer));
        }
    }
}

mod inventory_tests {
    use super::*;
    use std::collections::HashSet;
    use tether_model::selector::Selector;

    fn host(name: &str, ip: &str) -> HostRecord {
        HostRecord {
            name: name.into(),
            overlay_ip: ip.parse().unwrap(),
            wg_public_key: format!("k-{name}"),
            ssh_host_key: ssh_key_for(name),
            hostname: String::new(),
            tags: BTreeMap::new(),
            groups: vec![],
            enrolled_at: 1,
            last_seen: None,
            state: HostState::Active,
            revoked_at: None,
            ssh_user: None,
        }
    }

    #[test]
    fn crud_select_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let inv = Inventory::open(dir.path()).unwrap();
        let none = HashSet::new();
        assert_eq!(inv.allocate_ip(&none).unwrap().to_string(), "10.99.0.2");
        let mut a = host("web1", "10.99.0.2");
        a.groups = vec!["web".into()];
        a.tags.insert("env".into(), "prod".into());
        inv.insert(a.clone()).unwrap();
        assert_eq!(inv.allocate_ip(&none).unwrap().to_string(), "10.99.0.3");
        let reserved = HashSet::from(["10.99.0.3".parse().unwrap()]);
        assert_eq!(inv.allocate_ip(&reserved).unwrap().to_string(), "10.99.0.4");
        inv.insert(host("db1", "10.99.0.3")).unwrap();

        // Names unique, addresses never shared, hub/network/outside refused.
        assert!(matches!(
            inv.insert(host("web1", "10.99.0.9")),
            Err(EnrollError::NameTaken { .. })
        ));
        assert!(matches!(
            inv.insert(host("x1", "10.99.0.2")),
            Err(EnrollError::AddressUnavailable { .. })
        ));
        for ip in ["10.99.0.1", "10.99.0.0", "10.99.255.255", "10.98.0.5"] {
            assert!(
                matches!(
                    inv.insert(host("x1", ip)),
                    Err(EnrollError::AddressUnavailable { .. })
                ),
                "{ip}"
            );
        }
        assert!(matches!(
            inv.insert(host("X1", "10.99.0.9")),
            Err(EnrollError::InvalidName { .. })
        ));

        let sel = |s: &str| {
            inv.select(&Selector::parse(s).unwrap())
                .into_iter()
                .map(|h| h.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(sel("all"), vec!["db1", "web1"]);
        assert_eq!(sel("group:web"), vec!["web1"]);
        assert_eq!(sel("tag:env=prod"), vec!["web1"]);
        assert_eq!(sel("!web1"), vec!["db1"]);
        assert_eq!(sel("~w.*"), vec!["web1"]);

        // Revoked: never selected, keeps its address until removed, name reusable.
        inv.mark_revoked("web1", 5).unwrap();
        assert_eq!(sel("all"), vec!["db1"]);
        assert!(matches!(
            inv.insert(host("x1", "10.99.0.2")),
            Err(EnrollError::AddressUnavailable { .. })
        ));
        // ...by another machine: the revoked machine's own keys are refused
        assert!(matches!(
            inv.insert(host("web1", "10.99.0.2")),
            Err(EnrollError::KeyTaken { .. })
        ));
        inv.insert(HostRecord {
            wg_public_key: "k-web1-new".into(),
            ssh_host_key: ssh_key_for("web1-new"),
            ..host("web1", "10.99.0.2")
        })
        .unwrap();
        assert!(inv.get("web1").unwrap().is_active());

        // touch persists when it moved by >= 60 s.
        inv.touch("db1", 1000).unwrap();
        inv.touch("db1", 1010).unwrap();
        assert_eq!(inv.get("db1").unwrap().last_seen, Some(1010));
        let reopened = Inventory::open(dir.path()).unwrap();
        assert_eq!(reopened.get("db1").unwrap().last_seen, Some(1000));
        assert!(matches!(
            inv.touch("nope", 1),
            Err(EnrollError::NoSuchHost { .. })
        ));

        let removed = inv.remove("web1").unwrap();
        assert_eq!(removed.name, "web1");
        assert!(matches!(
            inv.remove("web1"),
            Err(EnrollError::NoSuchHost { .. })
        ));
        let reopened = Inventory::open(dir.path()).unwrap();
        assert_eq!(reopened.list().len(), 1);
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hosts.json"), b"{not json").unwrap();
        let e = Inventory::open(dir.path()).unwrap_err();
        assert!(matches!(e, EnrollError::CorruptState { .. }), "{e}");
        assert!(e.to_string().contains("hosts.json"));
    }

    #[test]
    fn subnet_parsing() {
        let n: OverlayNet = "10.50.0.0/24".parse().unwrap();
        assert_eq!(n.hub_ip().to_string(), "10.50.0.1");
        assert_eq!(n.host_ips().count(), 253);
        assert!("10.50.0.1/24".parse::<OverlayNet>().is_err());
        assert!("10.50.0.0/31".parse::<OverlayNet>().is_err());
        assert!("nope".parse::<OverlayNet>().is_err());
    }
}

mod durability {
    use super::*;
    use std::collections::HashSet;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    const CHILD_ENV: &str = "TETHER_ENROLL_WRITER_DIR";

    /// Not a test on its own: when started by `inventory_survives_kill_9` with the env var set,
    /// inserts hosts w0, w1, ... forever, printing each committed count.
    #[test]
    fn inventory_writer_child() {
        let Ok(dir) = std::env::var(CHILD_ENV) else {
            return;
        };
        let inv = Inventory::open(Path::new(&dir)).unwrap();
        let mut i = inv.list().len();
        loop {
            let ip = inv.allocate_ip(&HashSet::new()).unwrap();
            inv.insert(HostRecord {
                name: format!("w{i}"),
                overlay_ip: ip,
                wg_public_key: format!("{i:044}"),
                ssh_host_key: ssh_key_for(&format!("w{i}")),
                hostname: "x".repeat(200),
                tags: BTreeMap::new(),
                groups: vec![],
                enrolled_at: i as u64,
                last_seen: None,
                state: HostState::Active,
                revoked_at: None,
                ssh_user: None,
            })
            .unwrap();
            i += 1;
            println!("committed {i}");
        }
    }

    #[test]
    fn inventory_survives_kill_9() {
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        for (round, kill_after) in [3usize, 17, 40].into_iter().enumerate() {
            let mut child = Command::new(&exe)
                .args([
                    "--exact",
                    "durability::inventory_writer_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let mut committed = 0usize;
            let started = std::time::Instant::now();
            let mut seen = 0;
            while seen < kill_after {
                let line = lines.next().expect("child output").unwrap();
                if let Some(n) = line.strip_prefix("committed ") {
                    committed = n.trim().parse().unwrap();
                    seen += 1;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "child too slow"
                );
            }
            // SIGKILL mid-write (the child writes continuously).
            child.kill().unwrap();
            child.wait().unwrap();
            // Anything printed before the kill was durable.
            for line in lines.map_while(|l| l.ok()) {
                if let Some(n) = line.strip_prefix("committed ") {
                    committed = n.trim().parse().unwrap();
                }
            }
            let inv = Inventory::open(dir.path()).expect("the file always parses");
            let names: Vec<String> = {
                let mut v = inv.list();
                v.sort_by_key(|h| h.enrolled_at);
                v.into_iter().map(|h| h.name).collect()
            };
            let n = names.len();
            assert!(
                n == committed || n == committed + 1,
                "round {round}: {n} hosts on disk, {committed} reported committed"
            );
            let expected: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
            assert_eq!(names, expected, "round {round}: a prefix of the writes");
            let tmp_left = std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .contains(".tmp.")
                })
                .count();
            assert_eq!(tmp_left, 0, "open() removes stale temporary files");
        }
    }
}

/// Fuzz harnesses for every parser of unauthenticated enrollment input: frames, invite tokens,
/// token payloads, and whole Hellos handled by a real hub. Each runs `TETHER_FUZZ_CASES`
/// cases (default 256 in the suite; `scripts/fuzz` runs many more). Failing inputs are kept by
/// proptest in `tests/enroll.proptest-regressions` and replayed first on every run.
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn cases() -> u32 {
        std::env::var("TETHER_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256)
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..1024)
    }

    /// A valid input with up to 8 bytes changed, some bytes cut and some appended.
    fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
        let n = valid.len().max(1);
        (
            prop::collection::vec((0..n, any::<u8>()), 0..8),
            0..=n,
            prop::collection::vec(any::<u8>(), 0..16),
        )
            .prop_map(move |(flips, keep, tail)| {
                let mut v = valid.clone();
                for (i, b) in flips {
                    if let Some(x) = v.get_mut(i) {
                        *x = b;
                    }
                }
                v.truncate(keep);
                v.extend(tail);
                v
            })
    }

    fn hub() -> (Hub, tempfile::TempDir, Token) {
        let dir = tempfile::tempdir().unwrap();
        let hub = open_hub(dir.path(), identity("127.0.0.1:1", random32()), &random32());
        let (t, _) = hub.invite(&req("fuzz1"), unix_now()).unwrap();
        (hub, dir, t)
    }

    fn hello_json(t: &Token) -> Vec<u8> {
        let (_s, frame) =
            TargetSession::start(t, &keys(TARGET_SSH_A), unix_now(), 1 << 20, None).unwrap();
        frame[4..].to_vec()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        #[test]
        fn fuzz_frames(data in bytes(), split in 0usize..1024) {
            let mut d = FrameDecoder::new(4096);
            let (a, b) = data.split_at(split.min(data.len()));
            for chunk in [a, b] {
                if d.push(chunk).is_err() {
                    break;
                }
                while let Ok(Some(_)) = d.next_message() {}
            }
            prop_assert!(d.wanted() >= 1);
        }

        #[test]
        fn fuzz_token_text(text in ".{0,600}") {
            if let Ok(t) = Token::from_text(text) {
                let _ = t.parse(unix_now());
            }
        }

        #[test]
        fn fuzz_token_payload(data in bytes()) {
            let _ = token::decode_payload(&data);
        }

        #[test]
        fn fuzz_mutated_tokens(seed in any::<u64>()) {
            let (_hub, _dir, t) = hub();
            let text = t.expose(str::to_owned).into_bytes();
            let mut rng = seed;
            let mut v = text.clone();
            for _ in 0..(seed % 8) {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let i = (rng >> 33) as usize % v.len();
                v[i] = (rng >> 20) as u8;
            }
            if let Ok(t) = String::from_utf8(v).map_err(|_| ()).and_then(|s| Token::from_text(s).map_err(|_| ())) {
                let _ = t.parse(unix_now());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases().min(64).max(cases() / 8)))]

        /// Mutated Hellos handled by a real hub (files in a temp dir): never a panic, and
        /// nothing recorded unless the Hello is fully valid.
        #[test]
        fn fuzz_hello_at_the_hub(m in mutated(b"{}".to_vec()), seed in any::<u8>()) {
            let (hub, _dir, t) = hub();
            let valid = hello_json(&t);
            let input = if seed % 2 == 0 { m } else {
                let mut v = valid.clone();
                let i = usize::from(seed) % v.len();
                v[i] ^= 1 << (seed % 7);
                v
            };
            if let Ok(Message::Hello(h)) = serde_json::from_slice::<Message>(&input) {
                let r = hub.handle_hello(&h, None, unix_now());
                if r.is_err() {
                    prop_assert!(hub.inventory().list().is_empty());
                }
            }
        }
    }
}

/// Revocation is final and keys are unique (issue 14 §4).
mod identity_rules {
    use super::*;
    use std::sync::Mutex;

    /// Records every `accepted` call (where the daemon writes `enroll.accepted`).
    #[derive(Default)]
    struct Accepted(Mutex<Vec<String>>);
    impl EnrollHook for Accepted {
        fn review(&self, _: &EnrollRequest) -> HookDecision {
            // slow the review down so racing attempts all pass it before one consumes
            std::thread::sleep(Duration::from_millis(20));
            HookDecision::Approve {
                extra_tags: BTreeMap::new(),
            }
        }
        fn accepted(&self, host: &HostRecord, _: Option<std::net::IpAddr>) -> Result<(), String> {
            self.0.lock().unwrap().push(host.name.clone());
            Ok(())
        }
    }

    /// `enroll.accepted` is written only once the nonce is consumed: of 8 racing attempts
    /// with one token (all reviewed), exactly one is reported accepted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accepted_is_reported_once_per_consumed_invite() {
        let hook = Arc::new(Accepted::default());
        let th = start_hub_with(ServerConfig::default(), None, None, Some(hook.clone())).await;
        let (t, _) = th.hub.invite(&req("race2"), unix_now()).unwrap();
        let t = Arc::new(t);
        let mut tasks = Vec::new();
        for i in 0..8 {
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                let k = keys(&ssh_key_for(&format!("racer{i}")));
                enroll_client(&t, &k, &ClientOptions::default()).await
            }));
        }
        let mut ok = 0;
        for task in tasks {
            if task.await.unwrap().is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 1);
        assert_eq!(*hook.0.lock().unwrap(), vec!["race2".to_string()]);
        // a replay of the used token is never reported accepted
        let _ = enroll_client(&t, &keys(&ssh_key_for("late")), &ClientOptions::default()).await;
        assert_eq!(hook.0.lock().unwrap().len(), 1);
        th.stop().await;
    }

    /// A WireGuard key or SSH host key already held by another host is refused, whatever the
    /// name or state of that host; nothing is recorded and the invite stays usable.
    #[tokio::test]
    async fn keys_held_by_another_host_are_refused() {
        let th = start_hub().await;
        let now = unix_now();
        let (t1, _) = th.hub.invite(&req("one"), now).unwrap();
        let k1 = keys(&ssh_key_for("one"));
        enroll_client(&t1, &k1, &ClientOptions::default())
            .await
            .unwrap();

        // the same WireGuard key, another SSH key
        let (t2, _) = th.hub.invite(&req("two"), now).unwrap();
        let mut same_wg = keys(&ssh_key_for("two"));
        same_wg.wg_public = k1.wg_public;
        let e = enroll_client(&t2, &same_wg, &ClientOptions::default())
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("WireGuard public key") && e.to_string().contains("one"),
            "{e}"
        );
        // the same SSH host key (another comment), another WireGuard key
        let same_ssh = keys(&format!("{} other-comment", ssh_key_for("one")));
        let e = enroll_client(&t2, &same_ssh, &ClientOptions::default())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("SSH host key"), "{e}");
        assert!(th.hub.inventory().get("two").is_none(), "nothing recorded");
        // the invite is still good for a machine with its own keys
        enroll_client(&t2, &keys(&ssh_key_for("two")), &ClientOptions::default())
            .await
            .unwrap();

        // a revoked host's keys stay taken: its replacement must bring new ones
        th.hub.revoke_host("one", now).unwrap();
        let (t3, _) = th.hub.reinvite(&req("one"), now).unwrap();
        let e = enroll_client(&t3, &k1, &ClientOptions::default())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("already held"), "{e}");
        th.stop().await;
    }

    /// An SSH host key with a newline or other control character never reaches the inventory
    /// (it would be written to known_hosts).
    #[tokio::test]
    async fn ssh_host_keys_with_control_characters_are_refused() {
        let th = start_hub().await;
        let (t, _) = th.hub.invite(&req("ctl"), unix_now()).unwrap();
        for evil in [
            format!(
                "{} x\n@cert-authority * ssh-ed25519 AAAA",
                ssh_key_for("ctl")
            ),
            format!("{}\r", ssh_key_for("ctl")),
            format!("{} a\u{1b}[2Jb", ssh_key_for("ctl")),
        ] {
            // the target's own check refuses it first; the hub's check is the one that counts
            let r = enroll_client(&t, &keys(&evil), &ClientOptions::default()).await;
            assert!(r.is_err(), "{evil:?}");
        }
        assert!(th.hub.inventory().list().is_empty());
        th.stop().await;
    }

    /// Peers are admitted only for an active host with exactly that key, under the inventory
    /// lock: after a revocation or removal, an in-flight enrollment event or key rotation
    /// admits nothing.
    #[test]
    fn admission_checks_the_state_under_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let inv = Inventory::open(dir.path()).unwrap();
        let h = HostRecord {
            name: "a1".into(),
            overlay_ip: "10.99.0.2".parse().unwrap(),
            wg_public_key: "key-1".into(),
            ssh_host_key: ssh_key_for("a1"),
            hostname: String::new(),
            tags: BTreeMap::new(),
            groups: vec![],
            enrolled_at: 1,
            last_seen: None,
            state: HostState::Active,
            revoked_at: None,
            ssh_user: None,
        };
        inv.insert(h.clone()).unwrap();
        assert_eq!(inv.admit("a1", "key-1", |_| 7).unwrap(), 7);
        // a rotation to a key the inventory does not hold is not admitted
        assert!(inv.admit("a1", "key-2", |_| ()).is_err());
        inv.mark_revoked("a1", 2).unwrap();
        let mut ran = false;
        assert!(inv.admit("a1", "key-1", |_| ran = true).is_err());
        assert!(!ran, "a revoked host is never admitted");
        // a rotation recorded after the revocation is refused too
        assert!(inv.set_wg_key("a1", "key-3").is_err());
        inv.remove("a1").unwrap();
        assert!(inv.admit("a1", "key-1", |_| ()).is_err());
    }
}

/// Invite key epochs: the token format both ways (tokens without `key_epoch` are epoch 0), and
/// tokens of a retired key enrolling after a rotation, over real TCP.
mod invite_key_rotation {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use tether_enroll::invite_keys::{epoch_name, key_id};
    use tether_enroll::token::issue_with_epoch;

    fn spec(name: &str) -> InviteSpec {
        InviteSpec {
            name: name.into(),
            overlay_ip: "10.99.0.9".parse().unwrap(),
            tags: BTreeMap::new(),
            groups: vec![],
            ttl_secs: 3600,
        }
    }

    fn payload_json(t: &Token) -> serde_json::Value {
        t.expose(|s| {
            let b64 = s
                .strip_prefix("tether1.")
                .unwrap()
                .split('.')
                .next()
                .unwrap();
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(b64).unwrap()).unwrap()
        })
    }

    fn sb(k: &[u8]) -> SecretBox {
        SecretBox::from_slice(k).unwrap()
    }

    fn ring(k0: &[u8], later: &[(u32, &[u8])]) -> InviteKeyRing {
        let mut r = InviteKeyRing::from(sb(k0));
        for (e, k) in later {
            r.insert(*e, sb(k)).unwrap();
        }
        r
    }

    /// A token of epoch 0 carries no `key_epoch` (it is exactly what hubs issued before
    /// rotation existed), reads back as epoch 0, and verifies against a ring with newer epochs.
    #[test]
    fn epoch_zero_tokens_have_no_epoch_field_and_verify_as_epoch_zero() {
        let (k0, k1) = (random32(), random32());
        let id = identity("127.0.0.1:1", random32());
        let now = unix_now();
        let (t, _) = issue(&sb(&k0), &id, &spec("old1"), now).unwrap();
        let json = payload_json(&t);
        assert!(json.get("key_epoch").is_none(), "{json}");
        let p = t.parse(now).unwrap();
        assert_eq!(p.payload().key_epoch, 0);
        p.verify_with(&ring(&k0, &[(1, &k1)]), &id.hub_id(), now)
            .unwrap();
        // The same holds for a payload written by hand with an explicit `"key_epoch": 0`.
        let mut explicit = json.clone();
        explicit["key_epoch"] = 0.into();
        let checked = token::decode_payload(&serde_json::to_vec(&explicit).unwrap()).unwrap();
        assert_eq!(checked.payload.key_epoch, 0);
    }

    /// A token of epoch N names N, verifies only with N's key, and its epoch cannot be edited.
    #[test]
    fn tokens_name_their_epoch_and_verify_only_with_its_key() {
        let (k0, k1, k2) = (random32(), random32(), random32());
        let id = identity("127.0.0.1:1", random32());
        let hub_id = id.hub_id();
        let now = unix_now();
        let (t, _) = issue_with_epoch(&sb(&k1), 1, &id, &spec("new1"), now).unwrap();
        assert_eq!(payload_json(&t)["key_epoch"], 1);
        let p = t.parse(now).unwrap();
        assert_eq!(p.payload().key_epoch, 1);
        p.verify_with(&ring(&k0, &[(1, &k1)]), &hub_id, now)
            .unwrap();
        // A hub that does not hold epoch 1 refuses it; so does one whose epoch 1 is another key.
        assert!(matches!(
            p.verify_with(&ring(&k0, &[]), &hub_id, now),
            Err(EnrollError::Tampered)
        ));
        assert!(matches!(
            p.verify_with(&ring(&k0, &[(1, &k2)]), &hub_id, now),
            Err(EnrollError::Tampered)
        ));
        // Moving the token to another epoch (even one whose key the hub holds) breaks its MAC.
        let moved = t.expose(|s| {
            let mut parts = s.strip_prefix("tether1.").unwrap().split('.');
            let (b64, mac) = (parts.next().unwrap(), parts.next().unwrap());
            let mut json: serde_json::Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(b64).unwrap()).unwrap();
            json["key_epoch"] = 0.into();
            let b64 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&json).unwrap());
            format!("tether1.{b64}.{mac}")
        });
        let p = parse_token(&moved).unwrap();
        assert!(matches!(
            p.verify_with(&ring(&k0, &[(1, &k1)]), &hub_id, now),
            Err(EnrollError::Tampered)
        ));
    }

    /// A retired key's token is accepted only until it expires.
    #[test]
    fn retired_key_tokens_verify_until_they_expire() {
        let (k0, k1) = (random32(), random32());
        let id = identity("127.0.0.1:1", random32());
        let now = unix_now();
        let (t, r) = issue(&sb(&k0), &id, &spec("old2"), now).unwrap();
        let p = parse_token(&t.expose(str::to_owned)).unwrap();
        let keys = ring(&k0, &[(1, &k1)]);
        p.verify_with(&keys, &id.hub_id(), r.expires_at - 1)
            .unwrap();
        assert!(matches!(
            p.verify_with(&keys, &id.hub_id(), r.expires_at),
            Err(EnrollError::Expired { .. })
        ));
    }

    #[test]
    fn ring_never_replaces_a_key_and_names_keys_without_showing_them() {
        let (k0, k1) = (random32(), random32());
        let mut r = ring(&k0, &[(1, &k1)]);
        assert!(r.insert(1, sb(&random32())).is_err());
        assert!(r.insert(0, sb(&random32())).is_err());
        assert!(
            r.insert(2, sb(&[7u8; 8])).is_err(),
            "short keys are refused"
        );
        assert_eq!(r.epochs(), vec![0, 1]);
        assert_eq!(r.current().0, 1);
        let dbg = format!("{r:?}");
        assert!(dbg.contains(&key_id(&sb(&k1))), "{dbg}");
        assert!(!dbg.contains(&hex::encode(k1)), "{dbg}");
        assert_eq!(epoch_name(0), "tetherd.invite-key");
        assert_eq!(epoch_name(3), "tetherd.invite-key.e3");
    }

    /// Over real TCP: an invite made before the rotation still enrolls after it, a new invite
    /// names the new epoch and enrolls, and a token MACed with a key the hub lacks is refused.
    #[tokio::test]
    async fn old_and_new_invites_enroll_after_a_rotation() {
        let th = start_hub().await;
        let now = unix_now();
        let (before, _) = th.hub.invite(&req("pre1"), now).unwrap();
        assert_eq!(payload_json(&before).get("key_epoch"), None);
        let k1 = random32();
        let r = th.hub.add_invite_key(1, sb(&k1)).unwrap();
        assert_eq!((r.epoch, r.previous_epoch), (1, 0));
        assert_eq!(r.key_id, key_id(&sb(&k1)));
        assert!(th.hub.add_invite_key(1, sb(&random32())).is_err());
        assert_eq!(th.hub.invite_key_epochs(), (1, vec![0, 1]));
        let (after, _) = th.hub.invite(&req("post1"), now).unwrap();
        assert_eq!(payload_json(&after)["key_epoch"], 1);

        let w = enroll_client(&before, &keys(TARGET_SSH_A), &ClientOptions::default())
            .await
            .unwrap();
        assert_eq!(w.name, "pre1");
        let w = enroll_client(&after, &keys(TARGET_SSH_B), &ClientOptions::default())
            .await
            .unwrap();
        assert_eq!(w.name, "post1");

        // Epoch 2 with a key the hub never had: refused, nothing recorded.
        let (forged, _) = issue_with_epoch(
            &sb(&random32()),
            2,
            &identity(&th.addr.to_string(), th.wg),
            &spec("forged1"),
            now,
        )
        .unwrap();
        let e = enroll_client(
            &forged,
            &keys(&ssh_key_for("forged1")),
            &ClientOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, EnrollError::Tampered), "{e}");
        assert!(th.hub.inventory().get("forged1").is_none());
        th.stop().await;
    }
}
