//! OCSF 1.3 events (<https://schema.ocsf.io/1.3.0/>). Every event carries the base attributes
//! (`activity_id`, `category_uid`, `class_uid`, `severity_id`, `time`, `type_uid`, `metadata`
//! with `product` and `version`) and the attributes its class requires:
//!
//! * 3002 Authentication: `user`, and `service` + `dst_endpoint` (at least one is required);
//! * 1007 Process Activity: `actor`, `device`, `process`;
//! * 1001 File System Activity: `actor`, `device`, `file` (`name`, `type_id`);
//! * 4007 SSH Activity: `src_endpoint` / `dst_endpoint` (at least one);
//! * 6003 API Activity: `actor`, `api` (`operation`), `src_endpoint`.
//!
//! The record's seq goes to `metadata.uid` and `metadata.sequence`; what OCSF has no attribute
//! for (the record type, its `data`, its chain hash) goes to `unmapped.tether`.

use serde_json::{Map, Value, json};

use crate::classify::{Outcome, classify};
use crate::record::{Context, Record};
use crate::time::rfc3339_to_unix_ms;

/// The OCSF schema version the events follow.
pub const VERSION: &str = "1.3.0";

fn severity(out: Outcome) -> (u8, &'static str) {
    match out {
        Outcome::Failure => (3, "Medium"),
        _ => (1, "Informational"),
    }
}

/// The OCSF event for `r`.
pub fn event(r: &Record<'_>, ctx: &Context<'_>) -> Value {
    let c = classify(r);
    let (sev_id, sev) = severity(c.outcome);
    let time = rfc3339_to_unix_ms(r.ts).unwrap_or(0);
    let user = {
        let mut u = json!({"name": r.actor.user, "uid": r.actor.uid.to_string()});
        if let Some(role) = r.actor.role {
            u["groups"] = json!([{"name": role}]);
        }
        u
    };
    let actor = json!({"user": user, "app_name": format!("tether {}", r.actor.via)});
    let target = r.host.unwrap_or(ctx.hostname);
    let device = json!({"hostname": target, "name": target, "type_id": 0, "type": "Unknown"});
    let message = message(r);
    let mut e = Map::new();
    e.insert("activity_id".into(), json!(c.activity_id));
    e.insert("activity_name".into(), json!(c.activity_name));
    e.insert("category_uid".into(), json!(c.category_uid));
    e.insert("category_name".into(), json!(c.category_name));
    e.insert("class_uid".into(), json!(c.class_uid));
    e.insert("class_name".into(), json!(c.class_name));
    e.insert("type_uid".into(), json!(c.type_uid()));
    e.insert(
        "type_name".into(),
        json!(format!("{}: {}", c.class_name, c.activity_name)),
    );
    e.insert("severity_id".into(), json!(sev_id));
    e.insert("severity".into(), json!(sev));
    e.insert("status_id".into(), json!(c.outcome.ocsf_status_id()));
    e.insert("status".into(), json!(c.outcome.ocsf_status()));
    e.insert("time".into(), json!(time));
    e.insert("message".into(), json!(message));
    e.insert(
        "metadata".into(),
        json!({
            "version": VERSION,
            "product": {"name": "tetherd", "vendor_name": "Tether", "version": ctx.version},
            "uid": r.seq.to_string(),
            "sequence": r.seq,
            "log_name": "audit",
            "original_time": r.ts,
            "event_code": r.kind,
        }),
    );
    let mut unmapped =
        json!({"tether": {"type": r.kind, "seq": r.seq, "via": r.actor.via, "data": r.data}});
    if let Some(h) = r.hash {
        unmapped["tether"]["hash"] = json!(h);
    }
    let src = json!({"hostname": ctx.hostname, "name": format!("tether {}", r.actor.via)});
    let dst = json!({"hostname": target, "name": target});
    match c.class_uid {
        3002 => {
            let subject = r
                .data_str("name")
                .or_else(|| r.data_str("user"))
                .unwrap_or_else(|| r.actor.user.to_owned());
            e.insert("user".into(), json!({"name": subject}));
            e.insert("actor".into(), actor);
            e.insert("service".into(), json!({"name": "tetherd"}));
            e.insert("dst_endpoint".into(), json!({"hostname": ctx.hostname}));
            if let Some(peer) = r.data_str("peer") {
                e.insert("src_endpoint".into(), json!({"ip": peer}));
            }
            e.insert("is_remote".into(), json!(r.kind.starts_with("enroll.")));
        }
        1007 => {
            let cmd = r.data_str("command").unwrap_or_default();
            let mut process =
                json!({"cmd_line": cmd, "name": cmd.split_whitespace().next().unwrap_or("")});
            if let Some(u) = r.data_str("run_as") {
                process["user"] = json!({"name": u});
            }
            e.insert("actor".into(), actor);
            e.insert("device".into(), device);
            e.insert("process".into(), process);
            if let Some(code) = r.data.get("exit_code").and_then(Value::as_i64) {
                e.insert("exit_code".into(), json!(code));
            }
        }
        1001 => {
            let path = r.data_str("path").unwrap_or_default();
            let name = path.rsplit('/').next().unwrap_or("").to_owned();
            e.insert("actor".into(), actor);
            e.insert("device".into(), device);
            e.insert(
                "file".into(),
                json!({"name": name, "path": path, "type_id": 1, "type": "Regular File"}),
            );
        }
        4007 => {
            e.insert("actor".into(), actor);
            e.insert("src_endpoint".into(), src);
            e.insert("dst_endpoint".into(), dst);
            e.insert("device".into(), device);
        }
        _ => {
            e.insert("actor".into(), actor);
            e.insert(
                "api".into(),
                json!({"operation": r.kind, "service": {"name": "tetherd"}}),
            );
            e.insert("src_endpoint".into(), src);
            if r.host.is_some() {
                e.insert("dst_endpoint".into(), dst);
            }
        }
    }
    e.insert("unmapped".into(), unmapped);
    Value::Object(e)
}

/// A one-line human summary: the type, the host and the most telling data field.
pub(crate) fn message(r: &Record<'_>) -> String {
    let mut m = r.kind.to_owned();
    if let Some(h) = r.host {
        m.push_str(" on ");
        m.push_str(h);
    }
    for k in ["command", "path", "reason", "error", "name"] {
        if let Some(v) = r.data_str(k) {
            m.push_str(": ");
            m.push_str(&v);
            break;
        }
    }
    m
}
