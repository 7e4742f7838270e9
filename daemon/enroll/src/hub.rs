//! The hub's enrollment core (no IO besides its two state files): issue and revoke invites,
//! answer a Hello, record the host.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use tether_vault::SecretBox;

use crate::error::{EnrollError, Result};
use crate::inventory::{HostRecord, HostState, Inventory, OverlayNet};
use crate::invite_keys::{InviteKeyRing, RotatedInviteKey};
use crate::proto::{self, Hello, Welcome};
use crate::store::{FileInviteStore, InviteStore};
use crate::token::{self, HubId, HubIdentity, InvitePayload, InviteRecord, InviteSpec, Token};
use crate::util::{hmac, validate_group, validate_host_name, validate_tag};

/// Default invite lifetime: 24 hours.
pub const DEFAULT_TTL_SECS: u64 = 24 * 3600;

/// What an enrollment hook sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollRequest {
    /// Host name from the invite.
    pub name: String,
    /// Overlay address from the invite.
    pub overlay_ip: Ipv4Addr,
    /// Tags from the invite.
    pub tags: BTreeMap<String, String>,
    /// Groups from the invite.
    pub groups: Vec<String>,
    /// Hostname the machine reports.
    pub hostname: String,
    /// Its WireGuard public key (standard base64).
    pub wg_public_key: String,
    /// Its SSH host key (OpenSSH).
    pub ssh_host_key: String,
    /// Where the connection came from, when known.
    pub peer: Option<IpAddr>,
}

/// A hook's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookDecision {
    /// Enroll, adding these tags (they override invite tags of the same key).
    Approve {
        /// Extra tags.
        extra_tags: BTreeMap<String, String>,
    },
    /// Refuse; the reason is shown to the target (keep secrets out of it). The invite stays
    /// pending (until it expires or is revoked).
    Deny {
        /// Why.
        reason: String,
    },
}

/// Reviews enrollments before they are recorded (WASM enrollment hooks plug in here).
pub trait EnrollHook: Send + Sync {
    /// Approve (with extra tags) or deny. Called after the token was authenticated, before the
    /// invite is consumed (several racing attempts with one token may all be reviewed).
    fn review(&self, request: &EnrollRequest) -> HookDecision;

    /// The enrollment is final: the invite's nonce was consumed (durably) and only this attempt
    /// got it. Called under the invite lock before the host is recorded and its peer added; an
    /// error refuses the enrollment (the invite stays consumed). Write `enroll.accepted` here.
    fn accepted(
        &self,
        _host: &HostRecord,
        _peer: Option<IpAddr>,
    ) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// Told about enrollments (to add the tunnel peer, audit, alert).
pub trait EnrollObserver: Send + Sync {
    /// A host was enrolled and recorded in the inventory.
    fn enrolled(&self, host: &HostRecord, peer: Option<IpAddr>);
    /// An enrollment attempt failed (already counted in metrics).
    fn rejected(&self, _peer: Option<IpAddr>, _error: &EnrollError) {}
}

/// An event for [`EnrollObserver`] implemented by a tokio channel.
#[derive(Debug, Clone)]
pub enum EnrollEvent {
    /// A host enrolled.
    Enrolled {
        /// Its record.
        host: HostRecord,
        /// Where it connected from.
        peer: Option<IpAddr>,
    },
    /// An attempt failed.
    Rejected {
        /// Where it connected from.
        peer: Option<IpAddr>,
        /// [`EnrollError::code`].
        code: &'static str,
        /// A short escaped excerpt of the error message ([`crate::rejections::excerpt`]).
        message: String,
    },
}

impl EnrollObserver for tokio::sync::mpsc::UnboundedSender<EnrollEvent> {
    fn enrolled(&self, host: &HostRecord, peer: Option<IpAddr>) {
        let _ = self.send(EnrollEvent::Enrolled {
            host: host.clone(),
            peer,
        });
    }
    fn rejected(&self, peer: Option<IpAddr>, error: &EnrollError) {
        // Unauthenticated input: a short escaped excerpt, never the whole text (the daemon
        // aggregates per source with `crate::rejections::Rejections` instead of this channel).
        let _ = self.send(EnrollEvent::Rejected {
            peer,
            code: error.code(),
            message: crate::rejections::excerpt(&error.to_string()),
        });
    }
}

/// What [`Hub::revoke_host`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeOutcome {
    /// The host, now revoked (None if only invites existed for the name).
    pub host: Option<HostRecord>,
    /// How many pending invites were revoked.
    pub invites_revoked: usize,
}

