//! Wrapper programs: programs that run another command given in their arguments (`sudo`, `env`,
//! `timeout`, ...). The built-in table below is data, and a policy file extends it with
//! `[[policy.wrappers]]` entries ([`WrapperSpec`]). For each wrapper the splitter skips its
//! options (and the values of those that take one) and its leading operands, and checks the
//! wrapped command like any other; options that take a *command string* (`su -c`, `env -S`,
//! `flock -c`) are parsed as a script.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::PolicyError;

/// A wrapper program, as written in a policy file (`[[policy.wrappers]]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrapperSpec {
    /// The program's name (its base name: `/usr/bin/mywrap` is looked up as `mywrap`).
    pub name: String,
    /// Options that take a value in the next word (`-u`, `--user`); `--opt=value` and attached
    /// short values (`-uroot`) are understood without listing them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub value_options: Vec<String>,
    /// Options whose value is a command string run by a shell (`-c` for `su`): it is parsed as
    /// a script and every command in it is checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub script_options: Vec<String>,
    /// Operands before the wrapped command (`1` for `timeout DURATION CMD` or `chroot DIR CMD`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub operands: usize,
    /// The rest of the arguments is joined with spaces and run by a shell (`watch`, `ssh`), so it
    /// is parsed as a script rather than as one command.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub joins_rest: bool,
    /// Without a command the program reads a script from standard input (`ssh HOST`, `su`):
    /// that is code the checker can't see.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reads_stdin: bool,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A compiled wrapper entry.
#[derive(Debug, Clone)]
pub(crate) struct Wrapper {
    pub value_options: Vec<String>,
    pub script_options: Vec<String>,
    pub operands: usize,
    pub joins_rest: bool,
    pub reads_stdin: bool,
}

/// The wrapper table of one policy: the built-ins plus the policy file's entries (which replace
/// a built-in of the same name).
#[derive(Debug, Clone)]
pub(crate) struct Wrappers {
    map: HashMap<String, Wrapper>,
}

/// (name, value options, script options, operands, joins rest, reads stdin)
type Builtin = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    usize,
    bool,
    bool,
);

