//! `tether mcp serve` end to end: a real hub and target on loopback, driven by the official
//! Python MCP SDK client (`mcp` from PyPI, in a venv this test creates under
//! `$HOME/.cache/tether-mcp-venv`) and by raw JSON-RPC lines for the 2025-06-18 handshake.
//! Checks the tool list and schemas, allowed / failed / denied / oversized calls as `isError`
//! results, progress, cancellation stopping the remote command, and `via: mcp` in the audit.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::Digest as _;
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

/// uid 4242 and 4243 are operators (the approvers); root (the daemon's uid, admin) runs the
/// MCP server and is the requester.
const APPROVAL_ROLES: &str = "\n[control.roles]\noperator = [\"uid:4242\", \"uid:4243\"]\n";
/// `echo gated …` needs another person's approval.
const APPROVAL_POLICY: &str = "\n[policy]\nmode = \"enforce\"\n\n[[policy.deny_commands]]\nid = \"gated\"\npattern = '^echo gated\\b'\napproval = true\nmessage = \"gated commands need a second person\"\n";

/// A target named `name` whose files are confined to `root`, enrolled with `hub`.
fn files_target(hub: &Daemon, name: &str, root: &std::path::Path) -> Daemon {
    let (dir, config) = crate::membership::target_dir();
    let files = format!(
        "\n[files]\nallowed_roots = [{:?}]\n",
        root.display().to_string()
    );
    std::fs::write(&config, config_text("target", dir.path(), &files)).expect("config");
    let token = crate::membership::invite(hub, name, &[]);
    let out = crate::membership::enroll(&config, &token, &[]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let mut t = Daemon::spawn_in(dir, config, &[]);
    t.wait_ready();
    t
}

fn lines_in(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

/// Files and approvals through MCP with the Python SDK client: fs_write / fs_read round trips
/// with SHA-256, an oversized fs_write that writes nothing, exec held for approval (pending
/// handle, approved by another uid with the real CLI, approvals_status, run with the id), exec
/// with wait_secs approved while it waits, a denial, and no way to approve through MCP.
#[test]
fn python_sdk_client_reads_and_writes_files_and_waits_for_approvals() {
    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIP: needs root and setpriv to approve as another uid");
        return;
    }
    let venv = match python_venv("tether-mcp-venv", "mcp>=2,<3") {
        Ok(v) => v,
        Err(why) => {
            eprintln!("SKIP: the Python MCP SDK is not available: {why}");
            return;
        }
    };
    let hub = Daemon::start("hub", &format!("{APPROVAL_ROLES}{APPROVAL_POLICY}"));
    let root = tempfile::tempdir().expect("tempdir");
    let root_path = root.path().canonicalize().expect("canonical root");
    let _t = files_target(&hub, "f1", &root_path);
    wait_online(&hub, &["f1"]);
    // Places a copy of `tether` other uids can run (the approvers use it through setpriv).
    let prep = hub.tether_as(4242, 0, &["--version"]);
    assert_eq!(code(&prep), 0, "{}", stderr(&prep));
    let approver = hub.dir.path().join("tether-copy");

    let out = Command::new(venv.join("bin/python"))
        .arg(repo().join("tests/e2e/mcp_files_approvals.py"))
        .arg(bin("tether"))
        .arg(&hub.socket)
        .arg("f1")
        .arg(&root_path)
        .arg(&approver)
        .output()
        .expect("run the Python MCP client");
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    let seen: Value = serde_json::from_str(stdout(&out).trim())
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&out), stderr(&out)));

    // The new tools, with input and output schemas; none of them can approve or deny.
    let tools = seen["tools"].as_object().expect("tools");
    for name in [
        "fs_read",
        "fs_write",
        "fs_list",
        "fs_stat",
        "approvals_status",
    ] {
        let t = &tools[name];
        assert_eq!(t["inputSchema"]["type"], "object", "{name}: {t}");
        assert_eq!(t["outputSchema"]["type"], "object", "{name}: {t}");
    }
    assert!(
        !tools
            .keys()
            .any(|n| n.contains("approve") || n.contains("deny")),
        "{:?}",
        tools.keys()
    );
    for prop in ["approval", "wait_secs"] {
        assert!(
            tools["exec"]["inputSchema"]["properties"][prop].is_object(),
            "{}",
            tools["exec"]
        );
    }

    // Text round trip: written, read back byte for byte, the SHA-256 on both sides.
    let text = "héllo from mcp\nline two\n";
    let sha_text = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    let w = &seen["write_text"];
    assert_ne!(w["isError"], true, "{w}");
    assert_eq!(w["structuredContent"]["sha256"], sha_text.as_str(), "{w}");
    assert_eq!(w["structuredContent"]["size"], text.len(), "{w}");
    assert_eq!(
        std::fs::read_to_string(root_path.join("hello.txt")).expect("written"),
        text
    );
    let r = &seen["read_text"];
    assert_ne!(r["isError"], true, "{r}");
    assert_eq!(r["structuredContent"]["content"], text, "{r}");
    assert_eq!(r["structuredContent"]["base64"], false, "{r}");
    assert_eq!(r["structuredContent"]["sha256"], sha_text.as_str(), "{r}");

    // Binary round trip as base64, with a mode.
    let blob: Vec<u8> = (0..=255u8).cycle().take(768).collect();
    let sha_blob = hex::encode(sha2::Sha256::digest(&blob));
    assert_eq!(
        seen["write_bin"]["structuredContent"]["sha256"],
        sha_blob.as_str(),
        "{}",
        seen["write_bin"]
    );
    assert_eq!(
        std::fs::read(root_path.join("blob.bin")).expect("written"),
        blob
    );
    let rb = &seen["read_bin"]["structuredContent"];
    assert_eq!(rb["base64"], true, "{rb}");
    assert_eq!(rb["sha256"], sha_blob.as_str(), "{rb}");
    assert_eq!(rb["size"], 768, "{rb}");
    let names: Vec<&str> = seen["list"]["structuredContent"]["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(
        names.contains(&"hello.txt") && names.contains(&"blob.bin"),
        "{names:?}"
    );
    let st = &seen["stat"]["structuredContent"]["entry"];
    assert_eq!(st["kind"], "file", "{st}");
    assert_eq!(st["mode"], "600", "{st}");
    assert_eq!(st["size"], 768, "{st}");
    assert_eq!(
        seen["read_missing"]["isError"], true,
        "{}",
        seen["read_missing"]
    );

    // Over 10 MiB: a tool error naming the limit; nothing written, nothing sent.
    let big = &seen["write_big"];
    assert_eq!(big["isError"], true, "{}", text_of(big));
    assert!(text_of(big).contains("10485760"), "{}", text_of(big));
    assert!(!root_path.join("big.txt").exists());
    assert!(
        !audit_records(&hub, "fs.put")
            .iter()
            .any(|r| r["data"].to_string().contains("big.txt")),
        "an oversized write reached the daemon"
    );
    // The writes through MCP are audited as such.
    let puts = audit_records(&hub, "fs.put");
    assert!(!puts.is_empty());
    assert!(puts.iter().all(|r| r["actor"]["via"] == "mcp"), "{puts:?}");

    // A require-approval verdict: a pending handle, not an error; nothing ran.
    let p = &seen["exec_pending"];
    assert_ne!(p["isError"], true, "{p}");
    assert_eq!(p["structuredContent"]["status"], "approval_pending", "{p}");
    let id1 = p["structuredContent"]["approval"].as_str().expect("id");
    assert!(id1.starts_with("apr-"), "{id1}");
    assert_eq!(
        seen["status_pending"]["structuredContent"]["state"],
        "pending"
    );
    // Another uid approved it with the real CLI; approvals_status says granted, by whom.
    assert_eq!(seen["approve1"]["code"], 0, "{}", seen["approve1"]);
    let g = &seen["status_granted"]["structuredContent"];
    assert_eq!(g["state"], "granted", "{g}");
    assert_eq!(g["reviews"][0]["uid"], 4242, "{g}");
    assert_eq!(g["reviews"][0]["decision"], "approve", "{g}");
    assert!(g["expires_at"].as_u64().is_some_and(|e| e > 0), "{g}");
    // Re-sent with the id: it ran, once, and the approval is used.
    let ran = &seen["exec_approved"];
    assert_ne!(ran["isError"], true, "{ran}");
    assert_eq!(ran["structuredContent"]["status"], "completed", "{ran}");
    assert_eq!(
        ran["structuredContent"]["hosts"][0]["exit_code"], 0,
        "{ran}"
    );
    assert_eq!(lines_in(&root_path.join("ran1")), 1);
    assert_eq!(seen["status_used"]["structuredContent"]["state"], "used");

    // wait_secs: progress while pending, then granted by another uid, then the run's result.
    assert_eq!(seen["approve2"]["code"], 0, "{}", seen["approve2"]);
    let waited = &seen["exec_waited"];
    assert_ne!(waited["isError"], true, "{waited}");
    assert_eq!(
        waited["structuredContent"]["status"], "completed",
        "{waited}"
    );
    assert_eq!(
        waited["structuredContent"]["hosts"][0]["status"], "ok",
        "{waited}"
    );
    assert_eq!(lines_in(&root_path.join("ran2")), 1);
    let progress = seen["exec_waited_progress"].as_array().expect("progress");
    assert!(
        progress
            .iter()
            .any(|p| p[2].as_str().is_some_and(|m| m.contains("pending"))),
        "{progress:?}"
    );
    let values: Vec<f64> = progress.iter().filter_map(|p| p[0].as_f64()).collect();
    assert!(
        values.windows(2).all(|w| w[0] < w[1]),
        "progress must increase: {values:?}"
    );

    // Denied while waiting: a tool error with the state and the reviewer; nothing ran.
    assert_eq!(seen["deny3"]["code"], 0, "{}", seen["deny3"]);
    let d = &seen["exec_denied"];
    assert_eq!(d["isError"], true, "{d}");
    assert!(text_of(d).contains("denied"), "{}", text_of(d));
    assert!(text_of(d).contains("not today"), "{}", text_of(d));
    assert_eq!(lines_in(&root_path.join("ran3")), 0);

    // No tool approves: the call fails, and the request stays pending.
    let via_mcp = &seen["approve_via_mcp"];
    assert!(
        via_mcp["exception"].is_string() || via_mcp["isError"] == true,
        "{via_mcp}"
    );
    assert_eq!(seen["status4"]["structuredContent"]["state"], "pending");
    assert_eq!(lines_in(&root_path.join("ran4")), 0);

    // The audit tells the story, with via=mcp on the requester's side.
    let requested = audit_records(&hub, "approval.requested");
    assert_eq!(requested.len(), 4, "{requested:?}");
    assert!(requested.iter().all(|r| r["actor"]["via"] == "mcp"));
    assert_eq!(audit_records(&hub, "approval.granted").len(), 2);
    assert_eq!(audit_records(&hub, "approval.denied").len(), 1);
    assert_eq!(audit_records(&hub, "approval.used").len(), 2);
}
