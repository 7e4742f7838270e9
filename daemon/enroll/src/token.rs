//! Invite tokens: `tether1.` + base64url(payload JSON) + `.` + base64url(HMAC-SHA256(invite key,
//! payload JSON bytes)).
//!
//! The payload is readable by anyone holding the token (the target reads the hub's endpoint and
//! the expiry from it without any key); the MAC is the secret part: it is never sent over the
//! network. Both sides derive the enrollment session key from it (see [`crate::proto`]), so only
//! a holder of the whole token can enroll, and only the hub holding the invite key can answer.
//!
//! The hub stores only SHA-256 of the 32-byte random nonce ([`InviteRecord`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tether_vault::SecretBox;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{EnrollError, Result};
use crate::util::{hmac, sha256, validate_group, validate_host_name, validate_tag};

/// Prefix of every token of this format version.
pub const TOKEN_PREFIX: &str = "tether1.";
/// Payload format version.
pub const TOKEN_VERSION: u32 = 1;
/// Longest token accepted (real tokens are well under 2 KB).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Most tags and groups an invite may carry, each.
pub const MAX_LABELS: usize = 64;

/// Public identity of a hub, as pinned in its invites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubIdentity {
    /// Where targets reach the enrollment listener, `host:port` (e.g. `hub.example.net:51821`).
    pub enroll_endpoint: String,
    /// The hub's WireGuard public key.
    pub wg_public: [u8; 32],
    /// The hub's WireGuard UDP endpoint for targets, `host:port`.
    pub wg_endpoint: String,
    /// The hub's SSH client public key, OpenSSH format (targets authorize it).
    pub ssh_client_public: String,
    /// Relays put in every invite (`[[tunnel.relays]]`): the target's tunnel falls back to them
    /// when UDP to the hub is blocked, and enrolls through them when `enroll_endpoint` is empty.
    pub relays: Vec<tether_model::relay::RelaySpec>,
}

impl HubIdentity {
    /// The hub id: first 8 bytes of SHA-256("tether-hub-id-v1" || WG public key), hex.
    pub fn hub_id(&self) -> HubId {
        HubId::from_wg_public(&self.wg_public)
    }
}

/// Short public identifier of a hub, derived from its WireGuard public key. A token naming
/// another hub id is *foreign* (reported distinctly from *tampered*).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HubId(pub String);

impl HubId {
    /// Derives the id from a WireGuard public key.
    pub fn from_wg_public(key: &[u8; 32]) -> HubId {
        let h = sha256(&[b"tether-hub-id-v1".as_slice(), key.as_slice()].concat());
        HubId(hex::encode(&h[..8]))
    }
}

