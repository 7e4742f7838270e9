//! `/v1/vpn/...`: invites, revocation, key rotation and tunnel status.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tether_model::DaemonRole;

use super::Empty;

/// Body of `POST /v1/vpn/invite` and `/v1/vpn/reinvite`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    /// The host's name (a lowercase DNS label).
    pub name: String,
    /// Tags for the host record.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Groups for the host record.
    #[serde(default)]
    pub groups: Vec<String>,
    /// How long the token stays valid: `30m`, `24h`, `7d` (default `enroll.default_ttl`).
    #[serde(default)]
    pub ttl: Option<String>,
}

/// Answer of an invite: the token, shown once.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InviteResponse {
    /// The single-use invite token (`tether1.…`); whoever holds it can enroll one machine.
    pub token: String,
    /// The host's name.
    pub name: String,
    /// The overlay address reserved for it.
    pub overlay_ip: String,
    /// When the token expires, unix seconds.
    pub expires_at: u64,
    /// Where the target will enroll (`host:port`).
    pub enroll_endpoint: String,
    /// The hub's id.
    pub hub_id: String,
}

impl std::fmt::Debug for InviteResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InviteResponse")
            .field("token", &"[redacted]")
            .field("name", &self.name)
            .field("overlay_ip", &self.overlay_ip)
            .field("expires_at", &self.expires_at)
            .field("enroll_endpoint", &self.enroll_endpoint)
            .field("hub_id", &self.hub_id)
            .finish()
    }
}

/// Body of `POST /v1/vpn/revoke`: a host's name, or `all`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// The host to revoke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Revoke every host.
    #[serde(default)]
    pub all: bool,
}

/// Answer of `POST /v1/vpn/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RevokeResponse {
    /// Hosts revoked.
    pub revoked: Vec<String>,
    /// Pending invites for that name that were revoked too (single-host revoke only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invites_revoked: Option<u64>,
}

/// Body of `POST /v1/vpn/rotate-keys`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// One host (hub only); absent: every active host (hub) or this machine (target).
    #[serde(default)]
    pub name: Option<String>,
}

/// The result of rotating one host's WireGuard key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RotationOutcome {
    /// The host (or this machine's name on a target).
    pub host: String,
    /// Whether the new key is in force on both ends.
    pub ok: bool,
    /// The new public key (base64), when it worked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_public_key: Option<String>,
    /// What went wrong, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Answer of `POST /v1/vpn/rotate-keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RotateResponse {
    /// One outcome per host asked.
    pub rotated: Vec<RotationOutcome>,
}

/// Answer of `POST /v1/vpn/rotate-invite-key`. Names keys by epoch and public id, never a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RotateInviteKeyResponse {
    /// The new epoch: new invites are MACed with its key and name it.
    pub epoch: u32,
    /// Public id of the new key (first 8 bytes of a SHA-256 over it, hex).
    pub key_id: String,
    /// The epoch that signed invites until now; its outstanding invites stay valid until they
    /// expire.
    pub previous_epoch: u32,
    /// Every epoch the hub holds (all keep verifying the unexpired invites they signed).
    pub epochs: Vec<u32>,
    /// The vault entry holding the new key.
    pub vault_entry: String,
}

/// One tunnel peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PeerInfo {
    /// Peer id within the node.
    pub id: u32,
    /// Human name.
    pub name: String,
    /// Base64 public key.
    pub public_key: String,
    /// Overlay IP.
    pub overlay_ip: String,
    /// Current endpoint (roams to wherever authenticated packets come from).
    pub endpoint: Option<String>,
    /// Seconds since the last completed handshake (null = never).
    pub last_handshake_secs: Option<u64>,
    /// Handshake round-trip time of the last handshake we initiated, in milliseconds.
    pub rtt_ms: Option<u64>,
    /// Bytes received from the peer (WireGuard datagrams).
    pub rx_bytes: u64,
    /// Bytes sent to the peer (WireGuard datagrams).
    pub tx_bytes: u64,
    /// Completed handshakes.
    pub handshakes: u64,
    /// Whether a session is currently established.
    pub up: bool,
    /// `healthy`, `unhealthy` or `cooling_down`.
    pub health: String,
    /// Watchdog rebuilds so far.
    pub rebuilds: u64,
    /// Drops attributed to this peer, by reason.
    pub drops: BTreeMap<String, u64>,
    /// How datagrams to this peer travel now: `direct` (UDP) or `relay:NAME`.
    #[serde(default = "direct")]
    pub path: String,
}

fn direct() -> String {
    "direct".to_owned()
}

/// One configured relay, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RelayInfo {
    /// Its name (peers on it show `relay:NAME`; its address is in `[[tunnel.relays]]` or the
    /// invite).
    pub name: String,
    /// Whether this node holds an authenticated connection to it now.
    pub connected: bool,
}

/// Answer of `GET /v1/vpn/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VpnStatus {
    /// Hub or target.
    pub role: DaemonRole,
    /// Whether this node has a tunnel (a target that has not enrolled has none).
    pub tunnel: bool,
    /// What to do when there is no tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// This node's overlay address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_ip: Option<String>,
    /// This node's WireGuard public key (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// The UDP address the tunnel listens on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The peers.
    pub peers: Vec<PeerInfo>,
    /// The relays this node uses (none configured: empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<RelayInfo>,
    /// Hub: where targets enroll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enroll_endpoint: Option<String>,
    /// Hub: the WireGuard endpoint targets are told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wg_endpoint: Option<String>,
    /// Target: its saved enrollment (name, overlay address, hub endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub enrollment: Option<serde_json::Value>,
}

endpoint! {
    /// issue a single-use invite token for a new target (shown once)
    VpnInvite: Post "/v1/vpn/invite", InviteRequest => InviteResponse;
}
endpoint! {
    /// a fresh token for a lost machine: its old identity is revoked, its address kept
    VpnReinvite: Post "/v1/vpn/reinvite", InviteRequest => InviteResponse;
}
endpoint! {
    /// throw a host (or all hosts) out: tunnel peer removed at once, invites revoked
    VpnRevoke: Post "/v1/vpn/revoke", RevokeRequest => RevokeResponse;
}
endpoint! {
    /// rotate WireGuard keys now over the tunnel (hub: one or all hosts; target: itself)
    VpnRotateKeys: Post "/v1/vpn/rotate-keys", RotateRequest => RotateResponse;
}
endpoint! {
    /// a new invite key epoch: new invites use it, outstanding ones keep working until they expire
    VpnRotateInviteKey: Post "/v1/vpn/rotate-invite-key", Empty => RotateInviteKeyResponse;
}
endpoint! {
    /// this node's tunnel and every peer: endpoint, handshake, traffic, health
    VpnStatusGet: Get "/v1/vpn/status", Empty => VpnStatus;
}
