//! The renderers against expected JSON and golden lines, and the outputs validated against the
//! OCSF 1.3 required attributes and the ECS allowed values (test data under `tests/data/`).
#![allow(missing_docs, clippy::unwrap_used)]

use serde_json::{Value, json};
use tether_siem::{Context, Format, Record, cef, ecs, hec, ocsf, syslog};

const CTX: Context<'static> = Context {
    version: "0.1.0",
    hostname: "hub1",
};

/// One stored audit line of each record type the daemon writes (plus file and session ones).
fn samples() -> Vec<Value> {
    let actor = json!({"uid": 1000, "user": "ann", "role": "operator", "via": "cli"});
    let daemon = json!({"uid": 0, "user": "root", "role": null, "via": "daemon"});
    let rec = |seq: u64, kind: &str, actor: &Value, host: Option<&str>, data: Value| {
        let mut v = json!({"seq": seq, "ts": "2026-11-27T16:49:48.123456Z", "type": kind, "actor": actor, "data": data,
            "prev": "00".repeat(32), "hash": format!("{:064x}", seq), "hmac": "11".repeat(32)});
        if let Some(h) = host {
            v["host"] = json!(h);
        }
        v
    };
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq
    };
    vec![
        rec(
            next(),
            "daemon.start",
            &daemon,
            None,
            json!({"role": "hub"}),
        ),
        rec(
            next(),
            "exec.requested",
            &actor,
            Some("web1"),
            json!({"command": "systemctl restart nginx", "verdict": "allow"}),
        ),
        rec(
            next(),
            "exec.received",
            &daemon,
            Some("web1"),
            json!({"command": "systemctl restart nginx"}),
        ),
        rec(
            next(),
            "exec.result",
            &daemon,
            Some("web1"),
            json!({"command": "systemctl restart nginx", "exit_code": 0, "duration_ms": 12}),
        ),
        rec(
            next(),
            "exec.result",
            &daemon,
            Some("web1"),
            json!({"command": "false", "exit_code": 1}),
        ),
        rec(
            next(),
            "exec.denied",
            &actor,
            Some("db1"),
            json!({"command": "rm -rf /", "reason": "rule no-rm-root"}),
        ),
        rec(
            next(),
            "fs.read",
            &actor,
            Some("web1"),
            json!({"path": "/etc/nginx/nginx.conf"}),
        ),
        rec(
            next(),
            "fs.write",
            &actor,
            Some("web1"),
            json!({"path": "/etc/motd", "bytes": 12}),
        ),
        rec(
            next(),
            "fs.stat",
            &actor,
            Some("web1"),
            json!({"path": "/var/log"}),
        ),
        rec(next(), "ssh.session_open", &actor, Some("web1"), json!({})),
        rec(next(), "ssh.session_close", &actor, Some("web1"), json!({})),
        rec(
            next(),
            "ssh.host_key_mismatch",
            &daemon,
            Some("web1"),
            json!({"reason": "pinned key differs"}),
        ),
        rec(
            next(),
            "auth.denied",
            &actor,
            None,
            json!({"route": "/v1/exec", "reason": "no role"}),
        ),
        rec(
            next(),
            "enroll.accepted",
            &daemon,
            Some("t1"),
            json!({"name": "t1", "peer": "127.0.0.1"}),
        ),
        rec(
            next(),
            "enroll.rejected",
            &daemon,
            None,
            json!({"reason": "expired token"}),
        ),
        rec(
            next(),
            "enroll.invite",
            &actor,
            Some("t2"),
            json!({"name": "t2"}),
        ),
        rec(
            next(),
            "config.change",
            &daemon,
            None,
            json!({"ok": true, "trigger": "sighup"}),
        ),
        rec(
            next(),
            "policy.reload",
            &actor,
            None,
            json!({"ok": false, "error": "bad regex"}),
        ),
        rec(
            next(),
            "secret.set",
            &actor,
            None,
            json!({"name": "webhook-secret"}),
        ),
        rec(
            next(),
            "secret.rm",
            &actor,
            None,
            json!({"name": "webhook-secret"}),
        ),
        rec(
            next(),
            "plugin.quarantine",
            &daemon,
            None,
            json!({"plugin": "spin"}),
        ),
        rec(next(), "host.revoke", &actor, Some("t1"), json!({})),
        rec(next(), "vpn.key_rotation", &daemon, Some("t1"), json!({})),
        rec(next(), "audit.read", &actor, None, json!({"what": "tail"})),
        rec(
            next(),
            "alert.dropped",
            &daemon,
            None,
            json!({"sink": "webhook", "reason": "retries_exhausted"}),
        ),
        rec(next(), "daemon.stop", &daemon, None, json!({})),
    ]
}

fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .filter(|v| !v.is_null())
}

#[test]
fn ocsf_events_carry_every_attribute_their_class_requires() {
    let spec: Value = serde_json::from_str(include_str!("data/ocsf-1.3-required.json")).unwrap();
    let mut classes_seen = std::collections::BTreeSet::new();
    for raw in samples() {
        let r = Record::from_value(&raw).unwrap();
        let e = ocsf::event(&r, &CTX);
        let class = e["class_uid"].as_u64().unwrap();
        classes_seen.insert(class);
        let cs = &spec["classes"][class.to_string()];
        assert!(
            cs.is_object(),
            "{}: class {class} is not one of the five",
            r.kind
        );
        for a in spec["base"]
            .as_array()
            .unwrap()
            .iter()
            .chain(cs["required"].as_array().unwrap())
        {
            let a = a.as_str().unwrap();
            assert!(
                get(&e, a).is_some(),
                "{}: required {a} missing in {e}",
                r.kind
            );
        }
        if let Some(any) = cs.get("at_least_one") {
            assert!(
                any.as_array()
                    .unwrap()
                    .iter()
                    .any(|a| get(&e, a.as_str().unwrap()).is_some()),
                "{}: none of {any} in {e}",
                r.kind
            );
        }
        assert_eq!(e["category_uid"], cs["category_uid"], "{}", r.kind);
        let act = e["activity_id"].as_u64().unwrap();
        assert!(
            cs["activities"].as_array().unwrap().contains(&json!(act)),
            "{}: activity {act}",
            r.kind
        );
        assert_eq!(
            e["type_uid"].as_u64().unwrap(),
            class * 100 + act,
            "{}",
            r.kind
        );
        assert!(
            spec["severity_id"]
                .as_array()
                .unwrap()
                .contains(&e["severity_id"])
        );
        assert!(
            spec["status_id"]
                .as_array()
                .unwrap()
                .contains(&e["status_id"])
        );
        assert_eq!(e["time"], json!(1_795_798_188_123i64));
        assert_eq!(e["metadata"]["version"], "1.3.0");
    }
    assert_eq!(
        classes_seen.into_iter().collect::<Vec<_>>(),
        [1001, 1007, 3002, 4007, 6003],
        "every class of the table is exercised"
    );
}

#[test]
fn ecs_documents_use_only_allowed_values_and_types_allowed_for_their_category() {
    let spec: Value = serde_json::from_str(include_str!("data/ecs-allowed.json")).unwrap();
    let has = |list: &str, v: &Value| spec[list].as_array().unwrap().contains(v);
    for raw in samples() {
        let r = Record::from_value(&raw).unwrap();
        let d = ecs::document(&r, &CTX);
        let ev = &d["event"];
        assert!(has("kind", &ev["kind"]), "{}: kind {}", r.kind, ev["kind"]);
        assert!(has("outcome", &ev["outcome"]), "{}", r.kind);
        for cat in ev["category"].as_array().unwrap() {
            let allowed = spec["category_types"][cat.as_str().unwrap()].as_array();
            let allowed =
                allowed.unwrap_or_else(|| panic!("{}: category {cat} not allowed", r.kind));
            for t in ev["type"].as_array().unwrap() {
                assert!(has("type", t), "{}: type {t}", r.kind);
                assert!(
                    allowed.contains(t),
                    "{}: type {t} not expected for category {cat}",
                    r.kind
                );
            }
        }
        assert_eq!(d["@timestamp"], raw["ts"]);
        assert_eq!(d["event"]["sequence"], raw["seq"]);
    }
}