/// The built-in wrappers. Options that take a value are listed so the wrapped command is found
/// after any number of them (`env -u A -u B -u C -u D CMD`, `timeout -s KILL 5 CMD`).
const BUILTIN: &[Builtin] = &[
    (
        "sudo",
        &[
            "-u",
            "-g",
            "-C",
            "-D",
            "-h",
            "-p",
            "-r",
            "-t",
            "-U",
            "-T",
            "-R",
            "--user",
            "--group",
            "--close-from",
            "--chdir",
            "--host",
            "--prompt",
            "--role",
            "--type",
            "--other-user",
            "--command-timeout",
            "--chroot",
        ],
        &[],
        0,
        false,
        false,
    ),
    ("doas", &["-u", "-C"], &[], 0, false, false),
    ("pkexec", &["--user"], &[], 0, false, false),
    (
        "su",
        &[
            "-s",
            "-g",
            "-G",
            "-w",
            "--shell",
            "--group",
            "--supp-group",
            "--whitelist-environment",
        ],
        &["-c", "--command", "--session-command"],
        1,
        false,
        true,
    ),
    (
        "runuser",
        &[
            "-u",
            "-g",
            "-G",
            "-s",
            "-w",
            "--user",
            "--group",
            "--supp-group",
            "--shell",
            "--whitelist-environment",
        ],
        &["-c", "--command", "--session-command"],
        0,
        false,
        false,
    ),
    ("sg", &[], &["-c"], 1, false, false),
    ("newgrp", &[], &[], 1, false, true),
    (
        "env",
        &[
            "-u",
            "--unset",
            "-C",
            "--chdir",
            "-a",
            "--argv0",
            "--default-signal",
            "--ignore-signal",
            "--block-signal",
        ],
        &["-S", "--split-string"],
        0,
        false,
        false,
    ),
    ("nohup", &[], &[], 0, false, false),
    ("nice", &["-n", "--adjustment"], &[], 0, false, false),
    (
        "ionice",
        &[
            "-c",
            "-n",
            "-p",
            "-P",
            "-u",
            "--class",
            "--classdata",
            "--pid",
            "--pgid",
            "--uid",
        ],
        &[],
        0,
        false,
        false,
    ),
    (
        "timeout",
        &["-s", "-k", "--signal", "--kill-after"],
        &[],
        1,
        false,
        false,
    ),
    ("command", &[], &[], 0, false, false),
    ("builtin", &[], &[], 0, false, false),
    ("exec", &["-a"], &[], 0, false, false),
    (
        "time",
        &["-f", "-o", "--format", "--output"],
        &[],
        0,
        false,
        false,
    ),
    (
        "stdbuf",
        &["-i", "-o", "-e", "--input", "--output", "--error"],
        &[],
        0,
        false,
        false,
    ),
    ("setsid", &[], &[], 0, false, false),
    ("chrt", &[], &[], 1, false, false),
    ("taskset", &[], &[], 1, false, false),
    (
        "xargs",
        &[
            "-a",
            "-d",
            "-E",
            "-I",
            "-L",
            "-n",
            "-P",
            "-s",
            "--arg-file",
            "--delimiter",
            "--eof",
            "--replace",
            "--max-lines",
            "--max-args",
            "--max-procs",
            "--max-chars",
            "--process-slot-var",
        ],
        &[],
        0,
        false,
        false,
    ),
    ("unbuffer", &[], &[], 0, false, false),
    ("busybox", &[], &[], 0, false, false),
    ("toybox", &[], &[], 0, false, false),
    (
        "strace",
        &[
            "-e", "-o", "-p", "-s", "-u", "-E", "-a", "-b", "-I", "-O", "-S", "-P", "-X",
        ],
        &[],
        0,
        false,
        false,
    ),
    (
        "ltrace",
        &[
            "-e", "-o", "-p", "-s", "-u", "-n", "-a", "-A", "-D", "-F", "-l", "-L", "-x",
        ],
        &[],
        0,
        false,
        false,
    ),
    ("chroot", &["--userspec", "--groups"], &[], 1, false, false),
    (
        "watch",
        &["-n", "--interval", "-q", "--equexit"],
        &[],
        0,
        true,
        false,
    ),
    (
        "flock",
        &["-w", "--timeout", "-E", "--conflict-exit-code"],
        &["-c", "--command"],
        1,
        false,
        false,
    ),
    (
        "systemd-run",
        &[
            "-p",
            "--property",
            "-u",
            "--unit",
            "-E",
            "--setenv",
            "--uid",
            "--gid",
            "--nice",
            "--working-directory",
            "-M",
            "--machine",
            "-H",
            "--host",
            "--slice",
            "--description",
            "--on-calendar",
            "--on-active",
            "--on-boot",
            "--timer-property",
            "--path-property",
            "--socket-property",
        ],
        &[],
        0,
        false,
        false,
    ),
    (
        "script",
        &[
            "-t",
            "--timing",
            "-I",
            "-O",
            "-B",
            "-T",
            "-E",
            "-m",
            "--log-in",
            "--log-out",
            "--log-io",
            "--log-timing",
            "--echo",
            "--logging-format",
            "--output-limit",
        ],
        &["-c", "--command"],
        0,
        false,
        false,
    ),
    ("caffeinate", &[], &[], 0, false, false),
    ("torsocks", &[], &[], 0, false, false),
    ("proxychains", &["-f"], &[], 0, false, false),
    ("proxychains4", &["-f"], &[], 0, false, false),
    ("firejail", &[], &[], 0, false, false),
    (
        "unshare",
        &[
            "-S", "-G", "--setuid", "--setgid", "-R", "--root", "-w", "--wd",
        ],
        &[],
        0,
        false,
        false,
    ),
    (
        "nsenter",
        &[
            "-t", "--target", "-S", "-G", "--setuid", "--setgid", "-r", "-w",
        ],
        &[],
        0,
        false,
        false,
    ),
    ("ip", &["-n", "-netns"], &[], 3, false, false),
    (
        "parallel",
        &[
            "-j",
            "--jobs",
            "-S",
            "--sshlogin",
            "-a",
            "--arg-file",
            "-d",
            "--delimiter",
            "-E",
            "-I",
            "-L",
            "-n",
            "-N",
            "--colsep",
            "--results",
            "--joblog",
            "--tmpdir",
            "--timeout",
        ],
        &[],
        0,
        true,
        true,
    ),
    (
        "setpriv",
        &[
            "--reuid",
            "--regid",
            "--groups",
            "--inh-caps",
            "--ambient-caps",
            "--bounding-set",
            "--securebits",
            "--pdeathsig",
            "--selinux-label",
            "--apparmor-profile",
            "--landlock-access",
            "--landlock-rule",
            "--ptracer",
        ],
        &[],
        0,
        false,
        false,
    ),
    (
        "prlimit",
        &["-p", "--pid", "-o", "--output"],
        &[],
        0,
        false,
        false,
    ),
    (
        "fakeroot",
        &["-l", "--lib", "--faked", "-s", "-i"],
        &[],
        0,
        false,
        false,
    ),
    ("cgexec", &["-g"], &[], 0, false, false),
    (
        "numactl",
        &[
            "-C",
            "-N",
            "-m",
            "-p",
            "-i",
            "--cpunodebind",
            "--membind",
            "--preferred",
            "--interleave",
            "--physcpubind",
        ],
        &[],
        0,
        false,
        false,
    ),
    (
        "ssh",
        &[
            "-B", "-b", "-c", "-D", "-E", "-e", "-F", "-I", "-i", "-J", "-L", "-l", "-m", "-O",
            "-o", "-p", "-Q", "-R", "-S", "-W", "-w",
        ],
        &[],
        1,
        true,
        true,
    ),
];