impl fmt::Display for HubId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The readable part of a token (safe to log and audit: it holds no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvitePayload {
    /// Format version ([`TOKEN_VERSION`]).
    pub version: u32,
    /// Id of the issuing hub.
    pub hub_id: HubId,
    /// Hub enrollment endpoint, `host:port`.
    pub endpoint: String,
    /// Hub WireGuard public key, standard base64 of 32 bytes.
    pub hub_wg_public_key: String,
    /// Fingerprint (`SHA256:...`) of the hub's SSH client key.
    pub hub_ssh_fingerprint: String,
    /// Host name the target will have.
    pub name: String,
    /// Overlay address assigned to the target.
    pub overlay_ip: Ipv4Addr,
    /// Tags the host gets.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Groups the host joins.
    #[serde(default)]
    pub groups: Vec<String>,
    /// 32 random bytes, base64url without padding: makes the token single-use.
    pub nonce: String,
    /// Issue time, unix seconds.
    pub issued_at: u64,
    /// Expiry, unix seconds.
    pub expires_at: u64,
    /// Epoch of the hub's invite key that MACed this token (see [`crate::InviteKeyRing`]).
    /// Absent in tokens made before invite-key rotation existed (and omitted for epoch 0, so
    /// such tokens are byte-for-byte what older hubs issued): those mean epoch 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub key_epoch: u32,
    /// Relays the target may use (for its tunnel when UDP is blocked, and to enroll when
    /// `endpoint` is empty: a hub with no reachable address). Omitted when there are none, so
    /// tokens of hubs without relays are what older hubs issued.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<tether_model::relay::RelaySpec>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// A payload after its fields were checked, with the decoded binary fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedPayload {
    /// The payload.
    pub payload: InvitePayload,
    /// Decoded nonce.
    pub nonce: [u8; 32],
    /// Decoded hub WireGuard key.
    pub hub_wg_public: [u8; 32],
}

impl CheckedPayload {
    /// SHA-256 of the nonce, hex: the only form in which the hub stores it.
    pub fn nonce_hash(&self) -> String {
        nonce_hash(&self.nonce)
    }

    /// Fails with [`EnrollError::Expired`] when `now >= expires_at`.
    pub fn check_expiry(&self, now: u64) -> Result<()> {
        if now >= self.payload.expires_at {
            return Err(EnrollError::Expired {
                name: self.payload.name.clone(),
                at: self.payload.expires_at,
            });
        }
        Ok(())
    }
}

/// SHA-256 of a nonce, hex.
pub fn nonce_hash(nonce: &[u8; 32]) -> String {
    hex::encode(sha256(nonce))
}

fn malformed(what: impl Into<String>) -> EnrollError {
    EnrollError::Malformed { what: what.into() }
}

fn decode32(what: &str, s: &str, engine: &impl Engine) -> Result<[u8; 32]> {
    let v = engine
        .decode(s)
        .map_err(|_| malformed(format!("{what} is not valid base64")))?;
    <[u8; 32]>::try_from(v.as_slice()).map_err(|_| malformed(format!("{what} is not 32 bytes")))
}

/// Decodes and checks the payload JSON bytes (shared by token parsing and the hub's handling of
/// a Hello, which carries the payload without the MAC).
pub fn decode_payload(json: &[u8]) -> Result<CheckedPayload> {
    let payload: InvitePayload = serde_json::from_slice(json)
        .map_err(|e| malformed(format!("payload is not valid invite JSON ({e})")))?;
    if payload.version != TOKEN_VERSION {
        return Err(malformed(format!(
            "payload version {} is not supported (this tether understands {TOKEN_VERSION}); \
             upgrade tether",
            payload.version
        )));
    }
    let nonce = decode32("nonce", &payload.nonce, &URL_SAFE_NO_PAD)?;
    let hub_wg_public = decode32("hub WireGuard key", &payload.hub_wg_public_key, &STANDARD)?;
    validate_host_name(&payload.name)?;
    if payload.tags.len() > MAX_LABELS || payload.groups.len() > MAX_LABELS {
        return Err(malformed("too many tags or groups"));
    }
    for (k, v) in &payload.tags {
        validate_tag(k, v)?;
    }
    for g in &payload.groups {
        validate_group(g)?;
    }
    if payload.endpoint.len() > 300 {
        return Err(malformed("endpoint is too long"));
    }
    if payload.endpoint.is_empty() && payload.relays.is_empty() {
        return Err(malformed("it names neither an endpoint nor a relay"));
    }
    if let Some(p) = tether_model::relay::check_relays(&payload.relays) {
        return Err(malformed(p));
    }
    if !payload.hub_ssh_fingerprint.starts_with("SHA256:") {
        return Err(malformed("hub SSH fingerprint is not a SHA256 fingerprint"));
    }
    Ok(CheckedPayload {
        payload,
        nonce,
        hub_wg_public,
    })
}

/// An invite token. It is a secret: `Debug` prints `Token([redacted])`; the text lives in locked
/// memory and is read with [`Token::expose`].
pub struct Token(SecretBox);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token([redacted])")
    }
}

