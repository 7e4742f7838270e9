//! The enrollment exchange, sans-IO: frames, messages, the transcript MACs, and the target's
//! state machine. The hub's side is [`crate::Hub::handle_hello`] fed by a [`FrameDecoder`].
//!
//! Wire: each frame is a `u32` big-endian length followed by that many bytes of JSON
//! ([`Message`]); at most [`MAX_FRAME`] bytes. One exchange per connection:
//!
//! ```text
//! target -> hub   Hello   { payload, target WG key, target SSH host key, hostname, client nonce,
//!                           proof = HMAC(k, T_hello) }
//! hub -> target   Welcome { name, overlay ip, hub WG key, hub WG endpoint, hub SSH client key,
//!                           tags, groups, proof = HMAC(k, T_hello || proof_t || T_welcome) }
//!              or Error   { code, message }
//! ```
//!
//! **Versions.** The first release (v1) sent no version. From v2 the Hello carries `version`
//! (the newest the target speaks) and the hub answers with the version it chose (the highest
//! both speak) in the Welcome; towards a Hello without `version` the hub treats the target as
//! v1 and leaves `version` out of the Welcome, so a first-release target (which rejects unknown
//! fields) still enrolls. When present, the version is part of both transcripts: stripping it
//! on the path (a downgrade) breaks the proof.
//!
//! **A current target, a first-release hub.** The first-release hub rejects the `version` field
//! the way its strict parser rejected any unknown field: before its hub core sees the Hello, it
//! answers the error frame `protocol` / "enrollment protocol error: invalid message: unknown
//! field `version`, expected one of `payload`, …" ([`is_first_release_refusal`]). On exactly
//! that answer, and only to a versioned Hello, the target retries once on a new connection,
//! within the same deadline, with the same Hello minus `version` and its proof over the v1
//! transcript ([`TargetSession::fallback_to_v1`]). The refused attempt consumed nothing: the
//! invite nonce is spent only by the hub core, after the Hello decoded and its proof checked.
//! The fallback bypasses nothing: v1 and v2 differ only in the version field (same key, same
//! transcripts but for the version, same checks on both sides), so a man in the middle who
//! forges the refusal (error frames are not authenticated) gets a v1 exchange that is
//! authenticated exactly like a v2 one; against a current hub the retried v1 Hello is served as
//! a first-release target's, which this hub accepts anyway.
//!
//! `k = HMAC-SHA256(token_mac, "tether-enroll-v1" || nonce)`, where `token_mac` is the token's
//! secret MAC (never sent): the target has it in the token; the hub recomputes it from the
//! payload with its invite key. Every field either side relies on is in a MACed transcript
//! (length-prefixed, domain-separated), so a man in the middle without the token can neither
//! read anything secret nor swap keys, and a server without the invite key cannot produce the
//! Welcome proof (a fake hub is detected). Error frames are not authenticated: an attacker on the
//! path can make an enrollment fail, never succeed wrongly.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::{EnrollError, RemoteContext, Result};
use crate::sshkey::SshPublicKey;
use crate::token::{ParsedToken, Token};
use crate::util::hmac;

/// Largest frame accepted by default (1 MiB).
pub const MAX_FRAME: usize = 1 << 20;
/// Domain-separation label of the key derivation and the transcripts.
pub const LABEL: &[u8] = b"tether-enroll-v1";
/// The enrollment protocol version of the first release, which sent no version.
pub const PROTOCOL_V1: u16 = 1;
/// The enrollment protocol version this release speaks (v2: the exchange names its version).
pub const PROTOCOL_VERSION: u16 = 2;
/// The oldest version this release still speaks (one release back).
pub const MIN_PROTOCOL_VERSION: u16 = PROTOCOL_V1;
/// Longest hostname a target may report.
pub const MAX_HOSTNAME_LEN: usize = 253;

/// The message a first-release hub sent for a Hello that names a version: its
/// `EnrollError::Protocol` around serde's unknown-field error over its strict Hello's fields
/// (serde 1.0.229 and serde_json 1.0.154 in its lock file, as in this release's).
const FIRST_RELEASE_REFUSAL: &str = "enrollment protocol error: invalid message: unknown field \
     `version`, expected one of `payload`, `wg_public_key`, `ssh_host_key`, `hostname`, \
     `client_nonce`, `proof`; check that both sides run a compatible tether version";

/// Whether an error frame is exactly a first-release (v1) hub refusing the `version` field of a
/// Hello: code `protocol` and the message its strict parser produced, nothing else.
pub fn is_first_release_refusal(frame: &ErrorFrame) -> bool {
    frame.code == "protocol" && frame.message == FIRST_RELEASE_REFUSAL
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Target → hub.
    Hello(Hello),
    /// Hub → target on success.
    Welcome(Welcome),
    /// Hub → target on failure.
    Error(ErrorFrame),
}