impl Wrappers {
    /// The built-ins plus `extra` (validated: a name is one plain word, options start with `-`).
    pub fn new(extra: &[WrapperSpec]) -> Result<Wrappers, PolicyError> {
        let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let mut map: HashMap<String, Wrapper> = BUILTIN
            .iter()
            .map(|(name, values, scripts, operands, joins, stdin)| {
                (
                    (*name).to_owned(),
                    Wrapper {
                        value_options: own(values),
                        script_options: own(scripts),
                        operands: *operands,
                        joins_rest: *joins,
                        reads_stdin: *stdin,
                    },
                )
            })
            .collect();
        for w in extra {
            let bad = |problem: String| PolicyError::InvalidWrapper {
                name: w.name.clone(),
                problem,
            };
            if w.name.is_empty()
                || w.name.len() > 64
                || !w
                    .name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'+'))
            {
                return Err(bad(
                    "the name must be a program's base name: 1-64 letters, digits, '.', '_', '-' or '+'"
                        .into(),
                ));
            }
            for o in w.value_options.iter().chain(&w.script_options) {
                if !o.starts_with('-') || o.len() < 2 || o.contains([' ', '=']) {
                    return Err(bad(format!(
                        "option {o:?} must look like `-x` or `--long` (no spaces or `=`)"
                    )));
                }
            }
            if w.operands > 8 {
                return Err(bad(format!("operands = {} (at most 8)", w.operands)));
            }
            map.insert(
                w.name.clone(),
                Wrapper {
                    value_options: w.value_options.clone(),
                    script_options: w.script_options.clone(),
                    operands: w.operands,
                    joins_rest: w.joins_rest,
                    reads_stdin: w.reads_stdin,
                },
            );
        }
        Ok(Wrappers { map })
    }

    /// The wrapper named `base`, if it is one.
    pub fn get(&self, base: &str) -> Option<&Wrapper> {
        self.map.get(base)
    }
}

