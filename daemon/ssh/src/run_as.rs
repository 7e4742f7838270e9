//! `ssh.run_as`: the user a target's commands run as.
//!
//! [`RunAs::resolve`] looks the user up once, at startup: its uid, primary gid, supplementary
//! groups (`getgrouplist`, the equivalent of `initgroups`), home and name. A daemon running as
//! root drops to that user in each command's child just before `exec` (`setgroups`, `setgid`,
//! `setuid`, in that order, so no root group survives); a daemon not running as root can only
//! run commands as itself, so any other `run_as` is refused at startup with a clear error.
//!
//! [`RunAs::apply`] does it in a forked child (`pre_exec`): pty sessions, the SFTP helper, and
//! `exec` on a kernel without `CLONE_PIDFD`. `exec` commands otherwise start through the
//! crate's `spawn` module, which does the same three steps as raw system calls in a
//! `clone(CLONE_VM | CLONE_VFORK)` child, without forking the daemon.
//!
//! This is the only module of the crate with `unsafe`: `pre_exec` is unsafe because its closure
//! runs in the forked child, where only async-signal-safe calls are allowed. Everything that
//! allocates or reads files (the group list) happens in the parent, before the fork.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;

use nix::unistd::{Gid, Uid, User};

use crate::SshError;

/// The resolved `run_as` user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// User name.
    pub name: String,
    /// Its uid.
    pub uid: Uid,
    /// Its primary gid.
    pub gid: Gid,
    /// Its supplementary groups (including the primary one).
    pub groups: Vec<Gid>,
    /// Its home directory (the command's working directory and `HOME`).
    pub home: String,
    /// Whether each command's child must switch to it (the daemon runs as root and it is not
    /// root).
    pub drop: bool,
}

impl RunAs {
    /// Resolves `name` (`None`: the daemon's own user, nothing to drop).
    pub fn resolve(name: Option<&str>) -> Result<RunAs, SshError> {
        let euid = nix::unistd::geteuid();
        let err = |user: &str, reason: String| SshError::RunAs {
            user: user.to_owned(),
            reason,
        };
        let Some(name) = name else {
            let me = User::from_uid(euid).ok().flatten();
            return Ok(RunAs {
                name: me
                    .as_ref()
                    .map_or_else(|| "nobody".to_owned(), |u| u.name.clone()),
                uid: euid,
                gid: nix::unistd::getegid(),
                groups: Vec::new(),
                home: me.map_or_else(|| "/".to_owned(), |u| u.dir.to_string_lossy().into_owned()),
                drop: false,
            });
        };
        let user = User::from_name(name)
            .map_err(|e| err(name, format!("cannot look the user up: {e}")))?
            .ok_or_else(|| {
                err(
                    name,
                    "no such user on this machine; create it or change ssh.run_as".to_owned(),
                )
            })?;
        let drop = if user.uid == euid {
            false
        } else if euid.is_root() {
            true
        } else {
            return Err(err(
                name,
                format!(
                    "the daemon runs as uid {euid}, not root, so it cannot run commands as uid {}; run tetherd as root or as {name}, or remove ssh.run_as",
                    user.uid
                ),
            ));
        };
        let groups = if drop {
            let cname = std::ffi::CString::new(name)
                .map_err(|_| err(name, "contains a NUL byte".to_owned()))?;
            nix::unistd::getgrouplist(&cname, user.gid)
                .map_err(|e| err(name, format!("cannot read its groups: {e}")))?
        } else {
            Vec::new()
        };
        Ok(RunAs {
            name: user.name,
            uid: user.uid,
            gid: user.gid,
            groups,
            home: user.dir.to_string_lossy().into_owned(),
            drop,
        })
    }

    /// Makes `cmd`'s child switch to this user before it runs (when [`RunAs::drop`]).
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        if !self.drop {
            return;
        }
        let (uid, gid, groups) = (self.uid, self.gid, self.groups.clone());
        // SAFETY: the closure runs in the forked child before exec and only makes the raw
        // setgroups/setgid/setuid system calls (async-signal-safe; `groups` was built in the
        // parent, nothing here allocates, locks or touches shared state). Any failure aborts
        // the spawn with the OS error instead of running the command as root.
        unsafe {
            cmd.as_std_mut().pre_exec(move || {
                nix::unistd::setgroups(&groups)?;
                nix::unistd::setgid(gid)?;
                nix::unistd::setuid(uid)?;
                Ok(())
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_user_needs_no_drop() {
        let me = RunAs::resolve(None).expect("self");
        assert!(!me.drop);
        assert_eq!(me.uid, nix::unistd::geteuid());
        let by_name = RunAs::resolve(Some(&me.name)).expect("own name");
        assert!(!by_name.drop);
    }

    #[test]
    fn unknown_user_is_refused() {
        let e = RunAs::resolve(Some("no-such-user-tether")).expect_err("unknown");
        assert!(e.to_string().contains("no such user"), "{e}");
    }

    #[test]
    fn another_user_needs_root() {
        let r = RunAs::resolve(Some("nobody"));
        if nix::unistd::geteuid().is_root() {
            let r = r.expect("root may drop");
            assert!(r.drop);
            assert_eq!(r.uid.as_raw(), 65534);
        } else {
            let e = r.expect_err("not root");
            assert!(e.to_string().contains("not root"), "{e}");
        }
    }
}