/// The target's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The token's payload part, exactly as in the token (base64url JSON). Not the MAC.
    pub payload: String,
    /// Target WireGuard public key, standard base64 of 32 bytes.
    pub wg_public_key: String,
    /// Target SSH host public key, OpenSSH format.
    pub ssh_host_key: String,
    /// The target's hostname (informational).
    pub hostname: String,
    /// 32 fresh random bytes, base64url.
    pub client_nonce: String,
    /// HMAC(k, T_hello), base64url.
    pub proof: String,
    /// The newest enrollment protocol version the target speaks; absent (v1) from the first
    /// release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u16>,
    /// Proof that the target holds the private key of `wg_public_key`:
    /// [`wg_possession_proof`], base64url. Absent from first-release (v1) targets; a hub that
    /// can check it requires it from every target that names a version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wg_proof: Option<String>,
    /// The account the hub logs in as over SSH: set by a target in forward mode (its sshd's
    /// `ssh.run_as`); absent for Tether's own SSH server. Covered by `proof`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_user: Option<String>,
}

/// X25519 key agreement with this side's WireGuard private key (which stays in the vault):
/// the target proves it holds the key it enrolls with, the hub checks it with its own.
pub trait WgKeyAgreement: Send + Sync {
    /// X25519(own private key, `peer_public`), or `None` when the key is unavailable.
    fn agree(&self, peer_public: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>>;
}

/// A shareable [`WgKeyAgreement`] (its `Debug` shows nothing).
#[derive(Clone)]
pub struct WgProver(pub std::sync::Arc<dyn WgKeyAgreement>);

impl std::fmt::Debug for WgProver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WgProver(..)")
    }
}

/// The proof of possession of the target's WireGuard private key: an HMAC over the Hello's
/// transcript, keyed with HMAC(k, label ‖ X25519(target private, hub public)). Only a holder
/// of the target's private key (or of the hub's) can make it, and it is bound to this
/// token's session key and to every field of this Hello. `None` for a non-contributory
/// (all-zero) shared secret (a small-order public key).
pub fn wg_possession_proof(k: &[u8; 32], shared: &[u8; 32], hello: &Hello) -> Option<[u8; 32]> {
    if shared.iter().all(|b| *b == 0) {
        return None;
    }
    let key = Zeroizing::new(hmac(k, &[b"tether enroll wg-possession v1\0", shared]));
    Some(hmac(&*key, &[&hello_transcript(hello).0]))
}

impl Hello {
    /// The newest version the target speaks ([`PROTOCOL_V1`] when it names none).
    pub fn protocol_version(&self) -> u16 {
        self.version.unwrap_or(PROTOCOL_V1)
    }
}

/// The hub's choice of version for `hello`: the highest both speak. `Ok(None)` for a v1
/// target, whose Welcome must not carry the field.
pub fn negotiate(hello: &Hello) -> Result<Option<u16>> {
    let theirs = hello.protocol_version();
    let chosen = theirs.min(PROTOCOL_VERSION);
    if chosen < MIN_PROTOCOL_VERSION {
        return Err(EnrollError::UnsupportedVersion {
            ours_min: MIN_PROTOCOL_VERSION,
            ours_max: PROTOCOL_VERSION,
            theirs,
        });
    }
    Ok(hello.version.map(|_| chosen))
}

/// The hub's answer on success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Welcome {
    /// Host name the target got.
    pub name: String,
    /// The target's overlay address.
    pub overlay_ip: Ipv4Addr,
    /// Hub WireGuard public key, standard base64.
    pub hub_wg_public_key: String,
    /// Hub WireGuard UDP endpoint, `host:port`.
    pub hub_wg_endpoint: String,
    /// Hub SSH client public key, OpenSSH format (authorize it for the hub's connections).
    pub hub_ssh_client_key: String,
    /// Tags (invite tags plus any added by enrollment hooks).
    pub tags: BTreeMap<String, String>,
    /// Groups.
    pub groups: Vec<String>,
    /// HMAC(k, T_hello || target proof || T_welcome), base64url.
    pub proof: String,
    /// The version the hub chose; absent towards a v1 target, and from a first-release hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u16>,
}

impl Welcome {
    /// The hub's WireGuard public key, decoded.
    pub fn hub_wg_public(&self) -> Result<[u8; 32]> {
        decode_key(&self.hub_wg_public_key, "hub WireGuard key")
    }
}

/// An error reported by the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// [`EnrollError::code`].
    pub code: String,
    /// [`EnrollError::wire_message`].
    pub message: String,
    /// For `rate_limited`: when the hub expects to take the next attempt from this address, in
    /// milliseconds. Optional and skipped when absent, so hubs and targets of earlier releases
    /// (whose error frame accepts unknown fields) still read the frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// Encodes one message as a frame.
pub fn encode_frame(msg: &Message) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(msg).map_err(|e| EnrollError::Protocol {
        what: format!("could not encode a message: {e}"),
    })?;
    let len = u32::try_from(json.len()).map_err(|_| EnrollError::FrameTooLarge {
        len: json.len(),
        max: MAX_FRAME,
    })?;
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// The error frame the hub sends for `err`.
pub fn error_frame(err: &EnrollError) -> Vec<u8> {
    let retry_after_ms = match err {
        EnrollError::RateLimited { retry_after_ms } => *retry_after_ms,
        _ => None,
    };
    encode_frame(&Message::Error(ErrorFrame {
        code: err.code().to_string(),
        message: err.wire_message(),
        retry_after_ms,
    }))
    .unwrap_or_default()
}