fn one(kind: &str) -> Value {
    samples().into_iter().find(|r| r["type"] == kind).unwrap()
}

#[test]
fn ocsf_process_activity_matches_the_expected_event() {
    let raw = one("exec.result");
    let e = ocsf::event(&Record::from_value(&raw).unwrap(), &CTX);
    let want = json!({
        "activity_id": 2, "activity_name": "Terminate",
        "category_uid": 1, "category_name": "System Activity",
        "class_uid": 1007, "class_name": "Process Activity",
        "type_uid": 100702, "type_name": "Process Activity: Terminate",
        "severity_id": 1, "severity": "Informational",
        "status_id": 1, "status": "Success",
        "time": 1_795_798_188_123i64,
        "message": "exec.result on web1: systemctl restart nginx",
        "metadata": {"version": "1.3.0", "product": {"name": "tetherd", "vendor_name": "Tether", "version": "0.1.0"},
            "uid": "4", "sequence": 4, "log_name": "audit", "original_time": "2026-11-27T16:49:48.123456Z", "event_code": "exec.result"},
        "actor": {"user": {"name": "root", "uid": "0"}, "app_name": "tether daemon"},
        "device": {"hostname": "web1", "name": "web1", "type_id": 0, "type": "Unknown"},
        "process": {"cmd_line": "systemctl restart nginx", "name": "systemctl"},
        "exit_code": 0,
        "unmapped": {"tether": {"type": "exec.result", "seq": 4, "via": "daemon", "hash": format!("{:064x}", 4),
            "data": {"command": "systemctl restart nginx", "exit_code": 0, "duration_ms": 12}}},
    });
    assert_eq!(e, want);
}

#[test]
fn ecs_authentication_failure_matches_the_expected_document() {
    let raw = one("auth.denied");
    let d = ecs::document(&Record::from_value(&raw).unwrap(), &CTX);
    assert_eq!(d["event"]["kind"], "event");
    assert_eq!(d["event"]["category"], json!(["authentication"]));
    assert_eq!(d["event"]["type"], json!(["start"]));
    assert_eq!(d["event"]["outcome"], "failure");
    assert_eq!(
        d["user"],
        json!({"name": "ann", "id": "1000", "roles": ["operator"]})
    );
    assert_eq!(d["ecs"]["version"], "8.11.0");
}

