//! `tether mcp serve` end to end: a real hub and target on loopback, driven by the official
//! Python MCP SDK client (`mcp` from PyPI, in a venv this test creates under
//! `$HOME/.cache/tether-mcp-venv`) and by raw JSON-RPC lines for the 2025-06-18 handshake.
//! Checks the tool list and schemas, allowed / failed / denied / oversized calls as `isError`
//! results, progress, cancellation stopping the remote command, and `via: mcp` in the audit.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tether_e2e::*;

use crate::exec::{audit_records, enrolled, wait_online};

const POLICY: &str = "\n[policy]\nmode = \"enforce\"\n[[policy.deny_commands]]\nid = \"no-reboot\"\npattern = '^reboot\\b'\n";

fn text_of(result: &Value) -> String {
    result["content"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// Whether a process whose command line contains `needle` runs on this machine.
fn running(needle: &str) -> bool {
    Command::new("pgrep")
        .args(["-f", needle])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn python_sdk_client_lists_and_calls_tools_under_policy_and_audit() {
    let venv = match python_venv("tether-mcp-venv", "mcp>=2,<3") {
        Ok(v) => v,
        Err(why) => {
            eprintln!("SKIP: the Python MCP SDK is not available: {why}");
            return;
        }
    };
    let hub = Daemon::start("hub", POLICY);
    let _t1 = enrolled(&hub, "m1");
    wait_online(&hub, &["m1"]);

    let script = repo().join("tests/e2e/mcp_client.py");
    let out = Command::new(venv.join("bin/python"))
        .arg(&script)
        .arg(bin("tether"))
        .arg(&hub.socket)
        .arg("m1")
        .output()
        .expect("run the Python MCP client");
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    let seen: Value = serde_json::from_str(stdout(&out).trim())
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&out), stderr(&out)));

    // The newest protocol version both SDKs know.
    assert_eq!(seen["protocol_version"], "2026-07-28", "{seen}");

    // Tools: snake_case names of at most 64 bytes, each with input and output schemas.
    let tools = seen["tools"].as_object().expect("tools");
    for name in [
        "hosts_list",
        "hosts_show",
        "exec",
        "vpn_status",
        "audit_tail",
    ] {
        let t = &tools[name];
        assert_eq!(t["inputSchema"]["type"], "object", "{name}: {t}");
        assert_eq!(t["outputSchema"]["type"], "object", "{name}: {t}");
    }
    for name in tools.keys() {
        assert!(
            name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "tool name {name:?}"
        );
    }
    assert!(
        tools["exec"]["inputSchema"]["required"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("command")) && r.contains(&json!("selector")))
    );

    // hosts_list: structured, the target online.
    let hl = &seen["hosts_list"];
    assert_ne!(hl["isError"], true, "{hl}");
    assert_eq!(hl["structuredContent"]["hosts"][0]["name"], "m1", "{hl}");
    assert_eq!(hl["structuredContent"]["hosts"][0]["online"], true, "{hl}");
    // An unknown host is a tool error that says so, not a protocol error.
    let unknown = &seen["hosts_show_unknown"];
    assert_eq!(unknown["isError"], true, "{unknown}");
    assert!(text_of(unknown).contains("nope"), "{unknown}");

    // exec allowed: output and exit code per host, progress per finished host.
    let ok = &seen["exec_ok"];
    assert_ne!(ok["isError"], true, "{ok}");
    let run = &ok["structuredContent"]["hosts"][0];
    assert_eq!(run["host"], "m1", "{ok}");
    assert_eq!(run["status"], "ok", "{ok}");
    assert_eq!(run["exit_code"], 0, "{ok}");
    assert_eq!(run["stdout"], "hello-from-mcp\n", "{ok}");
    assert_eq!(
        seen["exec_progress"],
        json!([[1.0, 1.0, "1 of 1 hosts finished"]])
    );

    // A non-zero exit is a tool error carrying the result.
    let e3 = &seen["exec_exit3"];
    assert_eq!(e3["isError"], true, "{e3}");
    assert_eq!(e3["structuredContent"]["hosts"][0]["exit_code"], 3, "{e3}");
    assert_eq!(
        e3["structuredContent"]["hosts"][0]["stdout"], "out\n",
        "{e3}"
    );

    // Denied by policy: a tool error naming the rule; nothing reached the target.
    let denied = &seen["exec_denied"];
    assert_eq!(denied["isError"], true, "{denied}");
    assert!(text_of(denied).contains("no-reboot"), "{denied}");
    // Over the command limit, and a selector matching nothing: tool errors that say why.
    let long = &seen["exec_too_long"];
    assert_eq!(long["isError"], true, "{long}");
    assert!(text_of(long).contains("8192"), "{long}");
    let none = &seen["exec_no_hosts"];
    assert_eq!(none["isError"], true, "{none}");

    // audit_tail as the daemon's admin (root): the MCP requests are there.
    let tail = &seen["audit_tail"];
    assert_ne!(tail["isError"], true, "{tail}");
    assert!(
        tail["structuredContent"]["records"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "{tail}"
    );
    assert_eq!(seen["vpn_status"]["structuredContent"]["role"], "hub");

    // Cancellation stopped the remote command (the target's sleep is gone), and the session
    // went on working.
    assert_eq!(seen["remote_started"], true, "{seen}");
    assert_eq!(seen["cancelled"], true, "{seen}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while running("sleep 4242") {
        assert!(
            Instant::now() < deadline,
            "the cancelled remote command still runs"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        seen["after_cancel"]["structuredContent"]["hosts"][0]["stdout"],
        "still-here\n"
    );

    // The audit says these came through MCP, by how they arrived.
    let requested = audit_records(&hub, "exec.requested");
    assert!(!requested.is_empty());
    assert!(
        requested.iter().all(|r| r["actor"]["via"] == "mcp"),
        "{requested:?}"
    );
    let denials = audit_records(&hub, "exec.denied");
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert_eq!(denials[0]["actor"]["via"], "mcp");
    assert!(
        !requested
            .iter()
            .any(|r| r["data"].to_string().contains("reboot")),
        "a denied command was sent: {requested:?}"
    );
}

/// An older client on the 2025-06-18 handshake, as raw JSON-RPC lines: the server agrees to
/// that version, lists the tools and answers a denied call as a tool error.
#[test]
fn raw_2025_06_18_client_is_served() {
    let hub = Daemon::start("hub", POLICY);
    let mut child = Command::new(bin("tether"))
        .arg("--socket")
        .arg(&hub.socket)
        .args(["mcp", "serve"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tether mcp serve");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut send = |v: Value| {
        writeln!(stdin, "{v}").expect("write");
        stdin.flush().expect("flush");
    };
    let mut answer = |id: u64| -> Value {
        loop {
            let line = lines.next().expect("an answer").expect("read");
            let v: Value = serde_json::from_str(&line).expect("JSON-RPC line");
            if v["id"] == id {
                return v;
            }
        }
    };
    send(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw-test", "version": "0"}}}),
    );
    let init = answer(1);
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18", "{init}");
    assert_eq!(init["result"]["serverInfo"]["name"], "tether", "{init}");
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}));
    let list = answer(2);
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        names.contains(&"exec") && names.contains(&"hosts_list"),
        "{list}"
    );
    send(
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "exec", "arguments": {"selector": "all", "command": "reboot"}}}),
    );
    let call = answer(3);
    assert_eq!(call["result"]["isError"], true, "{call}");
    // Unknown argument: the input schema is enforced (a protocol-level invalid-params error
    // or a tool error, never a run).
    send(
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
        "name": "exec", "arguments": {"selector": "all", "command": "true", "sudo": true}}}),
    );
    let bad = answer(4);
    assert!(
        bad["error"].is_object() || bad["result"]["isError"] == true,
        "{bad}"
    );
    drop(send);
    drop(stdin);
    let status = child.wait().expect("wait");
    assert!(status.success(), "tether mcp serve exited {status}");
}
