//! Elastic Common Schema documents (ECS 8.x). `event.kind` is `event` (`alert` for the
//! `alert.*` records: they are about alerts the daemon raised); `event.category`,
//! `event.type` and `event.outcome` take values from the ECS allowed lists, with a type
//! allowed for its category (see [`crate::classify`]).

use serde_json::{Value, json};

use crate::classify::classify;
use crate::ocsf::message;
use crate::record::{Context, Record};

/// The ECS version the documents follow.
pub const VERSION: &str = "8.11.0";

/// The ECS document for `r`.
pub fn document(r: &Record<'_>, ctx: &Context<'_>) -> Value {
    let c = classify(r);
    let kind = if r.kind.starts_with("alert.") {
        "alert"
    } else {
        "event"
    };
    let mut d = json!({
        "@timestamp": r.ts,
        "ecs": {"version": VERSION},
        "message": message(r),
        "event": {
            "kind": kind,
            "category": [c.ecs_category],
            "type": [c.ecs_type],
            "outcome": c.outcome.ecs(),
            "action": r.kind,
            "dataset": "tether.audit",
            "module": "tether",
            "provider": "tetherd",
            "sequence": r.seq,
            "created": r.ts,
        },
        "user": {"name": r.actor.user, "id": r.actor.uid.to_string()},
        "observer": {"hostname": ctx.hostname, "product": "tetherd", "vendor": "Tether", "version": ctx.version, "type": "remote-operations"},
        "labels": {"via": r.actor.via},
        "tether": {"type": r.kind, "seq": r.seq, "data": r.data},
    });
    if let Some(role) = r.actor.role {
        d["user"]["roles"] = json!([role]);
    }
    if let Some(h) = r.hash {
        d["event"]["hash"] = json!(h);
        d["tether"]["hash"] = json!(h);
    }
    if let Some(h) = r.host {
        d["host"] = json!({"name": h, "hostname": h});
    }
    if let Some(cmd) = r.data_str("command") {
        d["process"] =
            json!({"command_line": cmd, "name": cmd.split_whitespace().next().unwrap_or("")});
        if let Some(code) = r.data.get("exit_code").and_then(Value::as_i64) {
            d["process"]["exit_code"] = json!(code);
        }
    }
    if let Some(p) = r.data_str("path") {
        d["file"] = json!({"path": p, "name": p.rsplit('/').next().unwrap_or("")});
    }
    d
}
