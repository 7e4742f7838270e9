//! Splunk HTTP Event Collector envelopes (`/services/collector/event`):
//! `{"time","host","source","sourcetype","event":{…},"fields":{…}}`. Indexed `fields` are flat
//! string values (HEC rejects nested objects there): the record's seq and type, and the batch's
//! `tether_first_seq`, `tether_last_seq` and `tether_last_hash`.

use serde_json::{Value, json};

use crate::record::Record;
use crate::syslog::BatchProof;
use crate::time::rfc3339_to_unix_ms;

/// The envelope for `r` (its `event` is the whole record as `raw`, or rebuilt from `r`).
pub fn envelope(
    r: &Record<'_>,
    raw: Option<&Value>,
    hostname: &str,
    sourcetype: &str,
    batch: &BatchProof<'_>,
) -> Value {
    let time = rfc3339_to_unix_ms(r.ts).map_or(0.0, |ms| ms as f64 / 1000.0);
    let event = raw.cloned().unwrap_or_else(|| {
        json!({
            "seq": r.seq, "ts": r.ts, "type": r.kind,
            "actor": {"uid": r.actor.uid, "user": r.actor.user, "role": r.actor.role, "via": r.actor.via},
            "host": r.host, "data": r.data,
        })
    });
    json!({
        "time": time,
        "host": r.host.unwrap_or(hostname),
        "source": "tetherd:audit",
        "sourcetype": sourcetype,
        "event": event,
        "fields": {
            "tether_seq": r.seq.to_string(),
            "tether_type": r.kind,
            "tether_first_seq": batch.first_seq.to_string(),
            "tether_last_seq": batch.last_seq.to_string(),
            "tether_last_hash": batch.last_hash,
        },
    })
}
