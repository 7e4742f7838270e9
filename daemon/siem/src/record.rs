//! [`Record`]: one audit record, borrowed, as every renderer takes it.

use serde_json::Value;

use crate::error::SiemError;

/// Who caused a record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Actor<'a> {
    /// Unix uid.
    pub uid: u32,
    /// User name.
    pub user: &'a str,
    /// Role (`admin`, `operator`, ...), if any.
    pub role: Option<&'a str>,
    /// How the caller came in (`cli`, `mcp`, `api`, `daemon`).
    pub via: &'a str,
}

/// One audit record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record<'a> {
    /// Sequence number.
    pub seq: u64,
    /// RFC 3339 UTC timestamp.
    pub ts: &'a str,
    /// Record type, e.g. `exec.result`.
    pub kind: &'a str,
    /// Who caused it.
    pub actor: Actor<'a>,
    /// The host it concerns.
    pub host: Option<&'a str>,
    /// The record's `data` object.
    pub data: &'a Value,
    /// Its chain hash (hex), when known (plugins get only the batch's last hash).
    pub hash: Option<&'a str>,
}

/// Where the records come from: the reporting product and machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context<'a> {
    /// The product version (`tetherd` x.y.z).
    pub version: &'a str,
    /// The name of the machine the log belongs to (syslog HOSTNAME, OCSF/ECS observer).
    pub hostname: &'a str,
}

fn s<'a>(v: &'a Value, k: &'static str) -> Result<&'a str, SiemError> {
    v.get(k).and_then(Value::as_str).ok_or(SiemError::Field(k))
}

impl<'a> Record<'a> {
    /// Borrows a record from one parsed audit log line (`{"seq","ts","type","actor",...}`).
    pub fn from_value(v: &'a Value) -> Result<Record<'a>, SiemError> {
        let actor = v.get("actor").ok_or(SiemError::Field("actor"))?;
        Ok(Record {
            seq: v
                .get("seq")
                .and_then(Value::as_u64)
                .ok_or(SiemError::Field("seq"))?,
            ts: s(v, "ts")?,
            kind: s(v, "type")?,
            actor: Actor {
                uid: actor
                    .get("uid")
                    .and_then(Value::as_u64)
                    .and_then(|u| u32::try_from(u).ok())
                    .ok_or(SiemError::Field("actor.uid"))?,
                user: s(actor, "user").map_err(|_| SiemError::Field("actor.user"))?,
                role: actor.get("role").and_then(Value::as_str),
                via: s(actor, "via").map_err(|_| SiemError::Field("actor.via"))?,
            },
            host: v.get("host").and_then(Value::as_str),
            data: v.get("data").ok_or(SiemError::Field("data"))?,
            hash: v.get("hash").and_then(Value::as_str),
        })
    }

    /// Parses one audit log line into the JSON value [`Record::from_value`] borrows from.
    pub fn parse_line(line: &str) -> Result<Value, SiemError> {
        let v: Value = serde_json::from_str(line).map_err(|e| SiemError::NotJson(e.to_string()))?;
        if !v.is_object() {
            return Err(SiemError::NotJson("not an object".into()));
        }
        Ok(v)
    }

    /// `data.<key>` as text (strings as they are, other values as JSON), if present.
    pub fn data_str(&self, key: &str) -> Option<String> {
        match self.data.get(key)? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            v => Some(v.to_string()),
        }
    }
}