#[test]
fn cef_lines_escape_header_and_extension() {
    assert_eq!(cef::escape_header(r"a|b\c"), r"a\|b\\c");
    assert_eq!(cef::escape_value("a=b\\c\nd\re|f"), r"a\=b\\c\nd\re|f");
    let raw = one("exec.denied");
    let l = cef::line(&Record::from_value(&raw).unwrap(), &CTX);
    assert_eq!(
        l,
        r#"CEF:0|Tether|tetherd|0.1.0|exec.denied|exec.denied on db1: rm -rf /|7|rt=1795798188123 externalId=6 cat=Process Activity suser=ann suid=1000 spriv=operator app=cli shost=hub1 dhost=db1 act=Launch outcome=failure cs1Label=chainHash cs1=0000000000000000000000000000000000000000000000000000000000000006 msg={"command":"rm -rf /","reason":"rule no-rm-root"}"#
    );
    // A hostile command cannot forge header fields or extension keys.
    let mut evil = raw.clone();
    evil["data"] = json!({"command": "x|7|act=forged\nCEF:0|"});
    let l = cef::line(&Record::from_value(&evil).unwrap(), &CTX);
    assert!(
        l.contains(r"exec.denied on db1: x\|7\|act=forged CEF:0\||7|"),
        "{l}"
    );
    // (the data is JSON, so its newline is already `\n`; CEF then escapes that backslash)
    assert!(
        l.contains(r#"msg={"command":"x|7|act\=forged\\nCEF:0|"}"#),
        "{l}"
    );
    assert_eq!(l.lines().count(), 1);
}

#[test]
fn syslog_lines_are_rfc5424_with_escaped_structured_data_and_octet_counted_frames() {
    assert_eq!(syslog::escape_param(r#"a"b\c]d"#), r#"a\"b\\c\]d"#);
    let raw = one("exec.result");
    let r = Record::from_value(&raw).unwrap();
    let proof = syslog::BatchProof {
        first_seq: 3,
        last_seq: 5,
        last_hash: "abc",
    };
    let l = syslog::line(&r, &CTX, Some(&proof));
    assert_eq!(
        l,
        format!(
            r#"<110>1 2026-11-27T16:49:48.123456Z hub1 tetherd - exec.result [tether@32473 seq="4" type="exec.result" user="root" uid="0" via="daemon" host="web1" outcome="success" hash="{:064x}" first_seq="3" last_seq="5" last_hash="abc"] exec.result on web1: systemctl restart nginx {{"command":"systemctl restart nginx","duration_ms":12,"exit_code":0}}"#,
            4
        )
    );
    // Failures are warnings (13*8+4); ] and " in values are escaped; MSG stays on one line.
    let mut evil = one("exec.denied");
    evil["host"] = json!("db\"1]");
    evil["data"]["command"] = json!("a\nb");
    let l = syslog::line(&Record::from_value(&evil).unwrap(), &CTX, None);
    assert!(l.starts_with("<108>1 "), "{l}");
    assert!(l.contains(r#"host="db\"1\]""#), "{l}");
    assert_eq!(l.lines().count(), 1);
    assert_eq!(syslog::frame("<14>1 x"), b"7 <14>1 x".to_vec());
    assert_eq!(syslog::header_field("a b\u{e9}", 32), "a_b_");
    assert_eq!(syslog::header_field("", 32), "-");
}

#[test]
fn hec_envelopes_carry_the_batch_proof_in_flat_fields() {
    let raw = one("fs.write");
    let r = Record::from_value(&raw).unwrap();
    let proof = syslog::BatchProof {
        first_seq: 7,
        last_seq: 9,
        last_hash: "ff",
    };
    let e = hec::envelope(&r, Some(&raw), "hub1", "tether:audit", &proof);
    assert_eq!(
        e,
        json!({
            "time": 1_795_798_188.123,
            "host": "web1",
            "source": "tetherd:audit",
            "sourcetype": "tether:audit",
            "event": raw,
            "fields": {"tether_seq": "8", "tether_type": "fs.write", "tether_first_seq": "7", "tether_last_seq": "9", "tether_last_hash": "ff"},
        })
    );
    assert!(
        e["fields"]
            .as_object()
            .unwrap()
            .values()
            .all(Value::is_string)
    );
}

#[test]
fn formats_parse_and_bad_records_get_precise_errors() {
    assert_eq!(Format::parse("ocsf"), Ok(Format::Ocsf));
    assert!(
        Format::parse("xml")
            .unwrap_err()
            .to_string()
            .contains("jsonl, ocsf, ecs, cef, syslog")
    );
    assert!(Record::parse_line("[1]").is_err());
    assert!(Record::parse_line("{").is_err());
    let v = Record::parse_line(r#"{"seq":1,"ts":"x","type":"a"}"#).unwrap();
    assert_eq!(
        Record::from_value(&v).unwrap_err().to_string(),
        "audit record field `actor` is missing or has the wrong type; the log may be damaged, run `tether audit verify`"
    );
}
