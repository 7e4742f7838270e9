use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Group, Uid, User, getgrouplist};
use tether_config::{Principal, RolesConfig};
use tether_model::Role;

/// Who is on the other end of a control connection, from SO_PEERCRED plus the user database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Effective uid of the connecting process.
    pub uid: u32,
    /// Effective gid of the connecting process.
    pub gid: u32,
    /// Process id, when the kernel reported one.
    pub pid: Option<i32>,
    /// Login name for `uid`, if the user database has one.
    pub user: Option<String>,
    /// Every group id the caller belongs to: `gid` plus the user's supplementary groups.
    pub groups: Vec<u32>,
}

impl Caller {
    /// Resolves name and groups for a peer's credentials. Lookups use the system's user
    /// database; a uid without an entry keeps only its primary gid.
    pub fn resolve(uid: u32, gid: u32, pid: Option<i32>) -> Caller {
        let Identity { user, groups } = Identity::lookup(uid, gid);
        Caller {
            uid,
            gid,
            pid,
            user,
            groups,
        }
    }

    /// A caller from its peer credentials and an identity looked up for that uid/gid.
    fn with(uid: u32, gid: u32, pid: Option<i32>, id: &Identity) -> Caller {
        Caller {
            uid,
            gid,
            pid,
            user: id.user.clone(),
            groups: id.groups.clone(),
        }
    }

    /// `uid 1000 (alice)` or `uid 4242`, for messages.
    pub fn describe(&self) -> String {
        match &self.user {
            Some(name) => format!("uid {} ({name})", self.uid),
            None => format!("uid {}", self.uid),
        }
    }
}

/// What the user database says about a uid/gid pair: login name and group ids.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    user: Option<String>,
    groups: Vec<u32>,
}

impl Identity {
    /// Looks `uid` up in the system's user database (may block: NSS).
    fn lookup(uid: u32, gid: u32) -> Identity {
        let user = User::from_uid(Uid::from_raw(uid)).ok().flatten();
        let mut groups = vec![gid];
        if let Some(u) = &user
            && let Ok(name) = CString::new(u.name.as_bytes())
            && let Ok(list) = getgrouplist(&name, Gid::from_raw(gid))
        {
            groups.extend(list.into_iter().map(Gid::as_raw));
        }
        groups.sort_unstable();
        groups.dedup();
        Identity {
            user: user.map(|u| u.name),
            groups,
        }
    }
}

/// How long a user-database answer for a uid/gid is reused by [`CallerCache`]: a user renamed,
/// removed, or added to or removed from a group is seen by new control connections at most
/// this long after the change. Roles themselves are never cached: every request matches the
/// caller against the role map in force (a reload applies to the next request).
pub const CALLER_TTL: Duration = Duration::from_secs(5);

/// Most uid/gid pairs [`CallerCache`] remembers; beyond it expired entries go, then the oldest.
pub const CALLER_CACHE_CAP: usize = 256;

/// Resolves control-connection callers, reusing a user-database lookup (name and groups) for
/// the same uid/gid for at most a TTL ([`CALLER_TTL`] by default) and for at most a bounded
/// number of pairs. The uid, gid and pid always come from the connection's peer credentials
/// (`SO_PEERCRED`), never from the cache or the peer; only what the system's user database says
/// about them is reused. A hit costs a mutex and two small clones on the connection's task; a
/// miss looks up on the blocking pool (NSS may block).
#[derive(Debug)]
pub struct CallerCache {
    ttl: Duration,
    cap: usize,
    entries: Mutex<Entries>,
}

/// Cached identities by (uid, gid), with when each was looked up.
type Entries = HashMap<(u32, u32), (Instant, Arc<Identity>)>;

impl Default for CallerCache {
    fn default() -> Self {
        CallerCache::new(CALLER_TTL, CALLER_CACHE_CAP)
    }
}

