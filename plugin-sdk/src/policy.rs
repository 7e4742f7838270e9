//! The `policy-hook` world: vote on each exec/file/session request after the regex rules.
//!
//! ```ignore
//! use tether_plugin_sdk::policy::{export_policy, PolicyHook, Request, Verdict};
//!
//! struct NoRootShells;
//!
//! impl PolicyHook for NoRootShells {
//!     fn evaluate(req: Request) -> Verdict {
//!         if req.command().starts_with("sudo -i") {
//!             return Verdict::deny("interactive root shells are not allowed");
//!         }
//!         Verdict::Abstain
//!     }
//! }
//!
//! export_policy!(NoRootShells);
//! ```

use crate::bindings::types as wit;
use crate::time::Timestamp;

pub use crate::export_policy;

/// A policy plugin. Called once per request and target host.
pub trait PolicyHook {
    /// Votes on `req`. Return [`Verdict::Abstain`] when the plugin has no opinion.
    fn evaluate(req: Request) -> Verdict;
}

/// What kind of operation a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// Run a command.
    Exec,
    /// Read a file.
    FileRead,
    /// Write a file.
    FileWrite,
    /// An interactive session (shell, possibly with a command).
    Session,
}

/// The target host a request is checked against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// The host's name in the inventory.
    pub name: String,
    /// Groups the host belongs to.
    pub groups: Vec<String>,
    /// The host's tags (`key`, `value`).
    pub tags: Vec<(String, String)>,
}

impl HostFacts {
    /// The value of tag `key`, if set.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the host is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// A redirection of a simple command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The operator: `>`, `>>`, `<`, `2>`, `&>`, `2>&`...
    pub op: String,
    /// Its target after quote removal (a file, or a descriptor after `>&`).
    pub target: String,
}

/// One simple command as the host's policy engine parsed it (the same parse the regex rules
/// were checked against): a plugin never re-parses shell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    /// The words after quote removal (leading `VAR=value` assignments included); expansions
    /// (`$X`, `$(…)`, globs) are kept as written.
    pub argv: Vec<String>,
    /// Its redirections.
    pub redirects: Vec<Redirect>,
    /// Paths the host found in the arguments and redirections (absolute ones normalized).
    pub paths: Vec<String>,
    /// What runs this command when the shell doesn't run it directly: `wrapper: sudo`,
    /// `runs a string: bash -c`, `runs a command: find -exec`...
    pub via: Option<String>,
}

impl Command {
    /// A command with these words (for tests).
    pub fn new(argv: &[&str]) -> Self {
        Command {
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            ..Command::default()
        }
    }

    /// The words after the leading `VAR=value` assignments.
    pub fn words(&self) -> &[String] {
        let skip = self
            .argv
            .iter()
            .take_while(|w| {
                w.split_once('=').is_some_and(|(n, _)| {
                    !n.is_empty()
                        && n.bytes().all(|c| c == b'_' || c.is_ascii_alphanumeric())
                        && !n.as_bytes()[0].is_ascii_digit()
                })
            })
            .count();
        &self.argv[skip..]
    }

    /// The program's base name (`/usr/bin/systemctl` → `systemctl`), or `""` for a command
    /// of assignments only.
    pub fn program(&self) -> &str {
        self.words()
            .first()
            .map(|w| w.rsplit('/').next().unwrap_or(w))
            .unwrap_or("")
    }

    /// The arguments after the program name.
    pub fn args(&self) -> &[String] {
        self.words().get(1..).unwrap_or(&[])
    }
}

/// One request, checked against one target host (fan-out is evaluated per host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What kind of operation this is.
    pub kind: RequestKind,
    /// The shell command (exec, session with a command).
    pub command: Option<String>,
    /// The file (file-read, file-write) or working directory (exec).
    pub path: Option<String>,
    /// The caller's user name.
    pub user: String,
    /// The caller's role (`admin`, `operator`, `auditor`, `read_only`).
    pub role: String,
    /// The target host.
    pub host: HostFacts,
    /// A change/ticket id the operator attached to the request, if any.
    pub ticket: Option<String>,
    /// The host's parse of `command` (see [`Request::commands`]).
    pub commands: Vec<Command>,
    /// Why the host could not split `command`, if it could not (the regex rules deny such a
    /// command in enforce mode; a plugin should not assume it is harmless).
    pub unparsable: Option<String>,
}

impl Request {
    /// A request of `kind` with everything else empty (for tests and builders).
    pub fn new(kind: RequestKind) -> Self {
        Request {
            kind,
            command: None,
            path: None,
            user: String::new(),
            role: String::new(),
            host: HostFacts::default(),
            ticket: None,
            commands: Vec::new(),
            unparsable: None,
        }
    }

    /// An exec request for `command` (for tests).
    pub fn exec(command: &str) -> Self {
        Self::new(RequestKind::Exec).with_command(command)
    }

    /// A file-write request for `path` (for tests).
    pub fn file_write(path: &str) -> Self {
        Request {
            path: Some(path.to_owned()),
            ..Self::new(RequestKind::FileWrite)
        }
    }