/// Incremental frame decoder: push bytes, pop messages. Rejects a frame as soon as its header
/// announces more than the limit, before buffering it.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl FrameDecoder {
    /// A decoder with a frame limit.
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            max: max_frame,
        }
    }

    /// How many bytes the decoder needs before it can make progress (≥ 1).
    pub fn wanted(&self) -> usize {
        match self.announced() {
            Some(n) => (4 + n).saturating_sub(self.buf.len()).max(1),
            None => 4 - self.buf.len().min(3),
        }
    }

    fn announced(&self) -> Option<usize> {
        self.buf
            .get(..4)
            .map(|h| u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize)
    }

    /// Adds received bytes; fails when a frame header announces more than the limit.
    pub fn push(&mut self, bytes: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(bytes);
        if let Some(n) = self.announced()
            && n > self.max
        {
            return Err(EnrollError::FrameTooLarge {
                len: n,
                max: self.max,
            });
        }
        Ok(())
    }

    /// The next complete message, if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<Message>> {
        let Some(n) = self.announced() else {
            return Ok(None);
        };
        if n > self.max {
            return Err(EnrollError::FrameTooLarge {
                len: n,
                max: self.max,
            });
        }
        if self.buf.len() < 4 + n {
            return Ok(None);
        }
        let msg = serde_json::from_slice::<Message>(&self.buf[4..4 + n]).map_err(|e| {
            EnrollError::Protocol {
                what: format!("invalid message: {e}"),
            }
        });
        self.buf.drain(..4 + n);
        msg.map(Some)
    }
}

fn decode_key(s: &str, what: &str) -> Result<[u8; 32]> {
    let v = STANDARD.decode(s).map_err(|_| EnrollError::Protocol {
        what: format!("{what} is not base64"),
    })?;
    <[u8; 32]>::try_from(v.as_slice()).map_err(|_| EnrollError::Protocol {
        what: format!("{what} is not 32 bytes"),
    })
}

fn decode_tag(s: &str, what: &str) -> Result<[u8; 32]> {
    let v = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| EnrollError::Protocol {
            what: format!("{what} is not base64url"),
        })?;
    <[u8; 32]>::try_from(v.as_slice()).map_err(|_| EnrollError::Protocol {
        what: format!("{what} is not 32 bytes"),
    })
}

/// Session key: `HMAC-SHA256(token_mac, "tether-enroll-v1" || nonce)`.
pub fn session_key(token_mac: &[u8; 32], nonce: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(hmac(token_mac, &[LABEL, nonce]))
}

/// Length-prefixed, domain-separated transcript bytes.
#[derive(Debug, Default, Clone)]
struct Transcript(Vec<u8>);

impl Transcript {
    fn field(&mut self, bytes: &[u8]) -> &mut Self {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(bytes);
        self
    }
}

fn hello_transcript(h: &Hello) -> Transcript {
    let mut t = Transcript::default();
    t.field(LABEL)
        .field(b"hello")
        .field(h.payload.as_bytes())
        .field(h.wg_public_key.as_bytes())
        .field(h.ssh_host_key.as_bytes())
        .field(h.hostname.as_bytes())
        .field(h.client_nonce.as_bytes());
    if let Some(v) = h.version {
        t.field(b"version").field(&v.to_be_bytes());
    }
    if let Some(u) = &h.ssh_user {
        t.field(b"ssh_user").field(u.as_bytes());
    }
    t
}

fn welcome_transcript(hello: &Transcript, target_proof: &str, w: &Welcome) -> Transcript {
    let mut t = hello.clone();
    let tags = serde_json::to_vec(&w.tags).unwrap_or_default();
    let groups = serde_json::to_vec(&w.groups).unwrap_or_default();
    t.field(target_proof.as_bytes())
        .field(b"welcome")
        .field(w.name.as_bytes())
        .field(w.overlay_ip.to_string().as_bytes())
        .field(w.hub_wg_public_key.as_bytes())
        .field(w.hub_wg_endpoint.as_bytes())
        .field(w.hub_ssh_client_key.as_bytes())
        .field(&tags)
        .field(&groups);
    if let Some(v) = w.version {
        t.field(b"version").field(&v.to_be_bytes());
    }
    t
}

/// The target's proof over a Hello (all fields but `proof`).
pub fn hello_proof(k: &[u8; 32], hello: &Hello) -> [u8; 32] {
    hmac(k, &[&hello_transcript(hello).0])
}

/// The hub's proof over a Welcome (all fields but `proof`) answering `hello`.
pub fn welcome_proof(k: &[u8; 32], hello: &Hello, welcome: &Welcome) -> [u8; 32] {
    let t = welcome_transcript(&hello_transcript(hello), &hello.proof, welcome);
    hmac(k, &[&t.0])
}