impl CallerCache {
    /// A cache keeping answers for `ttl` (zero: no caching) and at most `cap` pairs.
    pub fn new(ttl: Duration, cap: usize) -> CallerCache {
        CallerCache {
            ttl,
            cap: cap.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The caller with peer credentials `uid`/`gid`/`pid`: name and groups from a fresh enough
    /// cached lookup, or looked up now on the blocking pool. `None` only if that lookup task
    /// could not run (runtime shutting down).
    pub async fn resolve(&self, uid: u32, gid: u32, pid: Option<i32>) -> Option<Caller> {
        let now = Instant::now();
        if let Some(id) = self.fresh(uid, gid, now) {
            return Some(Caller::with(uid, gid, pid, &id));
        }
        let id = tokio::task::spawn_blocking(move || Identity::lookup(uid, gid))
            .await
            .ok()?;
        let caller = Caller::with(uid, gid, pid, &id);
        self.insert(uid, gid, Instant::now(), Arc::new(id));
        Some(caller)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fresh(&self, uid: u32, gid: u32, now: Instant) -> Option<Arc<Identity>> {
        let map = self.lock();
        let (at, id) = map.get(&(uid, gid))?;
        (now.saturating_duration_since(*at) < self.ttl).then(|| Arc::clone(id))
    }

    fn insert(&self, uid: u32, gid: u32, at: Instant, id: Arc<Identity>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.lock();
        if map.len() >= self.cap && !map.contains_key(&(uid, gid)) {
            let ttl = self.ttl;
            map.retain(|_, (t, _)| at.saturating_duration_since(*t) < ttl);
            while map.len() >= self.cap {
                let Some(oldest) = map.iter().min_by_key(|(_, (t, _))| *t).map(|(k, _)| *k) else {
                    break;
                };
                map.remove(&oldest);
            }
        }
        map.insert((uid, gid), (at, id));
    }

    /// Pairs held now (expired ones included until they are replaced or evicted).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `[control.roles]` compiled for lookups. Group names are resolved to gids when the map is built
/// (at start and on reload); a group that does not exist matches nobody.
#[derive(Debug, Clone, Default)]
pub struct RoleMap {
    entries: Vec<(Role, Matcher)>,
    daemon_uid: u32,
}

#[derive(Debug, Clone)]
enum Matcher {
    Uid(u32),
    User(String),
    Gid(u32),
}

impl RoleMap {
    /// Builds the map. `daemon_uid` (the uid tetherd runs as) is always `admin`.
    pub fn new(roles: &RolesConfig, daemon_uid: u32) -> RoleMap {
        let mut entries = Vec::new();
        for role in Role::ALL {
            for p in roles.principals(role) {
                let m = match p {
                    Principal::Uid(u) => Matcher::Uid(*u),
                    Principal::User(n) => Matcher::User(n.clone()),
                    Principal::Gid(g) => Matcher::Gid(*g),
                    Principal::Group(n) => match Group::from_name(n) {
                        Ok(Some(g)) => Matcher::Gid(g.gid.as_raw()),
                        _ => {
                            tracing::warn!(group = %n, role = %role, "group in [control.roles] does not exist; it matches nobody");
                            continue;
                        }
                    },
                };
                entries.push((role, m));
            }
        }
        RoleMap {
            entries,
            daemon_uid,
        }
    }

    /// The strongest role `caller` qualifies for, or `None` (→ 403).
    pub fn role_of(&self, caller: &Caller) -> Option<Role> {
        if caller.uid == self.daemon_uid {
            return Some(Role::Admin);
        }
        self.entries
            .iter()
            .filter(|(_, m)| match m {
                Matcher::Uid(u) => *u == caller.uid,
                Matcher::User(n) => caller.user.as_deref() == Some(n.as_str()),
                Matcher::Gid(g) => caller.groups.contains(g),
            })
            .map(|(r, _)| *r)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32, user: Option<&str>, groups: &[u32]) -> Caller {
        Caller {
            uid,
            gid: groups.first().copied().unwrap_or(uid),
            pid: None,
            user: user.map(str::to_owned),
            groups: groups.to_vec(),
        }
    }

    fn id(name: &str) -> Arc<Identity> {
        Arc::new(Identity {
            user: Some(name.to_owned()),
            groups: vec![1, 2],
        })
    }

    #[test]
    fn the_caller_cache_expires_entries_after_its_ttl() {
        let cache = CallerCache::new(Duration::from_secs(5), 8);
        let t0 = Instant::now();
        cache.insert(1000, 1000, t0, id("alice"));
        assert!(
            cache
                .fresh(1000, 1000, t0 + Duration::from_secs(4))
                .is_some()
        );
        assert!(
            cache
                .fresh(1000, 1000, t0 + Duration::from_secs(5))
                .is_none()
        );
        // Keyed by uid and gid: another primary gid is another lookup.
        assert!(cache.fresh(1000, 1001, t0).is_none());
        // A zero TTL caches nothing.
        let off = CallerCache::new(Duration::ZERO, 8);
        off.insert(1000, 1000, t0, id("alice"));
        assert!(off.is_empty());
    }

    #[test]
    fn the_caller_cache_is_bounded_dropping_expired_then_oldest() {
        let cache = CallerCache::new(Duration::from_secs(5), 2);
        let t0 = Instant::now();
        cache.insert(1, 1, t0, id("a"));
        cache.insert(2, 2, t0 + Duration::from_secs(1), id("b"));
        cache.insert(3, 3, t0 + Duration::from_secs(2), id("c"));
        assert_eq!(cache.len(), 2);
        let now = t0 + Duration::from_secs(2);
        assert!(cache.fresh(1, 1, now).is_none(), "the oldest went");
        assert!(cache.fresh(2, 2, now).is_some() && cache.fresh(3, 3, now).is_some());
        // Both expired by now: they go before anything fresh would.
        cache.insert(4, 4, t0 + Duration::from_secs(7), id("d"));
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test]
    #[allow(clippy::unwrap_used)]
    async fn cached_callers_keep_their_own_peer_credentials() {
        let cache = CallerCache::default();
        let me = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let a = cache.resolve(me, gid, Some(10)).await.unwrap();
        let b = cache.resolve(me, gid, Some(20)).await.unwrap();
        assert_eq!(cache.len(), 1, "the second lookup was a hit");
        assert_eq!((a.pid, b.pid), (Some(10), Some(20)));
        assert_eq!((b.uid, b.gid), (me, gid));
        assert_eq!(a.user, b.user);
        assert_eq!(b, Caller::resolve(me, gid, Some(20)));
    }

    #[test]
    fn strongest_matching_role_wins() {
        let roles = RolesConfig {
            admin: vec![Principal::Uid(0)],
            operator: vec![Principal::User("alice".into())],
            auditor: vec![Principal::Gid(500)],
            read_only: vec![Principal::Uid(1001), Principal::Gid(500)],
        };
        let map = RoleMap::new(&roles, 999);
        assert_eq!(
            map.role_of(&caller(0, Some("root"), &[0])),
            Some(Role::Admin)
        );
        assert_eq!(
            map.role_of(&caller(1000, Some("alice"), &[500])),
            Some(Role::Operator)
        );
        assert_eq!(
            map.role_of(&caller(1002, None, &[500])),
            Some(Role::Auditor)
        );
        assert_eq!(
            map.role_of(&caller(1001, None, &[1001])),
            Some(Role::ReadOnly)
        );
        assert_eq!(map.role_of(&caller(4242, None, &[4242])), None);
        assert_eq!(
            map.role_of(&caller(999, None, &[999])),
            Some(Role::Admin),
            "daemon uid"
        );
    }
}
