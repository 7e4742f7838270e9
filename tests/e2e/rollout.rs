//! Mass rollout through one NAT address: many `tetherd enroll` from 127.0.0.1 at once. Holders
//! of valid tokens get their own, higher per-address budget once the token's MAC checks out;
//! refused attempts are told when to come back and `tetherd enroll` retries with backoff and
//! jitter. Unauthenticated garbage from the same address is still limited to 5/s, burst 10.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::Value;
use tether_e2e::{Daemon, code, stderr, stdout};

use crate::membership::{enroll, invite, json, target_dir};

/// Sends one garbage frame and returns the hub's error frame (JSON), if any.
fn garbage(endpoint: &str) -> Option<Value> {
    let mut s = std::net::TcpStream::connect(endpoint).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let body = br#"{"type":"hello","payload":"x"}"#;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    let _ = s.write_all(&frame);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    serde_json::from_slice(buf.get(4..)?).ok()
}

/// `n` garbage attempts at once (the hub lingers ~200 ms on each refusal, so sequential
/// attempts would refill the 5/s bucket as fast as they drain it).
fn flood(endpoint: &str, n: usize) -> Vec<Value> {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let e = endpoint.to_owned();
            std::thread::spawn(move || garbage(&e))
        })
        .collect();
    handles
        .into_iter()
        .filter_map(|h| h.join().unwrap())
        .collect()
}

#[test]
fn thirty_targets_behind_one_address_all_enroll_and_garbage_is_still_limited() {
    let hub = Daemon::start("hub", "");
    let n = 30;
    let tokens: Vec<String> = (0..n)
        .map(|i| invite(&hub, &format!("nat{i}"), &["--tag", "env=prod"]))
        .collect();
    let started = Instant::now();
    let handles: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            std::thread::spawn(move || {
                let (dir, config) = target_dir();
                let out = enroll(&config, &token, &[]);
                drop(dir);
                out
            })
        })
        .collect();
    let outs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let took = started.elapsed();
    for (i, out) in outs.iter().enumerate() {
        assert_eq!(
            code(out),
            0,
            "target nat{i}: {}{}",
            stdout(out),
            stderr(out)
        );
    }
    eprintln!("{n} concurrent enrollments from 127.0.0.1 in {took:?}");
    let hosts = json(&hub.tether(&["--json", "hosts", "list"]));
    assert_eq!(hosts["hosts"].as_array().unwrap().len(), n);

    // Garbage from the same address: after the burst of 10 the hub refuses at once, saying
    // when to retry, and the hub core never sees those attempts.
    let endpoint = json(&hub.tether(&["--json", "vpn", "status"]))["enroll_endpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    let answers = flood(&endpoint, 25);
    let limited: Vec<&Value> = answers
        .iter()
        .filter(|v| v["code"] == "rate_limited")
        .collect();
    assert!(
        limited.len() >= 10,
        "garbage is limited: {} of {} answers were rate_limited: {answers:?}",
        limited.len(),
        answers.len()
    );
    for v in &limited {
        let ms = v["retry_after_ms"].as_u64().unwrap_or(0);
        assert!((1..=1000).contains(&ms), "a retry-after in (0, 1 s]: {v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("takes the next attempt in"),
            "{v}"
        );
    }
    // A valid token right after the flood still gets through: refused at first (the address's
    // unauthenticated budget is spent), `tetherd enroll` waits as told and retries.
    let token = invite(&hub, "after-flood", &[]);
    flood(&endpoint, 15);
    let (dir, config) = target_dir();
    let out = enroll(&config, &token, &[]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    drop(dir);
    // With retries switched off, the refusal is reported at once and names the wait.
    // Garbage keeps coming from several threads meanwhile, so the bucket stays empty; an
    // attempt can still catch the one token a refill (every 200 ms) brings before the next
    // garbage does and enroll, which is correct, so a few tries are allowed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooders: Vec<_> = (0..8)
        .map(|_| {
            let (stop, endpoint) = (stop.clone(), endpoint.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = garbage(&endpoint);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut refused = None;
    for attempt in 0..6 {
        let token = invite(&hub, &format!("no-retry{attempt}"), &[]);
        let (dir, config) = target_dir();
        let out = enroll(&config, &token, &["--retry-for", "0"]);
        drop(dir);
        if code(&out) != 0 {
            refused = Some(out);
            break;
        }
        eprintln!("attempt {attempt} caught a refilled token and enrolled");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    let out = refused.expect("with garbage flooding, an enrollment without retries is refused");
    assert!(
        stderr(&out).contains("too many enrollment attempts from this address")
            && stderr(&out).contains("takes the next attempt in"),
        "{}",
        stderr(&out)
    );
    // Every enrolled host is in the audit chain, which verifies.
    assert_eq!(code(&hub.tether(&["audit", "verify"])), 0);
}
