//! The relay role as a real process: `tetherd run --role relay` on 127.0.0.1, configured from
//! `tetherd relay show --json`, used by real `tether_relay::RelayClient`s (allowed keys talk,
//! an unlisted key is refused), `/healthz` open and `/metrics` behind the vault's bearer token,
//! TLS 1.2 refused, SIGTERM → GoingAway and exit 0 within 5 s; the operator's own certificate,
//! the default allowlist created empty and re-read on change, SIGHUP (a changed `[relay]` needs a
//! restart, a broken config is refused); a bad `[relay]` section refused with exit 2 before
//! anything is created.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tether_e2e::{bin, code, stderr, stdout};
use tether_relay::client::Incoming;
use tether_relay::{RelayClient, RelayError, RelayTarget};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use x25519_dalek::{PublicKey, StaticSecret};

/// A running relay process, killed on drop.
struct RelayProc {
    child: Child,
    log: PathBuf,
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RelayProc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `limit` for the process to exit.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

fn wait_log(r: &RelayProc, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !r.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not in the log:\n{}",
            r.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn b64(k: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(k)
}

fn public(s: &StaticSecret) -> [u8; 32] {
    PublicKey::from(s).to_bytes()
}

/// Starts `tetherd run` with `args` on `config` and waits for systemd's READY=1 on a notify
/// socket of our own.
fn start(dir: &Path, config: &Path, args: &[&str], env: &[(&str, &str)]) -> RelayProc {
    let notify_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let log = dir.join("relay.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(bin("tetherd"));
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .args(args)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let p = RelayProc {
        child: cmd.spawn().unwrap(),
        log,
    };
    let mut buf = [0u8; 256];
    let n = notify
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no READY from the relay ({e}):\n{}", p.log()));
    assert!(
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "READY=1"),
        "{}",
        p.log()
    );
    p
}

fn tetherd(args: &[&str], config: &Path) -> Output {
    Command::new(bin("tetherd"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `tetherd relay show --json` as the target clients use.
fn show(config: &Path) -> (RelayTarget, serde_json::Value) {
    let out = tetherd(&["relay", "show", "--json"], config);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["addr", "cert_sha256", "name", "relay_key", "server_name"],
        "{v}"
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(v["relay_key"].as_str().unwrap())
        .unwrap();
    let target = RelayTarget {
        addr: v["addr"].as_str().unwrap().to_owned(),
        server_name: v["server_name"].as_str().unwrap().to_owned(),
        cert_sha256: v["cert_sha256"].as_str().unwrap().to_owned(),
        relay_key: key.try_into().unwrap(),
    };
    (target, v)
}

async fn connect(t: &RelayTarget, s: &StaticSecret) -> Result<RelayClient, RelayError> {
    RelayClient::connect(t, s, Duration::from_secs(10)).await
}

async fn next(c: &mut RelayClient) -> Option<Incoming> {
    tokio::time::timeout(Duration::from_secs(10), c.recv())
        .await
        .ok()
        .flatten()
}

/// One HTTP/1.1 GET over TLS 1.3 (pinned certificate); the whole answer.
async fn get(t: &RelayTarget, path: &str, token: Option<&str>) -> String {
    let cfg = tether_relay::tls::client_config(&t.cert_sha256).unwrap();
    let tcp = tokio::net::TcpStream::connect(&t.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(t.server_name.clone()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap();
    let auth = token
        .map(|a| format!("authorization: Bearer {a}\r\n"))
        .unwrap_or_default();
    tls.write_all(format!("GET {path} HTTP/1.1\r\nhost: relay\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn relay_role_forwards_for_allowed_keys_refuses_the_rest_and_drains_on_sigterm() {
    let dir = tempfile::Builder::new()
        .prefix("tether-e2e-relay-")
        .tempdir()
        .unwrap();
    let (a, b, c) = (
        StaticSecret::from([11u8; 32]),
        StaticSecret::from([12u8; 32]),
        StaticSecret::from([13u8; 32]),
    );
    let allowlist = dir.path().join("allowed-keys");
    std::fs::write(
        &allowlist,
        format!(
            "# hub\n{}\n{}  # target\n",
            b64(&public(&a)),
            b64(&public(&b))
        ),
    )
    .unwrap();
    let port = free_port();
    let config = dir.path().join("tetherd.toml");
    // No role in the file: `--role relay` gives it.
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[relay]\nlisten = \"127.0.0.1:{port}\"\nallowlist = \"{}\"\nmetrics_token_secret = \"relay-metrics\"\nrate = 50000000\nburst = 5000000\n",
            dir.path().join("state").display(),
            allowlist.display(),
        ),
    )
    .unwrap();
    let mut relay = start(dir.path(), &config, &["--role", "relay"], &[]);
    let (target, shown) = show(&config);
    assert_eq!(target.addr, format!("127.0.0.1:{port}"));
    assert_eq!(target.server_name, "127.0.0.1");
    // The log names the self-signed certificate's pin, the same one `show` prints.
    let log = relay.log();
    assert!(
        log.contains(shown["cert_sha256"].as_str().unwrap()) && log.contains("self-signed"),
        "{log}"
    );
    // The text form carries the same values as a [[tunnel.relays]] snippet.
    let text = stdout(&tetherd(&["relay", "show"], &config));
    assert!(text.contains("[[tunnel.relays]]"), "{text}");
    for k in ["addr", "server_name", "cert_sha256", "relay_key"] {
        let line = format!("{k} = \"{}\"", shown[k].as_str().unwrap());
        assert!(text.contains(&line), "{line} missing in:\n{text}");
    }
    let token = stdout(&tetherd(&["relay", "metrics-token"], &config))
        .trim()
        .to_owned();
    assert_eq!(token.len(), 64, "{token:?}");
    // Nothing secret in the log.
    assert!(!relay.log().contains(&token), "{}", relay.log());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = rt.block_on(async {
        let mut ca = connect(&target, &a).await.unwrap();
        let mut cb = connect(&target, &b).await.unwrap();
        assert_eq!(ca.budget, (50_000_000, 5_000_000));
        ca.send(public(&b), b"wireguard ciphertext from a")
            .await
            .unwrap();
        assert_eq!(
            next(&mut cb).await,
            Some(Incoming::Datagram {
                src: public(&a),
                data: b"wireguard ciphertext from a".to_vec()
            })
        );
        for i in 0..20u8 {
            cb.send(public(&a), &[i; 1400]).await.unwrap();
        }
        for i in 0..20u8 {
            assert_eq!(
                next(&mut ca).await,
                Some(Incoming::Datagram {
                    src: public(&b),
                    data: vec![i; 1400]
                })
            );
        }
        // A key not in the allowlist is refused before anything is forwarded.
        match connect(&target, &c).await {
            Err(RelayError::Refused(why)) => assert!(why.contains("allowlist"), "{why}"),
            other => panic!("an unlisted key got {other:?}"),
        }

        // Liveness without a token; metrics only with the vault's token.
        assert!(
            get(&target, "/healthz", None)
                .await
                .starts_with("HTTP/1.1 200")
        );
        assert!(
            get(&target, "/metrics", None)
                .await
                .starts_with("HTTP/1.1 401")
        );
        assert!(
            get(&target, "/metrics", Some("not-the-token"))
                .await
                .starts_with("HTTP/1.1 401")
        );
        let m = get(&target, "/metrics", Some(&token)).await;
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains("tether_relay_connected_keys 2"), "{m}");
        assert!(m.contains("tether_relay_forwarded_total 21"), "{m}");

        // TLS 1.2 is refused.
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::process::Command::new("openssl")
                .args(["s_client", "-tls1_2", "-connect"])
                .arg(&target.addr)
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .expect("openssl s_client hung")
        .expect("openssl (apt-get install openssl)");
        assert!(!out.status.success(), "a TLS 1.2 handshake succeeded");

        // SIGTERM: connected clients hear GoingAway, the process exits 0 within 5 s.
        let started = Instant::now();
        kill(Pid::from_raw(relay.child.id() as i32), Signal::SIGTERM).unwrap();
        assert_eq!(next(&mut ca).await, Some(Incoming::GoingAway));
        assert_eq!(next(&mut cb).await, Some(Incoming::GoingAway));
        started
    });
    let status = relay
        .wait_exit(Duration::from_secs(6))
        .unwrap_or_else(|| panic!("the relay did not exit:\n{}", relay.log()));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exit took {:?}",
        started.elapsed()
    );
    assert!(status.success(), "{status}:\n{}", relay.log());
    assert!(relay.log().contains("tetherd relay stopped"));

    // Started again, it is the same relay: the key and the generated certificate are reused, so
    // what hubs pinned stays valid.
    let again = start(dir.path(), &config, &["--role", "relay"], &[]);
    assert!(
        again.log().contains("using the generated"),
        "{}",
        again.log()
    );
    let (_, shown_again) = show(&config);
    assert_eq!(shown_again, shown);
}

#[test]
fn the_operators_certificate_is_served_and_pinned_and_a_bad_relay_section_exits_2() {
    let dir = tempfile::Builder::new()
        .prefix("tether-e2e-relay-")
        .tempdir()
        .unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=relay.example.test",
            "-addext",
            "subjectAltName=DNS:relay.example.test",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(out.status.success(), "{}", stderr(&out));
    let fingerprint = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let want = stdout(&fingerprint)
        .split('=')
        .nth(1)
        .unwrap()
        .trim()
        .replace(':', "")
        .to_lowercase();
    let port = free_port();
    let state = dir.path().join("state");
    let config = dir.path().join("tetherd.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[relay]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            state.display(),
            cert.display(),
            key.display(),
        ),
    )
    .unwrap();
    // `relay show` before the first start makes the key a first start would (the state
    // directory's lock is free); the relay then uses it.
    let before_start = tetherd(&["relay", "show", "--json"], &config);
    assert_eq!(code(&before_start), 0, "{}", stderr(&before_start));
    let before_start: serde_json::Value = serde_json::from_str(&stdout(&before_start)).unwrap();
    // TETHER_ROLE gives the role this time.
    let relay = start(dir.path(), &config, &[], &[("TETHER_ROLE", "relay")]);
    let out = Command::new(bin("tetherd"))
        .args(["relay", "show", "--json", "--addr"])
        .arg(format!("localhost:{port}"))
        .arg("--server-name")
        .arg("relay.example.test")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["cert_sha256"], want.as_str(), "{v}");
    assert_eq!(v["addr"], format!("localhost:{port}"));
    assert_eq!(v["relay_key"], before_start["relay_key"]);
    assert!(
        !state.join("relay-tls").exists(),
        "generated a certificate anyway"
    );
    // The default allowlist was created empty: our key is refused until it is listed.
    let allowlist = state.join("relay-allowlist");
    assert!(allowlist.is_file());
    let me = StaticSecret::from([21u8; 32]);
    let target = RelayTarget {
        addr: format!("127.0.0.1:{port}"),
        server_name: "relay.example.test".into(),
        cert_sha256: want.clone(),
        relay_key: base64::engine::general_purpose::STANDARD
            .decode(v["relay_key"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert!(matches!(
            connect(&target, &me).await,
            Err(RelayError::Refused(_))
        ));
        std::fs::write(&allowlist, format!("{}\n", b64(&public(&me)))).unwrap();
        // Re-read on change (polled every second).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match connect(&target, &me).await {
                Ok(_) => break,
                Err(e) => assert!(Instant::now() < deadline, "still refused: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    // SIGHUP: a changed [relay] is reported as needing a restart, a broken config is refused;
    // the relay keeps serving either way.
    let hup = |r: &RelayProc| kill(Pid::from_raw(r.child.id() as i32), Signal::SIGHUP).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}rate = 1000000\n")).unwrap();
    hup(&relay);
    wait_log(&relay, "restart the relay to apply it");
    std::fs::write(&config, format!("{text}rate = \"fast\"\n")).unwrap();
    hup(&relay);
    wait_log(&relay, "config reload failed; keeping the running config");
    rt.block_on(async {
        connect(&target, &me).await.unwrap();
    });
    std::fs::write(&config, text).unwrap();
    drop(relay);

    // A bad [relay] section: every problem named, exit 2, nothing created.
    let bad_state = dir.path().join("bad-state");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "role = \"relay\"\nstate_dir = \"{}\"\n[relay]\nlisten = \"relay:443\"\ntls_cert = \"{}\"\nburst = 100\nadmin_keys = [\"not a key\"]\nconn_rate = 0\n",
            bad_state.display(),
            cert.display(),
        ),
    )
    .unwrap();
    let out = Command::new(bin("tetherd"))
        .arg("run")
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let err = stderr(&out);
    for key in [
        "relay.listen (line 4)",
        "relay.tls_key",
        "relay.burst (line 6)",
        "relay.admin_keys[0]",
        "relay.conn_rate (line 8)",
    ] {
        assert!(err.contains(key), "{key} not named in:\n{err}");
    }
    assert!(!bad_state.exists(), "a refused start created {bad_state:?}");
    // `tether config check` says the same without starting anything.
    let out = Command::new(bin("tether"))
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("relay.burst"), "{}", stderr(&out));
}