    /// Sets the command.
    pub fn with_command(mut self, command: &str) -> Self {
        self.command = Some(command.to_owned());
        self
    }

    /// Sets the ticket id.
    pub fn with_ticket(mut self, ticket: &str) -> Self {
        self.ticket = Some(ticket.to_owned());
        self
    }

    /// The command, or `""` when the request has none.
    pub fn command(&self) -> &str {
        self.command.as_deref().unwrap_or("")
    }

    /// The path, or `""` when the request has none.
    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or("")
    }

    /// The ticket id, if the operator attached one.
    pub fn ticket(&self) -> Option<&str> {
        self.ticket.as_deref()
    }

    /// Every simple command the request's command line can run, as the host parsed it: argv
    /// after quote removal, redirections and paths, in order, including commands inside
    /// substitutions, `sh -c` strings and wrappers (`sudo X` gives `sudo X` and `X`, the latter
    /// with `via = "wrapper: sudo"`). Empty when there is no command.
    pub fn commands(&self) -> &[Command] {
        &self.commands
    }

    /// Sets the parsed commands (for tests).
    pub fn with_commands(mut self, commands: Vec<Command>) -> Self {
        self.commands = commands;
        self
    }

    /// Whether this request can change the target: a file write, or an exec/session (commands
    /// can do anything; narrow it down with [`Request::command`]).
    pub fn may_write(&self) -> bool {
        !matches!(self.kind, RequestKind::FileRead)
    }

    /// The current time from the host clock (see [`crate::host::clock::now`]).
    pub fn now(&self) -> Timestamp {
        crate::host::clock::now()
    }
}

/// A policy hook's vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allow (only loosens a regex deny if the manifest says `may_override = true`).
    Allow,
    /// Deny, with the reason shown to the operator.
    Deny(String),
    /// Hold the request until someone approves it, with the reason shown to the approvers.
    RequireApproval(String),
    /// No opinion: leave the decision to the regex rules and other hooks.
    Abstain,
}

impl Verdict {
    /// Deny with `reason`.
    pub fn deny(reason: impl Into<String>) -> Self {
        Verdict::Deny(reason.into())
    }

    /// Require approval, with `reason`.
    pub fn require_approval(reason: impl Into<String>) -> Self {
        Verdict::RequireApproval(reason.into())
    }
}

impl From<wit::RequestKind> for RequestKind {
    fn from(k: wit::RequestKind) -> Self {
        match k {
            wit::RequestKind::Exec => RequestKind::Exec,
            wit::RequestKind::FileRead => RequestKind::FileRead,
            wit::RequestKind::FileWrite => RequestKind::FileWrite,
            wit::RequestKind::Session => RequestKind::Session,
        }
    }
}

impl From<wit::Command> for Command {
    fn from(c: wit::Command) -> Self {
        Command {
            argv: c.argv,
            redirects: c
                .redirects
                .into_iter()
                .map(|r| Redirect {
                    op: r.op,
                    target: r.target,
                })
                .collect(),
            paths: c.paths,
            via: c.via,
        }
    }
}

impl From<wit::Request> for Request {
    fn from(r: wit::Request) -> Self {
        let (commands, unparsable) = match r.parsed {
            wit::Parsed::None => (Vec::new(), None),
            wit::Parsed::Commands(c) => (c.into_iter().map(Command::from).collect(), None),
            wit::Parsed::Unparsable(why) => (Vec::new(), Some(why)),
        };
        Request {
            kind: r.kind.into(),
            command: r.command,
            path: r.path,
            user: r.user,
            role: r.role,
            host: HostFacts {
                name: r.host.name,
                groups: r.host.groups,
                tags: r.host.tags,
            },
            ticket: r.ticket,
            commands,
            unparsable,
        }
    }
}

impl From<Verdict> for wit::Verdict {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Allow => wit::Verdict::Allow,
            Verdict::Deny(r) => wit::Verdict::Deny(r),
            Verdict::RequireApproval(r) => wit::Verdict::RequireApproval(r),
            Verdict::Abstain => wit::Verdict::Abstain,
        }
    }
}

#[doc(hidden)]
pub fn __adapt<T: PolicyHook>(req: wit::Request) -> wit::Verdict {
    T::evaluate(req.into()).into()
}

/// Exports a [`PolicyHook`] implementation as the plugin's `evaluate` function.
/// Use it once per plugin crate: `export_policy!(MyHook);`.
#[macro_export]
macro_rules! export_policy {
    ($ty:ty) => {
        const _: () = {
            struct __TetherPolicyHook;
            impl $crate::__private::bindings::policy::Guest for __TetherPolicyHook {
                fn evaluate(
                    req: $crate::__private::bindings::types::Request,
                ) -> $crate::__private::bindings::types::Verdict {
                    $crate::__private::policy_adapt::<$ty>(req)
                }
            }
            $crate::__private::bindings::policy::__tether_export_policy_hook!(
                __TetherPolicyHook with_types_in $crate::__private::bindings::policy
            );
        };
    };
}
