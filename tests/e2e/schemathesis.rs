//! The control API under property-based fuzzing against its own OpenAPI document
//! (`daemon/control/openapi.yaml`), with schemathesis: generated requests (examples, coverage,
//! fuzzing and stateful sequences) must never get a 5xx, only documented statuses, and
//! responses that match their schemas. A real hub daemon as admin, bridged from a loopback TCP
//! port to its Unix socket with socat. Bounded to 60 s. Schemathesis comes from PyPI into a
//! venv this test creates (kept in `$HOME/.cache/tether-schemathesis` between runs); when it
//! cannot be installed, or socat is missing, the test says `SKIP:` and why.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tether_e2e::*;

/// The venv with schemathesis, created on first use; `Err` (with the reason) if it can't be.
fn schemathesis() -> Result<PathBuf, String> {
    let st = python_venv("tether-schemathesis", "schemathesis>=4,<5")?.join("bin/st");
    if st.is_file() {
        Ok(st)
    } else {
        Err("schemathesis installed no `st` command".into())
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn control_api_holds_under_schemathesis() {
    let st = match schemathesis() {
        Ok(st) => st,
        Err(why) => {
            eprintln!("SKIP: schemathesis is not available: {why}");
            return;
        }
    };
    if Command::new("socat")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("SKIP: socat is not installed (apt-get install socat)");
        return;
    }
    let d = Daemon::start("hub", "");
    let port = free_port();
    let _bridge = Kill(
        Command::new("socat")
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
            .arg(format!("UNIX-CONNECT:{}", d.socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn socat"),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "socat did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let schema = repo().join("daemon/control/openapi.yaml");
    let report = d.dir.path().join("schemathesis.txt");
    // `audit/follow` never ends by design (it is a live stream): schemathesis would only time
    // out on it. Every other operation is exercised.
    let out = Command::new("timeout")
        .args(["-k", "5", "60"])
        .arg(&st)
        .arg("run")
        .arg(&schema)
        .arg("--url")
        .arg(format!("http://127.0.0.1:{port}"))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--exclude-path",
            "/v1/audit/follow",
            "--max-examples",
            "25",
            "--request-timeout",
            "10",
            "--generation-deterministic",
            "--suppress-health-check",
            "all",
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        // schemathesis keeps its example database in the working directory: the temp dir
        .current_dir(d.dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run schemathesis");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::write(&report, &text);
    let code = out.status.code();
    assert_ne!(
        code,
        Some(124),
        "schemathesis did not finish within 60 s:\n{text}"
    );
    assert!(
        out.status.success(),
        "schemathesis found failures (exit {code:?}):\n{text}\n--- daemon log ---\n{}",
        d.log()
    );
    assert!(
        !text.contains("Server error") && !text.contains("500 Internal"),
        "{text}"
    );
}