/// Constant-time check of a base64url proof.
pub(crate) fn proof_matches(expected: &[u8; 32], got_b64: &str) -> bool {
    match decode_tag(got_b64, "proof") {
        Ok(got) => bool::from(expected.ct_eq(&got)),
        Err(_) => false,
    }
}

/// Public halves of the target's keys, sent at enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetKeys {
    /// Target WireGuard public key.
    pub wg_public: [u8; 32],
    /// Target SSH host public key, OpenSSH format.
    pub ssh_host_key: String,
    /// The target's hostname (informational).
    pub hostname: String,
    /// Forward mode: the sshd account the hub logs in as; `None` for Tether's own SSH server.
    pub ssh_user: Option<String>,
}

/// Longest SSH user name a target may name.
pub const MAX_SSH_USER_LEN: usize = 32;

/// Whether `user` is a plausible POSIX account name for the hub to log in as.
pub fn valid_ssh_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= MAX_SSH_USER_LEN
        && !user.starts_with('-')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Checks the fields of a Hello that the target supplies (hub side).
pub(crate) fn check_hello_fields(h: &Hello) -> Result<[u8; 32]> {
    let wg = decode_key(&h.wg_public_key, "target WireGuard key")?;
    SshPublicKey::parse(&h.ssh_host_key).map_err(|e| EnrollError::Protocol {
        what: format!("target SSH host key: {e}"),
    })?;
    if h.hostname.len() > MAX_HOSTNAME_LEN || h.hostname.chars().any(|c| c.is_control()) {
        return Err(EnrollError::Protocol {
            what: "hostname is too long or has control characters".into(),
        });
    }
    if let Some(u) = &h.ssh_user
        && !valid_ssh_user(u)
    {
        return Err(EnrollError::Protocol {
            what: "ssh_user is not an account name (letters, digits, _ - . ; at most 32)".into(),
        });
    }
    decode_tag(&h.client_nonce, "client nonce")?;
    Ok(wg)
}

/// The target's side of the exchange, sans-IO: build the Hello, then feed received bytes until a
/// verified [`Welcome`] (or an error) comes out.
pub struct TargetSession {
    token: ParsedToken,
    k: Zeroizing<[u8; 32]>,
    hello: Hello,
    decoder: FrameDecoder,
    endpoint: String,
    /// The hub answered the versioned Hello like a first-release hub; a v1 retry is due.
    refused_version: bool,
}

