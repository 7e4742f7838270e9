//! The daemon's records in the API's wire types: the one place where a storage or subsystem
//! shape becomes what `/v1` promises.

use tether_api as api;

/// A tunnel peer.
pub(crate) fn peer(p: &tether_tunnel::PeerStatus) -> api::PeerInfo {
    api::PeerInfo {
        id: p.id.0,
        name: p.name.clone(),
        public_key: p.public_key.clone(),
        overlay_ip: p.overlay_ip.to_string(),
        endpoint: p.endpoint.map(|e| e.to_string()),
        last_handshake_secs: p.last_handshake_secs,
        rtt_ms: p.rtt_ms,
        rx_bytes: p.rx_bytes,
        tx_bytes: p.tx_bytes,
        handshakes: p.handshakes,
        up: p.up,
        health: p.health.as_str().to_owned(),
        rebuilds: p.rebuilds,
        drops: p.drops.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        path: p.path.clone(),
    }
}

/// An inventory record joined with its peer's live state (if it has one).
pub(crate) fn host(
    h: &tether_enroll::HostRecord,
    p: Option<&tether_tunnel::PeerStatus>,
) -> api::Host {
    api::Host {
        name: h.name.clone(),
        overlay_ip: h.overlay_ip.to_string(),
        wg_public_key: h.wg_public_key.clone(),
        ssh_host_key: h.ssh_host_key.clone(),
        hostname: h.hostname.clone(),
        tags: h.tags.clone(),
        groups: h.groups.clone(),
        enrolled_at: h.enrolled_at,
        last_seen: h.last_seen,
        state: h.state.as_str().to_owned(),
        revoked_at: h.revoked_at,
        online: p.is_some_and(|p| p.up),
        last_handshake_secs: p.and_then(|p| p.last_handshake_secs),
        endpoint: p.and_then(|p| p.endpoint).map(|e| e.to_string()),
        rx_bytes: p.map_or(0, |p| p.rx_bytes),
        tx_bytes: p.map_or(0, |p| p.tx_bytes),
        ssh_user: h.ssh_user.clone(),
    }
}

/// A vault secret's metadata.
pub(crate) fn secret(s: &tether_vault::SecretInfo) -> api::SecretInfo {
    let rfc3339 = |t: &time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.to_string())
    };
    api::SecretInfo {
        name: s.name.clone(),
        backend: s.backend.as_str().to_owned(),
        version: s.version,
        generated: s.generated,
        created: rfc3339(&s.created),
        rotated: s.rotated.as_ref().map(rfc3339),
    }
}

/// A recent alert with its delivery state per sink.
pub(crate) fn alert_info(e: &tether_alerts::AlertEntry) -> api::AlertInfo {
    use tether_alerts::SinkState as S;
    let state_name = |s: &S| match s {
        S::Queued => "queued",
        S::Retrying => "retrying",
        S::Delivered => "delivered",
        S::Dropped => "dropped",
    };
    let states: Vec<&S> = e.sinks.values().map(|p| &p.state).collect();
    let state = if e.suppressed {
        "suppressed"
    } else if states.is_empty() {
        "unrouted"
    } else if states.iter().any(|s| **s == S::Dropped) {
        "dropped"
    } else if states.iter().any(|s| **s == S::Retrying) {
        "retrying"
    } else if states.iter().any(|s| **s == S::Queued) {
        "queued"
    } else {
        "delivered"
    };
    api::AlertInfo {
        id: e.id,
        ts: e.ts.clone(),
        kind: e.alert.kind.clone(),
        severity: e.alert.severity.as_str().to_owned(),
        host: e.alert.host.clone(),
        message: e.alert.message.clone(),
        fields: e.alert.fields.clone(),
        state: state.to_owned(),
        sinks: e
            .sinks
            .iter()
            .map(|(k, p)| {
                (
                    k.clone(),
                    api::AlertDelivery {
                        state: state_name(&p.state).to_owned(),
                        attempts: p.attempts,
                        error: p.error.clone(),
                        reason: p.reason.map(str::to_owned),
                    },
                )
            })
            .collect(),
    }
}

/// A target's file metadata.
pub(crate) fn fs_entry(m: &crate::state::FileMeta) -> api::FsEntry {
    api::FsEntry {
        name: m.name.clone(),
        kind: m.kind.to_owned(),
        size: m.size,
        mode: format!("{:o}", m.mode),
        uid: m.uid,
        gid: m.gid,
        mtime: m.mtime,
    }
}
