//! The host inventory: the hub's list of hosts, kept in memory and made durable through an
//! [`InventoryStore`] before any change is visible.
//!
//! The embedded default is [`FileInventoryStore`]: a snapshot `STATE_DIR/hosts.json` plus an
//! append-only journal `STATE_DIR/hosts.journal`, one fsynced self-checking line per change,
//! compacted into a new snapshot (tmp + fsync + rename + dir fsync) when it outgrows the
//! snapshot. It survives `kill -9` and power loss holding every acknowledged change. A shared store for several hubs (PostgreSQL,
//! see `docs/scale.md`) is another implementation of the same trait: it gets each change as
//! well as the whole list, and applies the change in one transaction.
//!
//! One process owns a state directory; within it, [`Inventory`] is shared (`&self` methods, an
//! internal mutex).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tether_model::selector::{HostFacts, Selector};

use crate::error::{EnrollError, Result};
use crate::journaled::{self, Journaled, Snapshot};
use crate::util::validate_host_name;

/// File name of the inventory snapshot inside the state directory.
pub const HOSTS_FILE: &str = "hosts.json";

/// File name of the inventory journal (changes since the snapshot) inside the state directory.
pub const HOSTS_JOURNAL: &str = "hosts.journal";

/// `touch` persists `last_seen` only when it moved by at least this many seconds (so frequent
/// handshakes do not fsync the file each time).
pub const TOUCH_PERSIST_SECS: u64 = 60;

/// Whether a host may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Enrolled and allowed.
    Active,
    /// Thrown out by an admin; kept for the record until `hosts rm`.
    Revoked,
}

impl HostState {
    /// The wire name (`active`, `revoked`).
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Active => "active",
            HostState::Revoked => "revoked",
        }
    }
}

/// One enrolled host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRecord {
    /// Unique name (a lowercase DNS label).
    pub name: String,
    /// Overlay address.
    pub overlay_ip: Ipv4Addr,
    /// WireGuard public key, standard base64.
    pub wg_public_key: String,
    /// SSH host public key, OpenSSH format (pinned: the hub's SSH client accepts only this key).
    pub ssh_host_key: String,
    /// Hostname the machine reported at enrollment.
    #[serde(default)]
    pub hostname: String,
    /// Tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Enrollment time, unix seconds.
    pub enrolled_at: u64,
    /// Last time the host was seen (handshake, command), unix seconds.
    #[serde(default)]
    pub last_seen: Option<u64>,
    /// Active or revoked.
    pub state: HostState,
    /// When it was revoked, unix seconds.
    #[serde(default)]
    pub revoked_at: Option<u64>,
    /// The account the hub logs in as over SSH (a target in forward mode names its sshd
    /// account at enrollment); `None`: Tether's own SSH server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_user: Option<String>,
}

impl HostRecord {
    /// The facts selectors match against.
    pub fn facts(&self) -> HostFacts {
        HostFacts {
            name: self.name.clone(),
            groups: self.groups.clone(),
            tags: self.tags.clone(),
        }
    }

    /// Whether the host is active.
    pub fn is_active(&self) -> bool {
        self.state == HostState::Active
    }
}

/// An IPv4 overlay subnet, e.g. `10.99.0.0/16`. The hub is `.1` (network + 1); hosts get
/// network + 2 up to broadcast − 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlayNet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Default for OverlayNet {
    fn default() -> Self {
        OverlayNet {
            network: Ipv4Addr::new(10, 99, 0, 0),
            prefix: 16,
        }
    }
}