/// An admin's invite request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteRequest {
    /// Host name (lowercase DNS label).
    pub name: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Lifetime in seconds ([`DEFAULT_TTL_SECS`] is the CLI default).
    pub ttl_secs: u64,
}

/// The hub's enrollment state: identity, invite key, invite store, inventory, hook, observer.
pub struct Hub {
    identity: HubIdentity,
    hub_id: HubId,
    invite_keys: std::sync::RwLock<InviteKeyRing>,
    invites: Mutex<Box<dyn InviteStore>>,
    inventory: Arc<Inventory>,
    hook: Option<Arc<dyn EnrollHook>>,
    observer: Option<Arc<dyn EnrollObserver>>,
    wg_key: Option<Arc<dyn proto::WgKeyAgreement>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("hub_id", &self.hub_id)
            .field("endpoint", &self.identity.enroll_endpoint)
            .field("invite_keys", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// Opens the hub's state in `state_dir` (`invites.json`, `hosts.json`). The invite keys
    /// come from the vault ([`InviteKeyRing::load`]); a single [`SecretBox`] is epoch 0.
    pub fn open(
        state_dir: &Path,
        identity: HubIdentity,
        invite_keys: impl Into<InviteKeyRing>,
        net: OverlayNet,
    ) -> Result<Hub> {
        crate::sshkey::SshPublicKey::parse(&identity.ssh_client_public)?;
        let invite_keys = invite_keys.into();
        if invite_keys.key(0)?.len() < crate::invite_keys::MIN_INVITE_KEY_LEN {
            return Err(EnrollError::Internal {
                what: "the invite key is shorter than 16 bytes".into(),
            });
        }
        let inventory = Arc::new(Inventory::open_with(state_dir, net)?);
        let invites = FileInviteStore::open(state_dir)?;
        Ok(Self::with_stores(
            identity,
            invite_keys,
            Box::new(invites),
            inventory,
        ))
    }

    /// A hub whose invites and inventory live in the given stores (see [`InviteStore`] and
    /// [`crate::inventory::InventoryStore`]; [`Hub::open`] uses the file backends). The invite
    /// keys must be the ones every hub sharing the stores holds.
    pub fn with_stores(
        identity: HubIdentity,
        invite_keys: impl Into<InviteKeyRing>,
        invites: Box<dyn InviteStore>,
        inventory: Arc<Inventory>,
    ) -> Hub {
        Hub {
            hub_id: identity.hub_id(),
            identity,
            invite_keys: std::sync::RwLock::new(invite_keys.into()),
            invites: Mutex::new(invites),
            inventory,
            hook: None,
            observer: None,
            wg_key: None,
        }
    }

    /// Sets the enrollment hook.
    pub fn with_hook(mut self, hook: Arc<dyn EnrollHook>) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Gives the hub its WireGuard private key (through the vault) to check the targets'
    /// proof of possession: then every target that names a protocol version must prove it
    /// holds the private key of the WireGuard key it enrolls with (first-release targets, which
    /// name none, still enroll without).
    pub fn with_wg_key(mut self, key: Arc<dyn proto::WgKeyAgreement>) -> Self {
        self.wg_key = Some(key);
        self
    }

    /// Sets the observer told about enrollments.
    pub fn with_observer(mut self, observer: Arc<dyn EnrollObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    fn keys(&self) -> std::sync::RwLockReadGuard<'_, InviteKeyRing> {
        self.invite_keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The epoch of the invite key new invites are MACed with, and the epochs held.
    pub fn invite_key_epochs(&self) -> (u32, Vec<u32>) {
        let keys = self.keys();
        (keys.current().0, keys.epochs())
    }

    /// Starts MACing new invites with `key`, the key of a new `epoch` (the caller stored it in
    /// the vault first, as [`crate::invite_keys::epoch_name`]). Older keys stay: invites they
    /// signed keep working until they expire. Refuses an epoch that is not newer than the
    /// current one.
    pub fn add_invite_key(&self, epoch: u32, key: SecretBox) -> Result<RotatedInviteKey> {
        let mut keys = self
            .invite_keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous_epoch = keys.current().0;
        if epoch <= previous_epoch {
            return Err(EnrollError::Internal {
                what: format!(
                    "invite key epoch {epoch} is not newer than the current epoch {previous_epoch}"
                ),
            });
        }
        let key_id = crate::invite_keys::key_id(&key);
        keys.insert(epoch, key)?;
        Ok(RotatedInviteKey {
            epoch,
            key_id,
            previous_epoch,
        })
    }

    /// Verifies a whole token with the key of the epoch it names (see
    /// [`ParsedToken::verify_with`]).
    pub fn verify_token(&self, token: &token::ParsedToken, now: u64) -> Result<()> {
        token.verify_with(&self.keys(), &self.hub_id, now)
    }

    /// This hub's id.
    pub fn hub_id(&self) -> &HubId {
        &self.hub_id
    }

    /// This hub's public identity.
    pub fn identity(&self) -> &HubIdentity {
        &self.identity
    }

    /// The inventory (shared with the control API: `hosts list|show|rm`, selectors).
    pub fn inventory(&self) -> &Arc<Inventory> {
        &self.inventory
    }

    fn invites(&self) -> MutexGuard<'_, Box<dyn InviteStore>> {
        self.invites.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pending invites at `now` (for `vpn status` / listing; no secrets in them).
    pub fn pending_invites(&self, now: u64) -> Vec<InviteRecord> {
        self.invites().pending(now)
    }

    /// Issues an invite: checks the name is free (no active host, no pending invite), allocates
    /// an overlay address, stores SHA-256(nonce). The token is shown once; audit the record.
    pub fn invite(&self, req: &InviteRequest, now: u64) -> Result<(Token, InviteRecord)> {
        let mut store = self.invites();
        validate_host_name(&req.name)?;
        if self.inventory.get(&req.name).is_some_and(|h| h.is_active()) {
            return Err(EnrollError::NameTaken {
                name: req.name.clone(),
                by: "an enrolled host",
            });
        }
        self.issue_locked(&mut store, req, None, now)
    }

    /// Issues a fresh invite for an existing host name (a lost or rebuilt machine): revokes the
    /// host (if active) and its pending invites, then issues a new invite with the same overlay
    /// address. The old machine is out as soon as the caller removes its tunnel peer.
    pub fn reinvite(&self, req: &InviteRequest, now: u64) -> Result<(Token, InviteRecord)> {
        let mut store = self.invites();
        validate_host_name(&req.name)?;
        let existing = self.inventory.get(&req.name);
        let keep_ip = match &existing {
            Some(h) => {
                if h.is_active() {
                    self.inventory.mark_revoked(&req.name, now)?;
                }
                Some(h.overlay_ip)
            }
            None => None,
        };
        store.revoke_name(&req.name, now)?;
        self.issue_locked(&mut store, req, keep_ip, now)
    }

    fn issue_locked(
        &self,
        store: &mut Box<dyn InviteStore>,
        req: &InviteRequest,
        ip: Option<Ipv4Addr>,
        now: u64,
    ) -> Result<(Token, InviteRecord)> {
        if store.has_pending_name(&req.name, now) {
            return Err(EnrollError::NameTaken {
                name: req.name.clone(),
                by: "a pending invite (revoke it with `tether vpn revoke NAME` or reinvite)",
            });
        }
        for (k, v) in &req.tags {
            validate_tag(k, v)?;
        }
        for g in &req.groups {
            validate_group(g)?;
        }
        let ip = match ip {
            Some(ip) => ip,
            None => {
                let reserved: HashSet<Ipv4Addr> = store.pending_ips(now).into_iter().collect();
                self.inventory.allocate_ip(&reserved)?
            }
        };
        let spec = InviteSpec {
            name: req.name.clone(),
            overlay_ip: ip,
            tags: req.tags.clone(),
            groups: req.groups.clone(),
            ttl_secs: req.ttl_secs,
        };
        let (token, record) = {
            let keys = self.keys();
            let (epoch, key) = keys.current();
            token::issue_with_epoch(key, epoch, &self.identity, &spec, now)?
        };
        store.add(record.clone(), now)?;
        Ok((token, record))
    }

    /// Revokes pending invites for `name`; returns how many.
    pub fn revoke_invites(&self, name: &str, now: u64) -> Result<usize> {
        self.invites().revoke_name(name, now)
    }

    /// `tether vpn revoke NAME`: revokes the host's pending invites and marks it revoked in the
    /// inventory. The caller then removes its tunnel peer and closes its sessions. Fails with
    /// [`EnrollError::NoSuchHost`] when there is neither a host nor a pending invite of that name.
    pub fn revoke_host(&self, name: &str, now: u64) -> Result<RevokeOutcome> {
        let invites_revoked = self.revoke_invites(name, now)?;
        match self.inventory.mark_revoked(name, now) {
            Ok(h) => Ok(RevokeOutcome {
                host: Some(h),
                invites_revoked,
            }),
            Err(EnrollError::NoSuchHost { .. }) if invites_revoked > 0 => Ok(RevokeOutcome {
                host: None,
                invites_revoked,
            }),
            Err(e) => Err(e),
        }
    }

    /// `tether vpn revoke --all`: revokes every active host and pending invite; returns the
    /// hosts that were active.
    pub fn revoke_all(&self, now: u64) -> Result<Vec<HostRecord>> {
        let names: Vec<String> = {
            let store = self.invites();
            store.pending(now).into_iter().map(|r| r.name).collect()
        };
        for n in names {
            self.revoke_invites(&n, now)?;
        }
        let mut out = Vec::new();
        for h in self.inventory.list() {
            if h.is_active() {
                out.push(self.inventory.mark_revoked(&h.name, now)?);
            }
        }
        Ok(out)
    }

    /// `tether hosts rm NAME`: revokes pending invites and removes the host from the inventory.
    pub fn remove_host(&self, name: &str, now: u64) -> Result<HostRecord> {
        self.revoke_invites(name, now)?;
        self.inventory.remove(name)
    }

    /// The hub's side of the exchange: authenticate the Hello, consume the invite, record the
    /// host, and build the Welcome. Every failure is an [`EnrollError`] to send back with
    /// [`proto::error_frame`]. Blocking (fsyncs state files): call from a blocking context.
    pub fn handle_hello(&self, hello: &Hello, peer: Option<IpAddr>, now: u64) -> Result<Welcome> {
        let result = self.handle_hello_inner(hello, peer, now);
        if let Some(obs) = &self.observer {
            match &result {
                Ok((_, host)) => obs.enrolled(host, peer),
                Err(e) => obs.rejected(peer, e),
            }
        }
        result.map(|(w, _)| w)
    }

    /// Tells the observer about an attempt that failed before a Hello could be handled (bad
    /// frame, timeout).
    pub fn notify_rejected(&self, peer: Option<IpAddr>, error: &EnrollError) {
        if let Some(obs) = &self.observer {
            obs.rejected(peer, error);
        }
    }

    /// The target's proof that it holds the private key of the WireGuard key it sent.
    fn check_wg_possession(&self, k: &[u8; 32], hello: &Hello) -> Result<()> {
        let Some(agreement) = &self.wg_key else {
            return Ok(());
        };
        if hello.version.is_none() && hello.wg_proof.is_none() {
            return Ok(()); // a first-release target: it cannot prove it
        }
        let not_proven = || EnrollError::Protocol {
            what: "the target did not prove it holds the private key of the WireGuard key it \
                   sent (use a tetherd of this release, and let it generate its own key)"
                .into(),
        };
        let wg = proto::check_hello_fields(hello)?;
        let shared = agreement.agree(&wg).ok_or_else(|| EnrollError::Internal {
            what: "the hub's WireGuard key is unavailable".into(),
        })?;
        let expected = proto::wg_possession_proof(k, &shared, hello).ok_or_else(not_proven)?;
        match &hello.wg_proof {
            Some(p) if proto::proof_matches(&expected, p) => Ok(()),
            _ => Err(not_proven()),
        }
    }

    /// Whether `hello` was made by a holder of a token this hub signed: the payload decodes,
    /// names this hub, and the Hello's proof checks out under the token's MAC. Two HMACs and a
    /// small JSON decode, no state read or written: the enrollment listener calls it before
    /// any expensive or durable work, to charge the attempt to the budget of token holders
    /// instead of the one for unauthenticated traffic. Says nothing about expiry or use.
    pub fn authenticates(&self, hello: &Hello) -> bool {
        self.authenticate(hello).is_ok()
    }

    /// The payload and session key of an authenticated Hello (see [`Hub::authenticates`]).
    fn authenticate(
        &self,
        hello: &Hello,
    ) -> Result<(token::CheckedPayload, zeroize::Zeroizing<[u8; 32]>)> {
        let json = URL_SAFE_NO_PAD
            .decode(&hello.payload)
            .map_err(|_| EnrollError::Malformed {
                what: "payload is not base64url".into(),
            })?;
        let checked = token::decode_payload(&json)?;
        let p: &InvitePayload = &checked.payload;
        if p.hub_id != self.hub_id {
            return Err(EnrollError::ForeignHub {
                token_hub: p.hub_id.to_string(),
                presented_to: format!("this hub ({})", self.hub_id),
            });
        }
        // Recompute the token's MAC (with the key of the epoch it names; a retired key still
        // answers, and expiry is checked next by the caller) and the session key; the proof
        // shows the target holds the whole token (and that the payload is the one this hub
        // signed).
        let token_mac = {
            let keys = self.keys();
            let key = keys.key(p.key_epoch)?;
            zeroize::Zeroizing::new(key.expose(|k| hmac(k, &[&json])))
        };
        let k = proto::session_key(&token_mac, &checked.nonce);
        if !proto::proof_matches(&proto::hello_proof(&k, hello), &hello.proof) {
            return Err(EnrollError::Tampered);
        }
        Ok((checked, k))
    }

    fn handle_hello_inner(
        &self,
        hello: &Hello,
        peer: Option<IpAddr>,
        now: u64,
    ) -> Result<(Welcome, HostRecord)> {
        let (checked, k) = self.authenticate(hello)?;
        let p: &InvitePayload = &checked.payload;
        let version = proto::negotiate(hello)?;
        checked.check_expiry(now)?;
        self.check_wg_possession(&k, hello)?;
        let nonce_hash = checked.nonce_hash();
        self.invites().check_pending(&nonce_hash)?;
        proto::check_hello_fields(hello)?;

        let mut tags = p.tags.clone();
        if let Some(hook) = &self.hook {
            let req = EnrollRequest {
                name: p.name.clone(),
                overlay_ip: p.overlay_ip,
                tags: p.tags.clone(),
                groups: p.groups.clone(),
                hostname: hello.hostname.clone(),
                wg_public_key: hello.wg_public_key.clone(),
                ssh_host_key: hello.ssh_host_key.clone(),
                peer,
            };
            match hook.review(&req) {
                HookDecision::Approve { extra_tags } => {
                    for (k, v) in extra_tags {
                        validate_tag(&k, &v)?;
                        tags.insert(k, v);
                    }
                }
                HookDecision::Deny { reason } => return Err(EnrollError::Denied { reason }),
            }
        }

        let host = HostRecord {
            name: p.name.clone(),
            overlay_ip: p.overlay_ip,
            wg_public_key: STANDARD.encode(proto::check_hello_fields(hello)?),
            ssh_host_key: crate::sshkey::SshPublicKey::parse(&hello.ssh_host_key)?.canonical(),
            hostname: hello.hostname.clone(),
            tags: tags.clone(),
            groups: p.groups.clone(),
            enrolled_at: now,
            last_seen: Some(now),
            state: HostState::Active,
            revoked_at: None,
            ssh_user: hello.ssh_user.clone(),
        };
        {
            // Check + consume + record under the store lock: of two racing enrollments with one
            // token exactly one gets past `consume`. The nonce is consumed (durably) before the
            // host is recorded, so a crash in between never allows a second enrollment.
            let mut store = self.invites();
            store.check_pending(&nonce_hash)?;
            self.inventory.check_insertable(&host)?;
            store.consume(&nonce_hash, now)?;
            if let Some(hook) = &self.hook {
                hook.accepted(&host, peer)
                    .map_err(|reason| EnrollError::Internal {
                        what: format!("the accepted enrollment could not be recorded: {reason}"),
                    })?;
            }
            self.inventory.insert(host.clone()).map_err(|e| {
                tracing::error!(error = %e, host = %host.name, "invite consumed but the host could not be recorded");
                e
            })?;
        }

        let mut welcome = Welcome {
            name: p.name.clone(),
            overlay_ip: p.overlay_ip,
            hub_wg_public_key: STANDARD.encode(self.identity.wg_public),
            hub_wg_endpoint: self.identity.wg_endpoint.clone(),
            hub_ssh_client_key: self.identity.ssh_client_public.clone(),
            tags,
            groups: p.groups.clone(),
            proof: String::new(),
            version,
        };
        welcome.proof = URL_SAFE_NO_PAD.encode(proto::welcome_proof(&k, hello, &welcome));
        Ok((welcome, host))
    }
}
