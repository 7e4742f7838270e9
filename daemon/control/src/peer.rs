use std::ffi::CString;

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
        Caller {
            uid,
            gid,
            pid,
            user: user.map(|u| u.name),
            groups,
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
