//! `/v1/hosts`: the hub's inventory joined with live tunnel state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Query of `GET /v1/hosts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostsQuery {
    /// Only hosts matching this selector (`host:a,b`, `group:g`, `tag:k=v`, `all`, `~regex`,
    /// joined with `,`, negated with `!`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// A host's name (path parameter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostRef {
    /// The host.
    pub name: String,
}

/// One enrolled host with its live tunnel state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Host {
    /// Unique name (a lowercase DNS label).
    pub name: String,
    /// Overlay address.
    pub overlay_ip: String,
    /// WireGuard public key, standard base64.
    pub wg_public_key: String,
    /// SSH host public key, OpenSSH format (pinned at enrollment).
    pub ssh_host_key: String,
    /// Hostname the machine reported at enrollment.
    pub hostname: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Enrollment time, unix seconds.
    pub enrolled_at: u64,
    /// Last time the host was seen, unix seconds.
    pub last_seen: Option<u64>,
    /// `active` or `revoked`.
    pub state: String,
    /// When it was revoked, unix seconds.
    pub revoked_at: Option<u64>,
    /// Whether its tunnel session is up.
    pub online: bool,
    /// Seconds since its last handshake (null = never).
    pub last_handshake_secs: Option<u64>,
    /// Its current UDP endpoint.
    pub endpoint: Option<String>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
    /// The account the hub logs in as: set for a target in forward mode (its sshd's
    /// `ssh.run_as`), absent for Tether's own SSH server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_user: Option<String>,
}

/// Answer of `GET /v1/hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostList {
    /// The hosts, by name.
    pub hosts: Vec<Host>,
}

/// Answer of `DELETE /v1/hosts/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostRemoved {
    /// The host removed.
    pub removed: String,
}

endpoint! {
    /// the inventory (optionally ?selector=SEL) with online state
    HostsList: Get "/v1/hosts", HostsQuery => HostList;
}
endpoint! {
    /// one host's record and live tunnel state
    HostsShow: Get "/v1/hosts/{name}", HostRef => Host;
}
endpoint! {
    /// forget a host; its tunnel peer goes away at once
    HostsRemove: Delete "/v1/hosts/{name}", HostRef => HostRemoved;
}
