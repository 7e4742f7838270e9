//! Which kind of security event each tether record type is: one table for every format.
//!
//! | tether record type                         | OCSF class (category)              | activity_id            | ECS event.category / event.type |
//! |--------------------------------------------|------------------------------------|------------------------|---------------------------------|
//! | `auth.denied`                              | 3002 Authentication (3 IAM)        | 1 Logon (failure)      | authentication / start          |
//! | `enroll.accepted`, `enroll.denied`, `enroll.rejected` | 3002 Authentication (3 IAM) | 1 Logon           | authentication / start          |
//! | `exec.requested`, `exec.received`, `exec.denied` | 1007 Process Activity (1 System) | 1 Launch            | process / start                 |
//! | `exec.result`                              | 1007 Process Activity (1 System)   | 2 Terminate            | process / end                   |
//! | `fs.read`, `fs.get`, `file.read`           | 1001 File System Activity (1 System) | 2 Read               | file / access                   |
//! | `fs.write`, `fs.put`, `file.write`         | 1001 File System Activity (1 System) | 3 Update             | file / change                   |
//! | `fs.ls`, `fs.stat` (and other `fs.*`)      | 1001 File System Activity (1 System) | 8 Get Attributes     | file / info                     |
//! | `fs.rm`, `file.delete`                     | 1001 File System Activity (1 System) | 4 Delete             | file / deletion                 |
//! | `ssh.*`, `session.*` (`…open`/`…start`)    | 4007 SSH Activity (4 Network)      | 1 Open                 | session / start                 |
//! | `…close`/`…end`                            | 4007 SSH Activity (4 Network)      | 2 Close                | session / end                   |
//! | `ssh.host_key_mismatch`                    | 4007 SSH Activity (4 Network)      | 5 Refuse (failure)     | network / denied                |
//! | anything else (`config.*`, `secret.*`, `plugin.*`, `host.*`, `vpn.*`, `audit.*`, `alert.*`, `daemon.*`, `enroll.invite`…) | 6003 API Activity (6 Application) | 1 Create / 2 Read / 3 Update / 4 Delete / 99 Other by the verb | by area, see [`classify`] |
//!
//! The outcome is a failure for `*.denied`, `*.rejected`, `*.dropped`, `*.error`,
//! `*.quarantine`, `*_mismatch`, `ok: false` data and a non-zero `exit_code`; unknown for
//! `exec.requested` (it has not run yet); a success otherwise.

use crate::record::Record;

/// How a record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It worked / was allowed.
    Success,
    /// It was refused or failed.
    Failure,
    /// Not known yet (a request before its result).
    Unknown,
}

impl Outcome {
    /// ECS `event.outcome`.
    pub fn ecs(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Unknown => "unknown",
        }
    }

    /// OCSF `status_id` (1 Success, 2 Failure, 0 Unknown).
    pub fn ocsf_status_id(self) -> u8 {
        match self {
            Outcome::Success => 1,
            Outcome::Failure => 2,
            Outcome::Unknown => 0,
        }
    }

    /// OCSF `status`.
    pub fn ocsf_status(self) -> &'static str {
        match self {
            Outcome::Success => "Success",
            Outcome::Failure => "Failure",
            Outcome::Unknown => "Unknown",
        }
    }
}

/// The classification of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    /// OCSF `class_uid`.
    pub class_uid: u32,
    /// OCSF `class_name`.
    pub class_name: &'static str,
    /// OCSF `category_uid`.
    pub category_uid: u32,
    /// OCSF `category_name`.
    pub category_name: &'static str,
    /// OCSF `activity_id`.
    pub activity_id: u32,
    /// OCSF `activity_name`.
    pub activity_name: &'static str,
    /// ECS `event.category` (one value from the allowed list).
    pub ecs_category: &'static str,
    /// ECS `event.type` (allowed for `ecs_category`).
    pub ecs_type: &'static str,
    /// How it went.
    pub outcome: Outcome,
}

impl Class {
    /// OCSF `type_uid` = `class_uid` * 100 + `activity_id`.
    pub fn type_uid(&self) -> u64 {
        u64::from(self.class_uid) * 100 + u64::from(self.activity_id)
    }
}