impl Token {
    /// Wraps token text (e.g. from the command line), wiping the given `String`.
    pub fn from_text(mut text: String) -> Result<Token> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(malformed("it is empty"));
        }
        // Before anything goes into locked memory: the same answer for every source (argv,
        // stdin, file) instead of a secure-memory failure for a huge argument.
        if trimmed.len() > MAX_TOKEN_LEN {
            text.zeroize();
            return Err(malformed("it is longer than 16 KiB"));
        }
        let boxed = SecretBox::from_slice(trimmed.as_bytes());
        text.zeroize();
        Ok(Token(boxed?))
    }

    /// Runs `f` with the token text (to print it once). Keep the text out of logs.
    pub fn expose<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        self.0
            .expose(|b| f(std::str::from_utf8(b).unwrap_or_default()))
    }

    /// Parses the token without any key (target side) and checks its expiry against `now`.
    pub fn parse(&self, now: u64) -> Result<ParsedToken> {
        let parsed = self.0.expose(|b| match std::str::from_utf8(b) {
            Ok(s) => parse_token(s),
            Err(_) => Err(malformed("it is not UTF-8 text")),
        })?;
        parsed.checked.check_expiry(now)?;
        Ok(parsed)
    }
}

/// A structurally valid token: readable payload and the (secret) MAC.
pub struct ParsedToken {
    /// The checked payload.
    pub checked: CheckedPayload,
    /// The payload exactly as encoded in the token (base64url), which the MAC covers (decoded).
    pub payload_b64: String,
    pub(crate) mac: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for ParsedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedToken")
            .field("payload", &self.checked.payload)
            .field("mac", &"[redacted]")
            .finish()
    }
}

impl ParsedToken {
    /// The readable payload.
    pub fn payload(&self) -> &InvitePayload {
        &self.checked.payload
    }

    /// Hub-side check of the token itself: hub id, then MAC (constant-time), then expiry,
    /// with one key (whatever epoch the token names).
    pub fn verify(&self, invite_key: &SecretBox, hub_id: &HubId, now: u64) -> Result<()> {
        self.verify_mac(invite_key, hub_id)?;
        self.checked.check_expiry(now)
    }

    /// Hub-side check against every invite key the hub holds: the key of the epoch the token
    /// names (refused as [`EnrollError::UnknownInviteKey`] when the ring lacks it), then the MAC
    /// (constant-time), then expiry — so a token of a retired key is accepted only until it
    /// expires.
    pub fn verify_with(&self, keys: &crate::InviteKeyRing, hub_id: &HubId, now: u64) -> Result<()> {
        let key = keys.key(self.checked.payload.key_epoch)?;
        self.verify_mac(key, hub_id)?;
        self.checked.check_expiry(now)
    }

    fn verify_mac(&self, invite_key: &SecretBox, hub_id: &HubId) -> Result<()> {
        if &self.checked.payload.hub_id != hub_id {
            return Err(EnrollError::ForeignHub {
                token_hub: self.checked.payload.hub_id.to_string(),
                presented_to: format!("this hub ({hub_id})"),
            });
        }
        let json = URL_SAFE_NO_PAD
            .decode(&self.payload_b64)
            .map_err(|_| malformed("payload is not base64url"))?;
        let expect = Zeroizing::new(invite_key.expose(|k| hmac(k, &[&json])));
        if !bool::from(expect.ct_eq(&*self.mac)) {
            return Err(EnrollError::Tampered);
        }
        Ok(())
    }
}

/// Parses token text without any key and without checking expiry. Never panics.
pub fn parse_token(text: &str) -> Result<ParsedToken> {
    let text = text.trim();
    if text.len() > MAX_TOKEN_LEN {
        return Err(malformed("it is longer than 16 KiB"));
    }
    let rest = text.strip_prefix(TOKEN_PREFIX).ok_or_else(|| {
        malformed("it does not start with `tether1.` (wrong text, or a token of another version)")
    })?;
    let mut parts = rest.split('.');
    let (Some(payload_b64), Some(mac_b64), None) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(
            "it must have exactly two parts after `tether1.`, separated by one `.`",
        ));
    };
    let json = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| malformed("payload is not base64url"))?;
    let checked = decode_payload(&json)?;
    let mac = Zeroizing::new(decode32("signature", mac_b64, &URL_SAFE_NO_PAD)?);
    Ok(ParsedToken {
        checked,
        payload_b64: payload_b64.to_string(),
        mac,
    })
}