impl std::fmt::Debug for TargetSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetSession")
            .field("name", &self.token.checked.payload.name)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl TargetSession {
    /// Parses the token (failing locally if it is malformed or expired at `now`) and builds the
    /// Hello frame to send. `endpoint` is the address that will be contacted (for messages).
    pub fn start(
        token: &Token,
        keys: &TargetKeys,
        now: u64,
        max_frame: usize,
        endpoint: Option<&str>,
    ) -> Result<(TargetSession, Vec<u8>)> {
        Self::start_proving(token, keys, None, now, max_frame, endpoint)
    }

    /// Like [`TargetSession::start`], and with `prover` (the target's WireGuard private key)
    /// the Hello carries the proof of possession ([`wg_possession_proof`]).
    pub fn start_proving(
        token: &Token,
        keys: &TargetKeys,
        prover: Option<&dyn WgKeyAgreement>,
        now: u64,
        max_frame: usize,
        endpoint: Option<&str>,
    ) -> Result<(TargetSession, Vec<u8>)> {
        let parsed = token.parse(now)?;
        SshPublicKey::parse(&keys.ssh_host_key)?;
        let mut client_nonce = [0u8; 32];
        getrandom::fill(&mut client_nonce).map_err(|e| EnrollError::Internal {
            what: format!("OS random number generator failed: {e}"),
        })?;
        let k = session_key(&parsed.mac, &parsed.checked.nonce);
        let mut hello = Hello {
            payload: parsed.payload_b64.clone(),
            wg_public_key: STANDARD.encode(keys.wg_public),
            ssh_host_key: keys.ssh_host_key.clone(),
            hostname: keys.hostname.chars().take(MAX_HOSTNAME_LEN).collect(),
            client_nonce: URL_SAFE_NO_PAD.encode(client_nonce),
            proof: String::new(),
            version: Some(PROTOCOL_VERSION),
            wg_proof: None,
            ssh_user: keys.ssh_user.clone(),
        };
        hello.proof = URL_SAFE_NO_PAD.encode(hello_proof(&k, &hello));
        if let Some(prover) = prover {
            let shared = prover.agree(&parsed.checked.hub_wg_public).ok_or_else(|| {
                EnrollError::Internal {
                    what: "this machine's WireGuard key is unavailable for the proof of possession"
                        .into(),
                }
            })?;
            let proof =
                wg_possession_proof(&k, &shared, &hello).ok_or_else(|| EnrollError::Protocol {
                    what: "the hub's WireGuard key in the token is not usable (small order)".into(),
                })?;
            hello.wg_proof = Some(URL_SAFE_NO_PAD.encode(proof));
        }
        let frame = encode_frame(&Message::Hello(hello.clone()))?;
        let endpoint = endpoint
            .map(str::to_string)
            .unwrap_or_else(|| parsed.checked.payload.endpoint.clone());
        Ok((
            TargetSession {
                token: parsed,
                k,
                hello,
                decoder: FrameDecoder::new(max_frame),
                endpoint,
                refused_version: false,
            },
            frame,
        ))
    }

    /// The endpoint to contact.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// How many more bytes are needed at least.
    pub fn wanted(&self) -> usize {
        self.decoder.wanted()
    }

    /// After [`TargetSession::receive`] failed: when the hub answered the versioned Hello
    /// exactly as a first-release hub does ([`is_first_release_refusal`]), the v1 Hello to send
    /// on a new connection (the same Hello without `version`, its proof over the v1
    /// transcript), once; `None` after any other failure or a second time. The session then
    /// expects a v1 Welcome (without a version).
    pub fn fallback_to_v1(&mut self) -> Result<Option<Vec<u8>>> {
        if !std::mem::take(&mut self.refused_version) || self.hello.version.is_none() {
            return Ok(None);
        }
        self.hello.version = None;
        // The first release knew no proof of possession either (and refuses unknown fields).
        self.hello.wg_proof = None;
        self.hello.proof = URL_SAFE_NO_PAD.encode(hello_proof(&self.k, &self.hello));
        self.decoder = FrameDecoder::new(self.decoder.max);
        encode_frame(&Message::Hello(self.hello.clone())).map(Some)
    }

    /// Feeds received bytes. `Ok(None)`: need more. `Ok(Some(w))`: the hub proved itself and its
    /// reply matches every value the token pins.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<Option<Welcome>> {
        self.decoder.push(bytes)?;
        let Some(msg) = self.decoder.next_message()? else {
            return Ok(None);
        };
        let p = &self.token.checked.payload;
        match msg {
            Message::Welcome(w) => {
                let expected = welcome_proof(&self.k, &self.hello, &w);
                if !proof_matches(&expected, &w.proof) {
                    return Err(EnrollError::HubNotAuthenticated {
                        endpoint: self.endpoint.clone(),
                    });
                }
                let chosen = w.version.unwrap_or(PROTOCOL_V1);
                if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&chosen) {
                    return Err(EnrollError::UnsupportedVersion {
                        ours_min: MIN_PROTOCOL_VERSION,
                        ours_max: PROTOCOL_VERSION,
                        theirs: chosen,
                    });
                }
                // Authenticated; now it must also agree with what the token pins.
                if w.hub_wg_public()? != self.token.checked.hub_wg_public {
                    return Err(EnrollError::HubMismatch {
                        what: "hub WireGuard key",
                    });
                }
                let fp = crate::sshkey::ssh_fingerprint(&w.hub_ssh_client_key)?;
                if fp != p.hub_ssh_fingerprint {
                    return Err(EnrollError::HubMismatch {
                        what: "hub SSH key fingerprint",
                    });
                }
                if w.overlay_ip != p.overlay_ip {
                    return Err(EnrollError::HubMismatch {
                        what: "overlay address",
                    });
                }
                if w.name != p.name {
                    return Err(EnrollError::HubMismatch { what: "host name" });
                }
                Ok(Some(w))
            }
            Message::Error(e) => {
                self.refused_version = self.hello.version.is_some() && is_first_release_refusal(&e);
                Err(EnrollError::from_remote(
                    &e.code,
                    &e.message,
                    &RemoteContext {
                        name: &p.name,
                        expires_at: p.expires_at,
                        token_hub: &p.hub_id.0,
                        endpoint: &self.endpoint,
                        retry_after_ms: e.retry_after_ms,
                    },
                ))
            }
            Message::Hello(_) => Err(EnrollError::Protocol {
                what: "the hub sent a Hello".into(),
            }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::first_release::{self, V1Message};

    #[test]
    fn a_retry_after_reaches_current_targets_and_first_release_ones_still_read_the_refusal() {
        let frame = error_frame(&EnrollError::RateLimited {
            retry_after_ms: Some(1250),
        });
        let json = std::str::from_utf8(&frame[4..]).unwrap();
        assert!(json.contains("\"retry_after_ms\":1250"), "{json}");
        // A first-release target decodes it as its own error frame (two fields, unknown ones
        // accepted: `git show eadd2dd^:daemon/enroll/src/proto.rs`), code and message intact.
        #[derive(serde::Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum V1Answer {
            Error { code: String, message: String },
        }
        let V1Answer::Error { code, message } = serde_json::from_slice(&frame[4..])
            .unwrap_or_else(|e| panic!("a first-release target could not read {json}: {e}"));
        let old = ErrorFrame {
            code,
            message,
            retry_after_ms: None,
        };
        assert_eq!(old.code, "rate_limited");
        assert!(old.message.contains("1.250 s"), "{}", old.message);
        // Other errors carry no retry-after at all (the frame is what earlier hubs sent).
        let plain = error_frame(&EnrollError::Tampered);
        assert!(
            !std::str::from_utf8(&plain[4..])
                .unwrap()
                .contains("retry_after")
        );
        // A current target gets the value back in the error.
        let (_dir, _hub, mut s, _) = exchange();
        match s.receive(&frame) {
            Err(EnrollError::RateLimited { retry_after_ms }) => {
                assert_eq!(retry_after_ms, Some(1250))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decoder_handles_split_and_oversize() {
        let f = encode_frame(&Message::Error(ErrorFrame {
            code: "x".into(),
            message: "y".into(),
            retry_after_ms: None,
        }))
        .unwrap();
        let mut d = FrameDecoder::new(MAX_FRAME);
        for b in &f[..f.len() - 1] {
            d.push(&[*b]).unwrap();
            assert!(d.next_message().unwrap().is_none());
        }
        d.push(&f[f.len() - 1..]).unwrap();
        assert!(matches!(d.next_message().unwrap(), Some(Message::Error(_))));

        let mut d = FrameDecoder::new(16);
        assert!(matches!(
            d.push(&17u32.to_be_bytes()),
            Err(EnrollError::FrameTooLarge { len: 17, max: 16 })
        ));
    }

    /// A hub of this release and a target, in process (no sockets): the hub, a fresh token's
    /// target session and its Hello.
    /// A forward-mode target's `ssh_user` reaches the inventory, is covered by the proof (a
    /// changed name is refused), and must be an account name.
    #[test]
    fn the_forward_mode_login_is_recorded_and_covered_by_the_proof() {
        let (_dir, hub, _session, _hello) = exchange();
        let now = crate::unix_now();
        let hello_as = |name: &str, user: &str| {
            let req = crate::InviteRequest {
                name: name.into(),
                tags: BTreeMap::new(),
                groups: vec![],
                ttl_secs: crate::DEFAULT_TTL_SECS,
            };
            let (token, _) = hub.invite(&req, now).unwrap();
            let keys = TargetKeys {
                wg_public: [name.len() as u8 + 40; 32],
                ssh_host_key: TARGET_SSH.into(),
                hostname: "fwd.local".into(),
                ssh_user: Some(user.into()),
            };
            let (_s, frame) = TargetSession::start(&token, &keys, now, MAX_FRAME, None).unwrap();
            let Message::Hello(hello) = serde_json::from_slice(&frame[4..]).unwrap() else {
                panic!("not a hello")
            };
            hello
        };
        let hello = hello_as("fwd1", "deploy");
        hub.handle_hello(&hello, None, now).unwrap();
        assert_eq!(
            hub.inventory().get("fwd1").unwrap().ssh_user.as_deref(),
            Some("deploy")
        );
        let mut forged = hello_as("fwd22", "deploy");
        forged.ssh_user = Some("root".into());
        assert!(hub.handle_hello(&forged, None, now).is_err());
        assert!(hub.inventory().get("fwd22").is_none());
        let bad = hello_as("fwd333", "a b");
        let e = hub.handle_hello(&bad, None, now).unwrap_err();
        assert!(e.to_string().contains("ssh_user"), "{e}");
    }

    fn exchange() -> (tempfile::TempDir, crate::Hub, TargetSession, Hello) {
        let dir = tempfile::tempdir().unwrap();
        let identity = crate::HubIdentity {
            enroll_endpoint: "127.0.0.1:1".into(),
            wg_public: [7u8; 32],
            wg_endpoint: "127.0.0.1:51820".into(),
            ssh_client_public: HUB_SSH.into(),
            relays: Vec::new(),
        };
        let key = tether_vault::SecretBox::from_slice(&[9u8; 32]).unwrap();
        let hub =
            crate::Hub::open(dir.path(), identity, key, crate::OverlayNet::default()).unwrap();
        let req = crate::InviteRequest {
            name: "old1".into(),
            tags: BTreeMap::new(),
            groups: vec![],
            ttl_secs: crate::DEFAULT_TTL_SECS,
        };
        let now = crate::unix_now();
        let (token, _) = hub.invite(&req, now).unwrap();
        let keys = TargetKeys {
            wg_public: [3u8; 32],
            ssh_host_key: TARGET_SSH.into(),
            hostname: "old.local".into(),
            ssh_user: None,
        };
        let (session, frame) = TargetSession::start(&token, &keys, now, MAX_FRAME, None).unwrap();
        let Message::Hello(hello) = serde_json::from_slice(&frame[4..]).unwrap() else {
            panic!("not a hello")
        };
        (dir, hub, session, hello)
    }

    const HUB_SSH: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHSiLAhIitvRcOWt6XdNo4ie+uPb05kkFXj8cXyl7xQr hub";
    const TARGET_SSH: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINXREtEmFoLqswjEYtVLvVkJE5oD6KZMNLVQeaadzZGH a";

    #[test]
    fn a_first_release_target_without_a_version_enrolls_against_this_hub() {
        let (_dir, hub, mut session, mut hello) = exchange();
        assert_eq!(hello.version, Some(PROTOCOL_VERSION));
        // What the first release sent: no version, its proof over the v1 transcript.
        hello.version = None;
        hello.proof = URL_SAFE_NO_PAD.encode(hello_proof(&session.k, &hello));
        session.hello = hello.clone();
        let wire = serde_json::to_string(&Message::Hello(hello.clone())).unwrap();
        assert!(!wire.contains("version"), "{wire}");
        let v1 = first_release::decode(wire.as_bytes());
        assert!(matches!(v1, Ok(V1Message::Hello(_))), "{v1:?}");

        let welcome = hub.handle_hello(&hello, None, crate::unix_now()).unwrap();
        assert_eq!(welcome.version, None, "a v1 target gets a v1 Welcome");
        // The old target's strict parser takes the Welcome, and its proof checks out.
        let frame = encode_frame(&Message::Welcome(welcome.clone())).unwrap();
        let v1 = first_release::decode(&frame[4..]);
        assert!(matches!(v1, Ok(V1Message::Welcome(_))), "{v1:?}");
        assert_eq!(session.receive(&frame).unwrap().unwrap().name, "old1");
        assert_eq!(hub.inventory().get("old1").unwrap().name, "old1");
    }

    struct Wg(tether_tunnel::SecretKey);
    impl WgKeyAgreement for Wg {
        fn agree(&self, p: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
            Some(Zeroizing::new(self.0.diffie_hellman(p)))
        }
    }

    /// A hub that holds its WireGuard key requires every versioned target to prove it holds
    /// the private key of the WireGuard key it enrolls with; first-release targets (no
    /// version) still enroll without.
    #[test]
    fn the_target_proves_it_holds_its_wireguard_key() {
        let hub_key = tether_tunnel::SecretKey::generate().unwrap();
        let mine = tether_tunnel::SecretKey::generate().unwrap();
        let victim = tether_tunnel::SecretKey::generate().unwrap();
        let setup = |name: &str| {
            let dir = tempfile::tempdir().unwrap();
            let identity = crate::HubIdentity {
                enroll_endpoint: "127.0.0.1:1".into(),
                wg_public: hub_key.public_key().0,
                wg_endpoint: "127.0.0.1:51820".into(),
                ssh_client_public: HUB_SSH.into(),
                relays: Vec::new(),
            };
            let key = tether_vault::SecretBox::from_slice(&[9u8; 32]).unwrap();
            let hub = crate::Hub::open(dir.path(), identity, key, crate::OverlayNet::default())
                .unwrap()
                .with_wg_key(std::sync::Arc::new(Wg(hub_key.clone())));
            let req = crate::InviteRequest {
                name: name.into(),
                tags: BTreeMap::new(),
                groups: vec![],
                ttl_secs: crate::DEFAULT_TTL_SECS,
            };
            let (token, _) = hub.invite(&req, crate::unix_now()).unwrap();
            (dir, hub, token)
        };
        let start = |token: &Token, public: [u8; 32], prover: Option<&dyn WgKeyAgreement>| {
            let keys = TargetKeys {
                wg_public: public,
                ssh_host_key: TARGET_SSH.into(),
                hostname: "t.local".into(),
                ssh_user: None,
            };
            let (s, frame) = TargetSession::start_proving(
                token,
                &keys,
                prover,
                crate::unix_now(),
                MAX_FRAME,
                None,
            )
            .unwrap();
            let Message::Hello(h) = serde_json::from_slice(&frame[4..]).unwrap() else {
                panic!("not a hello")
            };
            (s, h)
        };
        let now = crate::unix_now;
        // no proof from a versioned target
        let (_d, hub, token) = setup("p1");
        let (_s, hello) = start(&token, mine.public_key().0, None);
        let e = hub.handle_hello(&hello, None, now()).unwrap_err();
        assert!(e.to_string().contains("did not prove"), "{e}");
        // someone else's public key, proven with my private key
        let (_s, hello) = start(&token, victim.public_key().0, Some(&Wg(mine.clone())));
        let e = hub.handle_hello(&hello, None, now()).unwrap_err();
        assert!(e.to_string().contains("did not prove"), "{e}");
        // a proof moved to another Hello (another nonce) does not verify
        let (_s, mut other) = start(&token, mine.public_key().0, None);
        let (_s, proven) = start(&token, mine.public_key().0, Some(&Wg(mine.clone())));
        other.wg_proof = proven.wg_proof.clone();
        assert!(hub.handle_hello(&other, None, now()).is_err());
        assert!(hub.inventory().list().is_empty(), "nothing recorded");
        // the real key: enrolled
        hub.handle_hello(&proven, None, now()).unwrap();
        assert!(hub.inventory().get("p1").is_some());

        // a first-release target (no version) enrolls without a proof
        let (_d2, hub2, token2) = setup("old2");
        let (session, mut hello) = start(&token2, mine.public_key().0, None);
        hello.version = None;
        hello.proof = URL_SAFE_NO_PAD.encode(hello_proof(&session.k, &hello));
        hub2.handle_hello(&hello, None, now()).unwrap();
    }

    #[test]
    fn a_current_target_gets_the_highest_common_version_and_downgrades_are_caught() {
        let (_dir, hub, mut session, hello) = exchange();
        // Stripping the version on the path breaks the proof.
        let mut stripped = hello.clone();
        stripped.version = None;
        let e = hub
            .handle_hello(&stripped, None, crate::unix_now())
            .unwrap_err();
        assert!(matches!(e, EnrollError::Tampered), "{e}");

        let welcome = hub.handle_hello(&hello, None, crate::unix_now()).unwrap();
        assert_eq!(welcome.version, Some(PROTOCOL_VERSION));
        let frame = encode_frame(&Message::Welcome(welcome)).unwrap();
        assert!(session.receive(&frame).unwrap().is_some());
    }

    #[test]
    fn versions_outside_the_range_fail_naming_both() {
        let (_dir, _hub, _session, mut hello) = exchange();
        hello.version = Some(0);
        let e = negotiate(&hello).unwrap_err();
        assert!(
            matches!(
                e,
                EnrollError::UnsupportedVersion {
                    ours_min: 1,
                    ours_max: PROTOCOL_VERSION,
                    theirs: 0
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("v1 to v2"), "{e}");
        // A newer target gets this hub's newest version.
        hello.version = Some(PROTOCOL_VERSION + 1);
        assert_eq!(negotiate(&hello).unwrap(), Some(PROTOCOL_VERSION));
        assert_eq!(e.code(), "unsupported_version");
    }
    #[test]
    fn a_current_target_falls_back_to_v1_once_against_a_first_release_hub() {
        let (_dir, hub, mut session, hello) = exchange();
        let now = crate::unix_now();
        let sent = hello.clone();
        let frame = encode_frame(&Message::Hello(hello)).unwrap();
        let answer = first_release::answer(&hub, &frame[4..], None);
        let Ok(V1Message::Error(refusal)) = first_release::decode(&answer[4..]) else {
            panic!("the first release refuses a versioned Hello")
        };
        assert!(is_first_release_refusal(&refusal), "{refusal:?}");
        let e = session.receive(&answer).unwrap_err();
        assert!(
            matches!(&e, EnrollError::Remote { code, .. } if code == "protocol"),
            "{e}"
        );
        // The refusal came before the hub core: the invite is still pending, nothing recorded.
        assert_eq!(hub.pending_invites(now).len(), 1);
        assert!(hub.inventory().get("old1").is_none());

        let v1 = session.fallback_to_v1().unwrap().expect("a v1 retry");
        assert!(session.fallback_to_v1().unwrap().is_none(), "only once");
        let Message::Hello(retry) = serde_json::from_slice(&v1[4..]).unwrap() else {
            panic!("not a hello")
        };
        // The same Hello but for the version (and the proof over the v1 transcript).
        assert_eq!(
            Hello {
                version: None,
                proof: retry.proof.clone(),
                ..sent
            },
            retry
        );
        let answer = first_release::answer(&hub, &v1[4..], None);
        let w = session.receive(&answer).unwrap().expect("welcome");
        assert_eq!((w.name.as_str(), w.version), ("old1", None));
        assert!(hub.pending_invites(now).is_empty());
        assert_eq!(hub.inventory().get("old1").unwrap().name, "old1");
    }

    #[test]
    fn only_the_first_release_refusal_of_the_version_counts() {
        let (_dir, hub, session, hello) = exchange();
        let frame = encode_frame(&Message::Hello(hello.clone())).unwrap();
        let Ok(V1Message::Error(real)) =
            first_release::decode(&first_release::answer(&hub, &frame[4..], None)[4..])
        else {
            panic!("not an error")
        };
        let near_misses = [
            ErrorFrame {
                code: "remote".into(),
                ..real.clone()
            },
            ErrorFrame {
                message: real.message.replace("`version`", "`versions`"),
                ..real.clone()
            },
            ErrorFrame {
                message: real.message.replace("`proof`", "`proof`, `version`"),
                ..real.clone()
            },
            ErrorFrame {
                message: real
                    .message
                    .replace("; check", " at line 1 column 9; check"),
                ..real.clone()
            },
            ErrorFrame {
                message: format!("{}!", real.message),
                ..real.clone()
            },
            ErrorFrame {
                code: "protocol".into(),
                message: EnrollError::Tampered.wire_message(),
                retry_after_ms: None,
            },
        ];
        for frame in &near_misses {
            assert!(!is_first_release_refusal(frame), "{frame:?}");
        }
        // Any other answer leaves no retry behind.
        for frame in near_misses {
            let (_dir, _hub, mut s, _) = exchange();
            assert!(
                s.receive(&encode_frame(&Message::Error(frame)).unwrap())
                    .is_err()
            );
            assert!(s.fallback_to_v1().unwrap().is_none());
        }
        // A v1 Hello is never retried, whatever the answer.
        let (_dir, _hub, mut s, _) = exchange();
        s.hello.version = None;
        assert!(
            s.receive(&encode_frame(&Message::Error(real)).unwrap())
                .is_err()
        );
        assert!(s.fallback_to_v1().unwrap().is_none());
        // And the real refusal does leave one (to a versioned Hello).
        let mut session = session;
        let refusal = first_release::answer(&hub, &frame[4..], None);
        assert!(session.receive(&refusal).is_err());
        assert!(session.fallback_to_v1().unwrap().is_some());
    }
}