/// Where a wrapper's arguments lead.
#[derive(Debug, Default)]
pub(crate) struct Unwrapped {
    /// Command strings given to script options (index of the word holding the script, or the
    /// script text when it was attached to its option).
    pub scripts: Vec<Script>,
    /// Index of the first word of the wrapped command, if any.
    pub rest: Option<usize>,
}

/// A command string found in an option.
#[derive(Debug)]
pub(crate) enum Script {
    /// The word at this index.
    Word(usize),
    /// Attached to its option (`--command=...`, `-cSCRIPT`): the text after the option.
    Attached(usize, usize),
}

fn opt_matches(opts: &[String], word: &str) -> bool {
    opts.iter().any(|o| o == word)
}

/// Whether short option `-c` (one letter) is among `opts`.
fn short_in(opts: &[String], c: u8) -> bool {
    opts.iter()
        .any(|o| o.len() == 2 && o.as_bytes()[1] == c && o.as_bytes()[0] == b'-')
}

impl Wrapper {
    /// Finds the wrapped command and the command strings in `args` (the words after the
    /// wrapper's name).
    pub fn unwrap(&self, args: &[&str]) -> Unwrapped {
        let mut out = Unwrapped::default();
        // Script options anywhere (`su - root -c CMD`, `flock FILE -c CMD`).
        let mut i = 0;
        while i < args.len() {
            let t = args[i];
            if t == "--" && !self.joins_rest {
                break;
            }
            if t.starts_with("--") {
                if let Some((name, _)) = t.split_once('=') {
                    if opt_matches(&self.script_options, name) {
                        out.scripts.push(Script::Attached(i, name.len() + 1));
                    }
                } else if opt_matches(&self.script_options, t) {
                    out.scripts.push(Script::Word(i + 1));
                    i += 1;
                }
            } else if t.len() > 1 && t.starts_with('-') {
                let b = t.as_bytes();
                for (k, &c) in b.iter().enumerate().skip(1) {
                    if short_in(&self.script_options, c) {
                        if k + 1 == b.len() {
                            out.scripts.push(Script::Word(i + 1));
                            i += 1;
                        } else {
                            out.scripts.push(Script::Attached(i, k + 1));
                        }
                        break;
                    }
                    if short_in(&self.value_options, c) {
                        break;
                    }
                }
            }
            i += 1;
        }
        // The wrapped command: after options, option values, assignments and operands.
        let mut k = 0;
        let mut operands = self.operands;
        while k < args.len() {
            let t = args[k];
            if t == "--" {
                k += 1;
                if operands == 0 {
                    break;
                }
                continue;
            }
            if t.starts_with("--") {
                let takes = !t.contains('=')
                    && (opt_matches(&self.value_options, t)
                        || opt_matches(&self.script_options, t));
                k += if takes { 2 } else { 1 };
                continue;
            }
            if t.starts_with('-') {
                let b = t.as_bytes();
                let mut step = 1;
                for (ci, &c) in b.iter().enumerate().skip(1) {
                    if short_in(&self.value_options, c) || short_in(&self.script_options, c) {
                        if ci + 1 == b.len() {
                            step = 2;
                        }
                        break;
                    }
                }
                k += step;
                continue;
            }
            if is_assignment(t) {
                k += 1;
                continue;
            }
            if operands > 0 {
                operands -= 1;
                k += 1;
                continue;
            }
            break;
        }
        if k < args.len() {
            out.rest = Some(k);
        }
        out
    }
}

/// `NAME=value` with a valid shell variable name.
pub(crate) fn is_assignment(t: &str) -> bool {
    match t.find('=') {
        Some(k) if k > 0 => {
            let name = &t.as_bytes()[..k];
            (name[0] == b'_' || name[0].is_ascii_alphabetic())
                && name.iter().all(|c| *c == b'_' || c.is_ascii_alphanumeric())
        }
        _ => false,
    }
}