/// What the hub remembers of an issued invite: never the nonce or the MAC, only SHA-256(nonce).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteRecord {
    /// SHA-256 of the nonce, hex.
    pub nonce_hash: String,
    /// Host name.
    pub name: String,
    /// Assigned overlay address.
    pub overlay_ip: Ipv4Addr,
    /// Issue time, unix seconds.
    pub issued_at: u64,
    /// Expiry, unix seconds.
    pub expires_at: u64,
    /// Pending, used or revoked.
    pub state: InviteState,
}

/// Lifecycle of an invite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum InviteState {
    /// Not used yet.
    Pending,
    /// Consumed by an enrollment at this time (unix seconds).
    Used {
        /// When.
        at: u64,
    },
    /// Revoked by an admin at this time (unix seconds).
    Revoked {
        /// When.
        at: u64,
    },
}

/// What to put in a new invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteSpec {
    /// Host name.
    pub name: String,
    /// Overlay address.
    pub overlay_ip: Ipv4Addr,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Lifetime in seconds.
    pub ttl_secs: u64,
}

/// Issues a token MACed with an epoch-0 invite key (low level: no IP allocation or storage;
/// see [`crate::Hub::invite`]).
pub fn issue(
    invite_key: &SecretBox,
    hub: &HubIdentity,
    spec: &InviteSpec,
    now: u64,
) -> Result<(Token, InviteRecord)> {
    issue_with_epoch(invite_key, 0, hub, spec, now)
}

/// Issues a token MACed with `invite_key`, the key of epoch `key_epoch`, which the token names.
pub fn issue_with_epoch(
    invite_key: &SecretBox,
    key_epoch: u32,
    hub: &HubIdentity,
    spec: &InviteSpec,
    now: u64,
) -> Result<(Token, InviteRecord)> {
    validate_host_name(&spec.name)?;
    if (hub.enroll_endpoint.is_empty() || hub.wg_endpoint.is_empty()) && hub.relays.is_empty() {
        return Err(EnrollError::Unreachable);
    }
    if spec.tags.len() > MAX_LABELS || spec.groups.len() > MAX_LABELS {
        return Err(malformed("too many tags or groups (at most 64 each)"));
    }
    for (k, v) in &spec.tags {
        validate_tag(k, v)?;
    }
    for g in &spec.groups {
        validate_group(g)?;
    }
    let mut nonce = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut *nonce).map_err(|e| EnrollError::Internal {
        what: format!("OS random number generator failed: {e}"),
    })?;
    let expires_at = now.saturating_add(spec.ttl_secs);
    let payload = InvitePayload {
        version: TOKEN_VERSION,
        hub_id: hub.hub_id(),
        endpoint: hub.enroll_endpoint.clone(),
        hub_wg_public_key: STANDARD.encode(hub.wg_public),
        hub_ssh_fingerprint: crate::sshkey::ssh_fingerprint(&hub.ssh_client_public)?,
        name: spec.name.clone(),
        overlay_ip: spec.overlay_ip,
        tags: spec.tags.clone(),
        groups: spec.groups.clone(),
        nonce: URL_SAFE_NO_PAD.encode(*nonce),
        issued_at: now,
        expires_at,
        key_epoch,
        relays: hub.relays.clone(),
    };
    let json = serde_json::to_vec(&payload).map_err(|e| EnrollError::Internal {
        what: format!("encode invite payload: {e}"),
    })?;
    let mac = Zeroizing::new(invite_key.expose(|k| hmac(k, &[&json])));
    let text = format!(
        "{TOKEN_PREFIX}{}.{}",
        URL_SAFE_NO_PAD.encode(&json),
        URL_SAFE_NO_PAD.encode(*mac)
    );
    let token = Token::from_text(text)?;
    let record = InviteRecord {
        nonce_hash: nonce_hash(&nonce),
        name: spec.name.clone(),
        overlay_ip: spec.overlay_ip,
        issued_at: now,
        expires_at,
        state: InviteState::Pending,
    };
    Ok((token, record))
}