impl OverlayNet {
    /// A subnet; `prefix` must be 8..=30 and `network` must have no host bits set.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<OverlayNet> {
        let bad = |why: &str| EnrollError::AddressUnavailable {
            ip: network,
            why: why.to_string(),
        };
        if !(8..=30).contains(&prefix) {
            return Err(bad("the subnet prefix must be between /8 and /30"));
        }
        let net = OverlayNet { network, prefix };
        if u32::from(network) & !net.mask() != 0 {
            return Err(bad(
                "the subnet address has host bits set (use e.g. 10.99.0.0/16)",
            ));
        }
        Ok(net)
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    /// The hub's address (network + 1).
    pub fn hub_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Whether `ip` is a usable host address (inside, not network/hub/broadcast).
    pub fn is_host_ip(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(self.network);
        let x = u32::from(ip);
        x & self.mask() == n && x >= n + 2 && x < n | !self.mask()
    }

    /// Usable host addresses, lowest first.
    pub fn host_ips(&self) -> impl Iterator<Item = Ipv4Addr> {
        let n = u32::from(self.network);
        ((n + 2)..(n | !self.mask())).map(Ipv4Addr::from)
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

impl fmt::Display for OverlayNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for OverlayNet {
    type Err = EnrollError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || EnrollError::Malformed {
            what: format!("subnet {s:?} is not like 10.99.0.0/16"),
        };
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let network = a.parse::<Ipv4Addr>().map_err(|_| bad())?;
        let prefix = p.parse::<u8>().map_err(|_| bad())?;
        OverlayNet::new(network, prefix)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// 1: no journal; 2: `last_seq` names the last journal line included.
    version: u32,
    #[serde(default)]
    last_seq: u64,
    hosts: Vec<HostRecord>,
}

impl Snapshot for File {
    fn last_seq(&self) -> u64 {
        self.last_seq
    }
}

/// One journal line of `hosts.journal`.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum LineRef<'a> {
    Put(&'a HostRecord),
    Remove(&'a str),
}

/// [`LineRef`], read back.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Line {
    Put(HostRecord),
    Remove(String),
}

/// The snapshot with the journal's lines applied, sorted by name.
fn replay(
    journal: &Path,
    snap: Option<File>,
    entries: &[tether_durable::journal::Entry],
) -> Result<Vec<HostRecord>> {
    let mut hosts: BTreeMap<String, HostRecord> = snap
        .map(|f| f.hosts)
        .unwrap_or_default()
        .into_iter()
        .map(|h| (h.name.clone(), h))
        .collect();
    for e in entries {
        match journaled::decode::<Line>(journal, e)? {
            Line::Put(h) => {
                hosts.insert(h.name.clone(), h);
            }
            Line::Remove(name) => {
                hosts.remove(&name);
            }
        }
    }
    Ok(hosts.into_values().collect())
}

/// One change to the inventory, as handed to [`InventoryStore::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostChange<'a> {
    /// Insert this record, or replace the record of the same name.
    Put(&'a HostRecord),
    /// Delete the record of this name.
    Remove(&'a str),
}

/// Where the inventory is kept durably. [`Inventory`] holds the records in memory, checks every
/// rule (unique names, addresses and keys) under its lock, and calls [`InventoryStore::commit`]
/// before it makes a change visible: memory never runs ahead of the store.
///
/// Backends: [`FileInventoryStore`] (`hosts.json`, the embedded default); a row store (e.g. a
/// PostgreSQL table `hosts` keyed by name, with unique indexes on overlay address and keys,
/// `docs/scale.md`) applies `changes` in one transaction and may ignore `all`.
pub trait InventoryStore: Send + Sync + fmt::Debug {
    /// Every record, at open.
    fn load(&self) -> Result<Vec<HostRecord>>;
    /// Makes `changes` durable; `all` is the complete list after them (sorted by name). Return
    /// only once the changes survive a crash; on error nothing must have changed.
    fn commit(&self, changes: &[HostChange<'_>], all: &[HostRecord]) -> Result<()>;
}

/// The embedded backend: the snapshot `STATE_DIR/hosts.json` and the journal
/// `STATE_DIR/hosts.journal` (see the module docs). A state directory with only `hosts.json`
/// (from before journals) opens unchanged; the first commit starts the journal.
#[derive(Debug)]
pub struct FileInventoryStore {
    dir: PathBuf,
    path: PathBuf,
    loaded: Mutex<Option<Vec<HostRecord>>>,
    journal: Mutex<Journaled>,
}

impl FileInventoryStore {
    /// Opens (or starts empty) `state_dir/hosts.json` and replays `state_dir/hosts.journal`
    /// over it. A file that does not parse, or a journal line that is corrupt with valid lines
    /// after it, is an error naming the file (and line); a torn last line (a crash in the
    /// middle of an append) is discarded with a warning.
    pub fn open(state_dir: &Path) -> Result<FileInventoryStore> {
        let (journal, snap, entries) =
            Journaled::open::<File>(state_dir, HOSTS_FILE, HOSTS_JOURNAL)?;
        let hosts = replay(journal.journal_path(), snap, &entries)?;
        Ok(FileInventoryStore {
            dir: state_dir.to_path_buf(),
            path: journal.snapshot_path().to_path_buf(),
            loaded: Mutex::new(Some(hosts)),
            journal: Mutex::new(journal),
        })
    }

    /// The snapshot file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn journal(&self) -> MutexGuard<'_, Journaled> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the next compaction where a crash would.
    #[cfg(test)]
    pub(crate) fn crash_at(&self, at: journaled::CrashPoint) {
        self.journal().crash = Some(at);
    }
}

impl InventoryStore for FileInventoryStore {
    fn load(&self) -> Result<Vec<HostRecord>> {
        let cached = self.loaded.lock().unwrap_or_else(|e| e.into_inner()).take();
        match cached {
            Some(hosts) => Ok(hosts),
            None => {
                let (snap, entries) =
                    journaled::read::<File>(&self.dir, HOSTS_FILE, HOSTS_JOURNAL)?;
                replay(&self.dir.join(HOSTS_JOURNAL), snap, &entries)
            }
        }
    }

    fn commit(&self, changes: &[HostChange<'_>], all: &[HostRecord]) -> Result<()> {
        let lines: Vec<LineRef<'_>> = changes
            .iter()
            .map(|c| match *c {
                HostChange::Put(h) => LineRef::Put(h),
                HostChange::Remove(n) => LineRef::Remove(n),
            })
            .collect();
        let mut j = self.journal();
        j.append(&lines)?;
        if j.wants_compaction() {
            // The changes are durable in the journal; a failed compaction only means the
            // journal keeps growing until the next try.
            if let Err(e) = j.compact(|last_seq| {
                serde_json::to_vec_pretty(&File {
                    version: 2,
                    last_seq,
                    hosts: all.to_vec(),
                })
                .map_err(|e| EnrollError::Internal {
                    what: format!("encode inventory: {e}"),
                })
            }) {
                tracing::warn!(error = %e, "could not compact the inventory journal; will retry at the next change");
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Inner {
    hosts: Vec<HostRecord>,
    /// last_seen as persisted, per host, to coalesce `touch` writes.
    persisted_seen: BTreeMap<String, u64>,
    /// SSH host key blob → the host holding it, so that checking a new host's key is a lookup
    /// rather than parsing every host's key (which made each enrollment O(hosts) in key parses,
    /// a quarter of the hub's CPU at 3,000 hosts).
    ssh_index: HashMap<Vec<u8>, String>,
}

/// The blob of an OpenSSH public key line (`None` if it does not parse).
fn ssh_blob(key: &str) -> Option<Vec<u8>> {
    crate::sshkey::SshPublicKey::parse(key).map(|k| k.blob).ok()
}

/// The host inventory. See the module docs.
#[derive(Debug)]
pub struct Inventory {
    store: Box<dyn InventoryStore>,
    net: OverlayNet,
    inner: Mutex<Inner>,
}

impl Inventory {
    /// Opens `state_dir/hosts.json` (empty if missing) with the default subnet 10.99.0.0/16.
    pub fn open(state_dir: &Path) -> Result<Inventory> {
        Self::open_with(state_dir, OverlayNet::default())
    }

    /// Opens with a given overlay subnet.
    pub fn open_with(state_dir: &Path, net: OverlayNet) -> Result<Inventory> {
        Self::with_store(Box::new(FileInventoryStore::open(state_dir)?), net)
    }

    /// An inventory kept in `store` (see [`InventoryStore`]).
    pub fn with_store(store: Box<dyn InventoryStore>, net: OverlayNet) -> Result<Inventory> {
        let mut hosts = store.load()?;
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        let persisted_seen = hosts
            .iter()
            .filter_map(|h| h.last_seen.map(|s| (h.name.clone(), s)))
            .collect();
        let mut ssh_index = HashMap::new();
        for h in &hosts {
            if let Some(blob) = ssh_blob(&h.ssh_host_key) {
                ssh_index.entry(blob).or_insert_with(|| h.name.clone());
            }
        }
        Ok(Inventory {
            store,
            net,
            inner: Mutex::new(Inner {
                hosts,
                persisted_seen,
                ssh_index,
            }),
        })
    }

    /// The overlay subnet.
    pub fn net(&self) -> OverlayNet {
        self.net
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every host (active and revoked), sorted by name.
    pub fn list(&self) -> Vec<HostRecord> {
        self.lock().hosts.clone()
    }

    /// One host by name.
    pub fn get(&self, name: &str) -> Option<HostRecord> {
        let g = self.lock();
        find(&g.hosts, name).ok().map(|i| g.hosts[i].clone())
    }

    /// The active host with this WireGuard public key (standard base64), if any.
    pub fn by_wg_key(&self, wg_public_key: &str) -> Option<HostRecord> {
        self.lock()
            .hosts
            .iter()
            .find(|h| h.is_active() && h.wg_public_key == wg_public_key)
            .cloned()
    }

    /// Active hosts matching `selector` (revoked hosts are never selected), sorted by name.
    pub fn select(&self, selector: &Selector) -> Vec<HostRecord> {
        self.lock()
            .hosts
            .iter()
            .filter(|h| h.is_active() && selector.matches(&h.facts()))
            .cloned()
            .collect()
    }

    /// Checks that `record` could be inserted: valid name, not taken by an active host, address
    /// a host address of the subnet and not used by another host.
    pub fn check_insertable(&self, record: &HostRecord) -> Result<()> {
        check_insertable(&self.lock(), &self.net, record)
    }

    /// Adds a host (replacing a *revoked* host of the same name) and persists.
    pub fn insert(&self, record: HostRecord) -> Result<()> {
        let mut g = self.lock();
        check_insertable(&g, &self.net, &record)?;
        self.commit(&mut g, &[HostChange::Put(&record)])
    }

    /// Removes a host (active or revoked) and persists; returns it.
    pub fn remove(&self, name: &str) -> Result<HostRecord> {
        let mut g = self.lock();
        let old = find(&g.hosts, name)
            .map(|i| g.hosts[i].clone())
            .map_err(|_| EnrollError::NoSuchHost { name: name.into() })?;
        self.commit(&mut g, &[HostChange::Remove(name)])?;
        Ok(old)
    }

    /// Replaces an active host's WireGuard public key (key rotation) and persists; returns the
    /// updated record. Refuses a key that another host already uses.
    pub fn set_wg_key(&self, name: &str, wg_public_key: &str) -> Result<HostRecord> {
        let mut g = self.lock();
        if g.hosts
            .iter()
            .any(|h| h.name != name && h.wg_public_key == wg_public_key)
        {
            return Err(EnrollError::Protocol {
                what: format!("the new WireGuard key of {name} is already used by another host"),
            });
        }
        let mut out = find(&g.hosts, name)
            .ok()
            .map(|i| g.hosts[i].clone())
            .filter(HostRecord::is_active)
            .ok_or_else(|| EnrollError::NoSuchHost { name: name.into() })?;
        out.wg_public_key = wg_public_key.to_owned();
        self.commit(&mut g, &[HostChange::Put(&out)])?;
        Ok(out)
    }

    /// Runs `admit` (e.g. adding the host's tunnel peer) while holding the inventory lock, only
    /// if `name` is an active host whose WireGuard key is `wg_public_key`. Every path that adds
    /// a peer goes through here, and revocation and removal take the same lock, so an in-flight
    /// enrollment or key rotation can never bring back a host revoked meanwhile: either it is
    /// admitted before the revocation (whose peer removal then follows), or it is refused.
    pub fn admit<R>(
        &self,
        name: &str,
        wg_public_key: &str,
        admit: impl FnOnce(&HostRecord) -> R,
    ) -> Result<R> {
        let g = self.lock();
        match find(&g.hosts, name).ok().map(|i| &g.hosts[i]) {
            Some(h) if h.is_active() && h.wg_public_key == wg_public_key => Ok(admit(h)),
            Some(h) if h.is_active() => Err(EnrollError::Protocol {
                what: format!("{name} no longer uses this WireGuard key; not admitted"),
            }),
            Some(_) => Err(EnrollError::Protocol {
                what: format!("host {name} is revoked; not admitted"),
            }),
            None => Err(EnrollError::NoSuchHost { name: name.into() }),
        }
    }

    /// Marks a host revoked (idempotent) and persists; returns the updated record.
    pub fn mark_revoked(&self, name: &str, now: u64) -> Result<HostRecord> {
        let mut g = self.lock();
        let mut out = find(&g.hosts, name)
            .map(|i| g.hosts[i].clone())
            .map_err(|_| EnrollError::NoSuchHost { name: name.into() })?;
        if out.state != HostState::Revoked {
            out.state = HostState::Revoked;
            out.revoked_at = Some(now);
        }
        self.commit(&mut g, &[HostChange::Put(&out)])?;
        Ok(out)
    }

    /// Records that the host was seen at `when` (unix seconds). Persists only when `last_seen`
    /// moved by [`TOUCH_PERSIST_SECS`] or more since the last persisted value.
    pub fn touch(&self, name: &str, when: u64) -> Result<()> {
        let mut g = self.lock();
        let i = find(&g.hosts, name).map_err(|_| EnrollError::NoSuchHost { name: name.into() })?;
        let h = &mut g.hosts[i];
        if h.last_seen.is_some_and(|s| s >= when) {
            return Ok(());
        }
        h.last_seen = Some(when);
        let touched = h.clone();
        let persisted = g.persisted_seen.get(name).copied().unwrap_or(0);
        if when.saturating_sub(persisted) >= TOUCH_PERSIST_SECS {
            self.commit(&mut g, &[HostChange::Put(&touched)])?;
        }
        Ok(())
    }

    /// The lowest host address of the subnet used by no host (active or revoked) and not in
    /// `reserved` (e.g. addresses of pending invites).
    pub fn allocate_ip(&self, reserved: &HashSet<Ipv4Addr>) -> Result<Ipv4Addr> {
        let g = self.lock();
        let used: HashSet<Ipv4Addr> = g.hosts.iter().map(|h| h.overlay_ip).collect();
        self.net
            .host_ips()
            .find(|ip| !used.contains(ip) && !reserved.contains(ip))
            .ok_or_else(|| EnrollError::AddressPoolExhausted {
                subnet: self.net.to_string(),
            })
    }

    /// Applies `changes` to the in-memory list (kept sorted by name, changed in place rather
    /// than copied: a copy per change made enrolling a fleet O(N²) in memory traffic), makes
    /// them durable through the store with the whole list after them, and undoes them if the
    /// store fails. The lock is held throughout, so nobody sees a change the store refused:
    /// memory never runs ahead of the store.
    fn commit(&self, g: &mut MutexGuard<'_, Inner>, changes: &[HostChange<'_>]) -> Result<()> {
        let mut undo: Vec<(String, Option<HostRecord>)> = Vec::with_capacity(changes.len());
        for c in changes {
            let (name, new) = match *c {
                HostChange::Put(h) => (h.name.as_str(), Some(h.clone())),
                HostChange::Remove(n) => (n, None),
            };
            undo.push((name.to_owned(), put(&mut g.hosts, name, new)));
        }
        if let Err(e) = self.store.commit(changes, &g.hosts) {
            for (name, old) in undo.into_iter().rev() {
                put(&mut g.hosts, &name, old);
            }
            return Err(e);
        }
        for (c, (name, old)) in changes.iter().zip(&undo) {
            let new = match *c {
                HostChange::Put(h) => Some(h),
                HostChange::Remove(_) => None,
            };
            match new.and_then(|h| h.last_seen) {
                Some(s) => {
                    g.persisted_seen.insert(name.clone(), s);
                }
                None => {
                    g.persisted_seen.remove(name);
                }
            }
            let old_key = old.as_ref().map(|h| h.ssh_host_key.as_str());
            let new_key = new.map(|h| h.ssh_host_key.as_str());
            if old_key == new_key {
                continue;
            }
            if let Some(blob) = old_key.and_then(ssh_blob)
                && g.ssh_index.get(&blob).is_some_and(|n| n == name)
            {
                g.ssh_index.remove(&blob);
            }
            if let Some(blob) = new_key.and_then(ssh_blob) {
                g.ssh_index.entry(blob).or_insert_with(|| name.clone());
            }
        }
        Ok(())
    }
}

/// Where `name` is in `hosts` (sorted by name), or where it would go.
fn find(hosts: &[HostRecord], name: &str) -> std::result::Result<usize, usize> {
    hosts.binary_search_by(|h| h.name.as_str().cmp(name))
}

/// Sets the record of `name` in `hosts` (sorted by name) to `new` (`None`: removes it);
/// returns the record it replaced.
fn put(hosts: &mut Vec<HostRecord>, name: &str, new: Option<HostRecord>) -> Option<HostRecord> {
    match (find(hosts, name), new) {
        (Ok(i), Some(h)) => Some(std::mem::replace(&mut hosts[i], h)),
        (Ok(i), None) => Some(hosts.remove(i)),
        (Err(i), Some(h)) => {
            hosts.insert(i, h);
            None
        }
        (Err(_), None) => None,
    }
}

fn check_insertable(inner: &Inner, net: &OverlayNet, r: &HostRecord) -> Result<()> {
    let hosts = &inner.hosts;
    validate_host_name(&r.name)?;
    if find(hosts, &r.name).is_ok_and(|i| hosts[i].is_active()) {
        return Err(EnrollError::NameTaken {
            name: r.name.clone(),
            by: "an enrolled host",
        });
    }
    if !net.is_host_ip(r.overlay_ip) {
        return Err(EnrollError::AddressUnavailable {
            ip: r.overlay_ip,
            why: format!(
                "it is not a host address of {net} (the hub is {})",
                net.hub_ip()
            ),
        });
    }
    // One machine, one identity: a key held by any other record (active or revoked, any name,
    // including the revoked machine this one replaces) is refused.
    if let Some(other) = hosts.iter().find(|h| h.wg_public_key == r.wg_public_key) {
        return Err(EnrollError::KeyTaken {
            which: "WireGuard public key",
            by: other.name.clone(),
        });
    }
    if let Some(mine) = ssh_blob(&r.ssh_host_key)
        && let Some(other) = inner.ssh_index.get(&mine)
    {
        return Err(EnrollError::KeyTaken {
            which: "SSH host key",
            by: other.clone(),
        });
    }
    if let Some(other) = hosts
        .iter()
        .find(|h| h.overlay_ip == r.overlay_ip && h.name != r.name)
    {
        return Err(EnrollError::AddressUnavailable {
            ip: r.overlay_ip,
            why: format!("host {:?} has it", other.name),
        });
    }
    Ok(())
}
