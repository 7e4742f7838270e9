//! Body limits, unknown routes, bad JSON, idle connections.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use tether_e2e::Daemon;

fn error_code(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    v["error"]["code"].as_str().unwrap().to_owned()
}

#[test]
fn oversized_bodies_get_413_and_change_nothing() {
    let d = Daemon::start("hub", "");
    // Declared too large: refused before reading.
    let (status, body) = d.request("POST", "/v1/reload", &[("Content-Length", "2000000")], b"");
    assert_eq!(status, 413);
    assert_eq!(error_code(&body), "body_too_large");
    // Chunked, no length: refused once the limit is crossed.
    let chunk = vec![b' '; 64 * 1024];
    let mut chunked = Vec::new();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(&chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, body) = d.request(
        "POST",
        "/v1/reload",
        &[("Transfer-Encoding", "chunked")],
        &chunked,
    );
    assert_eq!(status, 413);
    assert_eq!(error_code(&body), "body_too_large");
    // Exactly at the limit is fine (whitespace is an empty body).
    let (status, _) = d.request("POST", "/v1/reload", &[], &vec![b' '; 1024 * 1024]);
    assert_eq!(status, 200);
    // The daemon still serves.
    assert_eq!(d.request("GET", "/v1/status", &[], b"").0, 200);
}

#[test]
fn unknown_routes_wrong_methods_and_bad_json_get_json_errors() {
    let d = Daemon::start("hub", "");
    let (status, body) = d.request("GET", "/v1/nope", &[], b"");
    assert_eq!((status, error_code(&body).as_str()), (404, "not_found"));
    let (status, body) = d.request("DELETE", "/v1/status", &[], b"");
    assert_eq!(
        (status, error_code(&body).as_str()),
        (405, "method_not_allowed")
    );
    let (status, body) = d.request("POST", "/v1/reload", &[], b"{not json");
    assert_eq!((status, error_code(&body).as_str()), (400, "invalid_json"));
    let (status, body) = d.request("POST", "/v1/reload", &[], b"{\"surprise\":1}");
    assert_eq!((status, error_code(&body).as_str()), (400, "invalid_json"));
    let (status, body) = d.request("GET", "/healthz", &[], b"");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn slow_and_idle_connections_are_closed() {
    let d = Daemon::start("hub", "idle_timeout_secs = 1\n");
    // A client that starts a request and never finishes its headers.
    let mut slow = UnixStream::connect(&d.socket).unwrap();
    slow.write_all(b"GET /v1/status HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    let waited = t0.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "slow client cut after ~1 s, took {waited:?}"
    );

    // A client that connects and says nothing.
    let mut idle = UnixStream::connect(&d.socket).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t0 = Instant::now();
    let _ = idle.read_to_end(&mut buf);
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "idle client cut, took {:?}",
        t0.elapsed()
    );
    // Others are unaffected.
    assert_eq!(d.request("GET", "/v1/status", &[], b"").0, 200);
}

/// A refusal given before reading the body (unknown route, wrong method, an upgrade route
/// asked without `Upgrade`, a streamed upload refused up front) still reads a small body that
/// arrives late, so the
/// answer is not lost to a closed connection and the connection stays usable. Before, hyper
/// closed it with the body unread: the client's write failed (EPIPE), or through a TCP bridge
/// the client got a reset instead of the answer (schemathesis saw "connection aborted").
#[test]
fn early_refusals_read_a_late_body_and_keep_the_connection() {
    let d = Daemon::start("hub", "");
    for (method, path, want) in [
        ("POST", "/v1/nosuch", 404),
        ("DELETE", "/v1/status", 405),
        ("POST", "/v1/session/l", 426),
        // A streamed upload its handler refuses before reading (a relative path).
        ("POST", "/v1/fs/put?selector=t1&path=relative", 400),
    ] {
        let body = br#"{"host":""}"#;
        let mut s = UnixStream::connect(&d.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
        // The answer is written before the body comes.
        std::thread::sleep(Duration::from_millis(200));
        s.write_all(body)
            .unwrap_or_else(|e| panic!("{method} {path}: the body could not follow: {e}"));
        s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap_or_else(|e| panic!("{method} {path}: a second request could not follow: {e}"));
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let got = String::from_utf8_lossy(&got);
        let statuses: Vec<&str> = got
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| &got[i + 9..i + 12])
            .collect();
        assert_eq!(
            statuses,
            vec![want.to_string().as_str(), "200"],
            "{method} {path}: {got}"
        );
    }
}