const AUTH: (u32, &str, u32, &str) = (3002, "Authentication", 3, "Identity & Access Management");
const PROCESS: (u32, &str, u32, &str) = (1007, "Process Activity", 1, "System Activity");
const FILE: (u32, &str, u32, &str) = (1001, "File System Activity", 1, "System Activity");
const SSH: (u32, &str, u32, &str) = (4007, "SSH Activity", 4, "Network Activity");
const API: (u32, &str, u32, &str) = (6003, "API Activity", 6, "Application Activity");

fn outcome(r: &Record<'_>) -> Outcome {
    let k = r.kind;
    let failed_kind = [
        ".denied",
        ".rejected",
        ".dropped",
        ".error",
        ".quarantine",
        "_failed",
    ]
    .iter()
    .any(|s| k.ends_with(s))
        || k.contains("mismatch");
    if failed_kind || r.data.get("ok").and_then(|v| v.as_bool()) == Some(false) {
        return Outcome::Failure;
    }
    if k == "exec.result" {
        return match r.data.get("exit_code").and_then(|v| v.as_i64()) {
            Some(0) => Outcome::Success,
            Some(_) => Outcome::Failure,
            None => Outcome::Failure, // killed by a signal or timed out
        };
    }
    if k == "exec.requested" {
        return Outcome::Unknown;
    }
    Outcome::Success
}

/// Classifies `r` (see the module table).
pub fn classify(r: &Record<'_>) -> Class {
    let out = outcome(r);
    let (area, verb) = r.kind.split_once('.').unwrap_or((r.kind, ""));
    let mk = |c: (u32, &'static str, u32, &'static str),
              activity_id: u32,
              activity_name: &'static str,
              ecs_category: &'static str,
              ecs_type: &'static str| Class {
        class_uid: c.0,
        class_name: c.1,
        category_uid: c.2,
        category_name: c.3,
        activity_id,
        activity_name,
        ecs_category,
        ecs_type,
        outcome: out,
    };
    match (area, verb) {
        ("auth", _) | ("enroll", "accepted" | "denied" | "rejected") => {
            mk(AUTH, 1, "Logon", "authentication", "start")
        }
        ("exec", "result") => mk(PROCESS, 2, "Terminate", "process", "end"),
        ("exec", _) => mk(PROCESS, 1, "Launch", "process", "start"),
        ("fs" | "file", v) => match v {
            "read" | "get" => mk(FILE, 2, "Read", "file", "access"),
            "write" | "put" => mk(FILE, 3, "Update", "file", "change"),
            "rm" | "delete" => mk(FILE, 4, "Delete", "file", "deletion"),
            _ => mk(FILE, 8, "Get Attributes", "file", "info"),
        },
        ("ssh" | "session", v) => {
            if v.contains("mismatch") {
                mk(SSH, 5, "Refuse", "network", "denied")
            } else if v.contains("close") || v.contains("end") {
                mk(SSH, 2, "Close", "session", "end")
            } else {
                mk(SSH, 1, "Open", "session", "start")
            }
        }
        _ => {
            let (id, name) = api_activity(verb);
            let (cat, ty) = ecs_for_api(area, id);
            mk(API, id, name, cat, ty)
        }
    }
}

fn api_activity(verb: &str) -> (u32, &'static str) {
    let has = |ws: &[&str]| ws.iter().any(|w| verb.contains(w));
    if has(&["rm", "remove", "revoke", "delete"]) {
        (4, "Delete")
    } else if has(&["read", "verify", "tail", "export", "list"]) {
        (2, "Read")
    } else if has(&["change", "reload", "rotat", "update", "quarantine", "key_"]) {
        (3, "Update")
    } else if has(&["set", "invite", "load", "start", "create"]) {
        (1, "Create")
    } else {
        (99, "Other")
    }
}

/// ECS category/type for the API-Activity records, from the allowed category→type pairs.
fn ecs_for_api(area: &str, activity: u32) -> (&'static str, &'static str) {
    let cfg_type = match activity {
        1 => "creation",
        2 => "access",
        3 => "change",
        4 => "deletion",
        _ => "info",
    };
    match area {
        "config" | "policy" | "plugin" | "secret" => ("configuration", cfg_type),
        "host" | "enroll" => (
            "iam",
            match activity {
                1 => "creation",
                3 => "change",
                4 => "deletion",
                _ => "info",
            },
        ),
        "vpn" => ("network", "info"),
        "daemon" => ("process", if activity == 1 { "start" } else { "end" }),
        _ => (
            "api",
            match activity {
                1 => "creation",
                2 => "access",
                3 => "change",
                4 => "deletion",
                _ => "info",
            },
        ),
    }
}
