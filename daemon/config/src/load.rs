use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Serialized};
use figment::{Figment, error::Kind};
use serde::Serialize;
use tether_model::DaemonRole;

use crate::locate::{find_line, line_of_offset};
use crate::paths::config_file_path;
use crate::{Config, ConfigError, DEFAULT_CONFIG_PATH, Problem};

/// Values given on the command line; they win over the file and the environment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--role`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<DaemonRole>,
    /// `--state-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// `--socket`, nested as `control.socket`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlOverrides>,
}

/// Command-line overrides inside `[control]`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ControlOverrides {
    /// `--socket`.
    pub socket: PathBuf,
}

impl Overrides {
    /// The overrides with relative paths made absolute against the working directory (where
    /// the flag was typed).
    fn anchored(&self) -> Overrides {
        let mut o = self.clone();
        o.state_dir = o.state_dir.map(|p| absolute(&p));
        if let Some(c) = o.control.as_mut() {
            c.socket = absolute(&c.socket);
        }
        o
    }

    /// Sets `control.socket`.
    pub fn with_socket(mut self, socket: Option<PathBuf>) -> Self {
        self.control = socket.map(|socket| ControlOverrides { socket });
        self
    }
}

/// Loads the effective config for `tetherd run`: defaults < `file` (or `/etc/tether/tetherd.toml`
/// if it exists and no file was given) < `TETHER_*` env < `overrides`, then validates it.
///
/// Relative paths: one rule, applied here for every path the config carries (see
/// [`PATH_KEYS`]). A relative path written in the config file means the file's directory, as
/// for systemd units and most daemons, whatever the daemon's working directory; a relative
/// `--state-dir`/`--socket` flag means the working directory it was typed in. The config
/// holds the resolved absolute paths, so everything that shows it (`tether config show`,
/// errors) names the path actually used. Relative paths from `TETHER_*` variables are refused
/// (they have no directory of their own).
pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
    let path = match file {
        Some(p) => Some(config_file_path(p)),
        None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
    };
    let text = match &path {
        Some(p) => Some(read(p)?),
        None => None,
    };
    let origin = match &path {
        Some(p) => format!("{} (with TETHER_* environment and flags)", p.display()),
        None => "defaults, TETHER_* environment and flags".to_owned(),
    };
    let base = path.as_deref().and_then(Path::parent);
    resolve(text.as_deref(), base, true, &overrides.anchored(), true)
        .map_err(|problems| ConfigError::Invalid { origin, problems })
}

/// Like [`load`] but leaves the policy uncompiled: a reload compiles it through the live
/// policy engine, which keeps the old policy and raises `policy_rebuild_failed` on failure.
pub fn load_for_reload(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
    let path = match file {
        Some(p) => Some(config_file_path(p)),
        None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
    };
    let text = path.as_deref().map(read).transpose()?;
    let base = path.as_deref().and_then(Path::parent);
    resolve(text.as_deref(), base, true, &overrides.anchored(), false).map_err(|problems| {
        ConfigError::Invalid {
            origin: file.map_or_else(
                || "defaults, TETHER_* environment and flags".to_owned(),
                |p| config_file_path(p).display().to_string(),
            ),
            problems,
        }
    })
}

/// Validates one config file on its own (no environment, no flags), reporting every problem.
/// Relative paths in it resolve against its directory, as in [`load`].
pub fn check_file(path: &Path) -> Result<Config, ConfigError> {
    let path = config_file_path(path);
    let text = read(&path)?;
    resolve(
        Some(&text),
        path.parent(),
        false,
        &Overrides::default(),
        true,
    )
    .map_err(|problems| ConfigError::Invalid {
        origin: path.display().to_string(),
        problems,
    })
}

/// Like [`check_file`] for text already in memory; `origin` names it in the error. The text
/// has no directory, so a relative path in it is a problem.
pub fn check_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
    resolve(Some(text), None, false, &Overrides::default(), true).map_err(|problems| {
        ConfigError::Invalid {
            origin: origin.to_owned(),
            problems,
        }
    })
}

/// Every config key that holds a filesystem path (a list of paths for `files.allowed_roots`).
/// A relative one in a config file is resolved against the file's directory by
/// [`anchor_paths`]; the checks in `validate` then require every path to be absolute.
pub const PATH_KEYS: &[&str] = &[
    "state_dir",
    "policy_file",
    "plugins_manifest",
    "control.socket",
    "ssh.host_key_file",
    "vault.key_file",
    "vault.credentials_dir",
    "relay.tls_cert",
    "relay.tls_key",
    "relay.allowlist",
    "files.allowed_roots",
];

/// `p` made absolute against the working directory (without touching the file system, so a
/// symlink in it stays as written).
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Rewrites each relative path of [`PATH_KEYS`] in the file's `table` to `base.join(path)`.
/// Values of the wrong type are left for serde to report.
fn anchor_paths(table: &mut toml::Table, base: &Path) {
    let anchor = |v: &mut toml::Value| {
        if let toml::Value::String(s) = v
            && !s.is_empty()
            && Path::new(s.as_str()).is_relative()
        {
            *s = absolute(&base.join(s.as_str())).display().to_string();
        }
    };
    for key in PATH_KEYS {
        let mut parts = key.split('.').peekable();
        let mut at = &mut *table;
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                match at.get_mut(part) {
                    Some(toml::Value::Array(items)) => items.iter_mut().for_each(anchor),
                    Some(v) => anchor(v),
                    None => {}
                }
                break;
            }
            match at.get_mut(part) {
                Some(toml::Value::Table(inner)) => at = inner,
                _ => break,
            }
        }
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    crate::file::read_config_file(path)
}

/// Top-level keys an environment variable may set. `TETHER_SOCKET` and other `TETHER_*`
/// variables meant for the CLI are therefore not mistaken for config keys.
fn top_level_keys() -> BTreeSet<String> {
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(map)) => {
            let mut keys: BTreeSet<String> = map.keys().cloned().collect();
            keys.insert("role".to_owned());
            keys.insert("policy_file".to_owned());
            keys.insert("plugins_manifest".to_owned());
            keys
        }
        _ => BTreeSet::new(),
    }
}

/// Parses `text` (the config file's, when `base` is its directory), merges the sources and
/// validates the result.
fn resolve(
    text: Option<&str>,
    base: Option<&Path>,
    use_env: bool,
    overrides: &Overrides,
    compile_policy: bool,
) -> Result<Config, Vec<Problem>> {
    let mut table = match text {
        None => toml::Table::new(),
        Some(text) => match text.parse::<toml::Table>() {
            Ok(t) => t,
            Err(e) => {
                return Err(vec![Problem {
                    key: String::new(),
                    line: e.span().map(|s| line_of_offset(text, s.start)),
                    message: format!("TOML syntax error: {}", e.message().trim()),
                }]);
            }
        },
    };
    if let Some(base) = base {
        anchor_paths(&mut table, base);
    }
    let top = top_level_keys();
    let mut bad_env: BTreeSet<String> = BTreeSet::new();
    let mut problems = Vec::new();
    // Each round reports the errors serde stops at, removes the offending keys (so defaults
    // stand in) and tries again: the user sees every problem at once, not one per run.
    for _round in 0..64 {
        let mut figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Serialized::defaults(&table));
        if use_env {
            let top = top.clone();
            let skip = bad_env.clone();
            figment = figment.merge(Env::prefixed("TETHER_").split("__").filter(move |k| {
                let k = k.as_str().to_ascii_lowercase();
                let first = k.split('.').next().unwrap_or_default();
                top.contains(first) && !skip.contains(&k)
            }));
        }
        // All providers share figment's default profile so merge order is precedence
        // (the global profile would silently win over everything).
        figment = figment.merge(Serialized::defaults(overrides));
        match figment.extract::<Config>() {
            Ok(config) => {
                let reported: BTreeSet<String> =
                    problems.iter().map(|p: &Problem| p.key.clone()).collect();
                let mut checks = config.validate();
                if compile_policy
                    && !reported
                        .iter()
                        .chain(checks.iter().map(|p| &p.key))
                        .any(|k| k.starts_with("policy"))
                {
                    checks.extend(config.check_policy());
                }
                problems.extend(
                    checks
                        .into_iter()
                        .filter(|p| !reported.contains(&p.key))
                        .map(|mut p| {
                            if let Some(text) = text {
                                let key: Vec<String> =
                                    p.key.split('.').map(str::to_owned).collect();
                                p.line = find_line(text, &key);
                            }
                            p
                        }),
                );
                return if problems.is_empty() {
                    Ok(config)
                } else {
                    Err(sorted(problems))
                };
            }
            Err(errors) => {
                let mut progressed = false;
                for e in errors {
                    let mut key = e.path.clone();
                    let message = match &e.kind {
                        Kind::UnknownField(field, expected) => {
                            if key.last() != Some(field) {
                                key.push(field.clone());
                            }
                            if expected.is_empty() {
                                "unknown key".to_owned()
                            } else {
                                format!("unknown key; expected one of: {}", expected.join(", "))
                            }
                        }
                        other => other.to_string().replace("``", "`"),
                    };
                    let dotted = display_key(&key);
                    let named: Vec<String> = key
                        .iter()
                        .filter(|k| k.parse::<usize>().is_err())
                        .cloned()
                        .collect();
                    let from_env = e
                        .metadata
                        .as_ref()
                        .is_some_and(|m| m.name.contains("environment"));
                    // Drop the offending key from its source so the next round can go on.
                    let removed = (!from_env && remove_path(&mut table, &key))
                        || (use_env && !named.is_empty() && bad_env.insert(named.join(".")));
                    progressed |= removed;
                    let shown_key = if from_env {
                        format!(
                            "{dotted} (from TETHER_{})",
                            dotted.to_ascii_uppercase().replace('.', "__")
                        )
                    } else {
                        dotted
                    };
                    problems.push(Problem {
                        line: if from_env {
                            None
                        } else {
                            text.and_then(|t| find_line(t, &named))
                        },
                        key: shown_key,
                        message,
                    });
                }
                if !progressed {
                    break;
                }
            }
        }
    }
    Err(sorted(problems))
}

/// `["control","roles","admin","0"]` → `control.roles.admin[0]`.
fn display_key(key: &[String]) -> String {
    let mut out = String::new();
    for part in key {
        if part.parse::<usize>().is_ok() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

fn sorted(mut problems: Vec<Problem>) -> Vec<Problem> {
    problems.sort_by_key(|p| (p.line.unwrap_or(usize::MAX), p.key.clone()));
    problems.dedup();
    problems
}

/// Removes `path` from a TOML table; true if something was removed.
fn remove_path(table: &mut toml::Table, path: &[String]) -> bool {
    match path {
        [] => false,
        [last] => table.remove(last).is_some(),
        [first, rest @ ..] => match table.get_mut(first) {
            Some(toml::Value::Table(inner)) => remove_path(inner, rest),
            Some(_) => table.remove(first).is_some(),
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Principal;

    #[test]
    fn a_good_file_loads() {
        let c = check_str(
            "role = \"hub\"\nstate_dir = \"/var/lib/t\"\n[control]\nsocket = \"/run/t.sock\"\n[control.roles]\noperator = [\"user:alice\", \"group:ops\"]\n",
            "t",
        )
        .expect("valid");
        assert_eq!(c.role, Some(DaemonRole::Hub));
        assert_eq!(c.control.roles.operator[1], Principal::Group("ops".into()));
        assert_eq!(
            c.control.roles.admin,
            vec![Principal::Uid(0)],
            "default admin kept"
        );
    }

    #[test]
    fn every_problem_is_reported_with_key_and_line() {
        let text = "role = \"middle\"\nstate_dir = 5\nbogus = 1\n[control]\nsocket = \"relative.sock\"\nidle_timeout_secs = 0\n[control.roles]\nadmin = [\"root\"]\n[log]\nlevel = \"loud\"\n";
        let err = check_str(text, "f.toml").expect_err("invalid");
        let problems = err.problems();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "role",
            "state_dir",
            "bogus",
            "control.socket",
            "control.idle_timeout_secs",
            "control.roles.admin[0]",
            "log.level",
        ] {
            assert!(keys.contains(&k), "missing problem for {k}: {problems:#?}");
        }
        let line = |k: &str| problems.iter().find(|p| p.key == k).and_then(|p| p.line);
        assert_eq!(line("bogus"), Some(3));
        assert_eq!(line("control.roles.admin[0]"), Some(8));
        assert_eq!(line("log.level"), Some(10));
        assert!(err.to_string().contains("f.toml"));
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let err = check_str("role = \"hub\"\n[control\n", "x").expect_err("invalid");
        assert_eq!(err.problems().len(), 1);
        assert_eq!(err.problems()[0].line, Some(2));
    }

    #[test]
    fn policy_problems_are_config_problems() {
        let text = "role = \"hub\"\n[policy]\nmode = \"enforce\"\n[[policy.deny_commands]]\nid = \"bad\"\npattern = \"(unclosed\"\n";
        let err = check_str(text, "x").expect_err("bad regex");
        let p = &err.problems()[0];
        assert_eq!(p.key, "policy");
        assert!(p.message.contains("`bad`"), "{}", p.message);
        assert_eq!(p.line, Some(2));
        // A reload defers compiling to the policy engine.
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("c.toml");
        std::fs::write(&f, text).expect("write");
        assert!(load_for_reload(Some(&f), &Overrides::default()).is_ok());
        assert!(load(Some(&f), &Overrides::default()).is_err());
        // Inline and file together are refused.
        let both = "role = \"hub\"\npolicy_file = \"/etc/tether/policy.toml\"\n[policy]\nmode = \"warn\"\n";
        assert_eq!(
            check_str(both, "x").expect_err("both").problems()[0].key,
            "policy_file"
        );
    }

    #[test]
    fn files_section_is_checked() {
        let c = check_str(
            "role = \"target\"\nstate_dir = \"/var/lib/t\"\n[control]\nsocket = \"/run/t.sock\"\n[files]\nallowed_roots = [\"/srv\"]\n",
            "t",
        )
        .expect("valid");
        assert_eq!(c.files.allowed_roots, ["/srv"]);
        assert_eq!(c.files.max_file_size, 100 * 1024 * 1024);
        let text = "role = \"target\"\nstate_dir = \"/var/lib/t\"\n[control]\nsocket = \"/run/t.sock\"\n[files]\nallowed_roots = [\"srv\", \"/a/../b\"]\ndeny_paths = [\"(\"]\nmax_file_size = 0\nroots = 1\n";
        let err = check_str(text, "x").expect_err("invalid");
        let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        for k in [
            "files.allowed_roots",
            "files.deny_paths",
            "files.max_file_size",
            "files.roots",
        ] {
            assert!(keys.contains(&k), "missing {k}: {:#?}", err.problems());
        }
    }

    #[test]
    fn relative_paths_in_a_file_mean_its_directory_and_flags_mean_the_cwd() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("conf");
        std::fs::create_dir_all(&conf).expect("mkdir");
        std::fs::write(conf.join("policy.toml"), "[policy]\nmode = \"warn\"\n").expect("policy");
        let f = conf.join("relay.toml");
        std::fs::write(
            &f,
            "role = \"relay\"\nstate_dir = \"state\"\npolicy_file = \"./policy.toml\"\n\
             plugins_manifest = \"plugins/plugins.toml\"\n\
             [control]\nsocket = \"run/t.sock\"\n[ssh]\nhost_key_file = \"keys/host.pub\"\n\
             [vault]\nkey_file = \"vault.key\"\ncredentials_dir = \"creds\"\n\
             [relay]\ntls_cert = \"tls/cert.pem\"\ntls_key = \"tls/key.pem\"\nallowlist = \"allowed\"\n\
             [files]\nallowed_roots = [\"srv\", \"/abs\"]\n",
        )
        .expect("write");
        let c = load(Some(&f), &Overrides::default()).expect("valid");
        assert_eq!(c.state_dir, conf.join("state"));
        assert_eq!(c.policy_file, Some(conf.join("policy.toml")));
        assert_eq!(c.plugins_manifest, Some(conf.join("plugins/plugins.toml")));
        assert_eq!(c.control.socket, conf.join("run/t.sock"));
        assert_eq!(c.ssh.host_key_file, conf.join("keys/host.pub"));
        assert_eq!(c.vault.key_file, Some(conf.join("vault.key")));
        assert_eq!(c.vault.credentials_dir, Some(conf.join("creds")));
        assert_eq!(c.relay.tls_cert, Some(conf.join("tls/cert.pem")));
        assert_eq!(c.relay.tls_key, Some(conf.join("tls/key.pem")));
        assert_eq!(c.relay.allowlist, Some(conf.join("allowed")));
        let srv = conf.join("srv").display().to_string();
        assert_eq!(c.files.allowed_roots, [srv.as_str(), "/abs"]);
        // The same through check_file and a reload.
        let checked = check_file(&f).expect("valid");
        assert_eq!(checked.state_dir, c.state_dir);
        let reloaded = load_for_reload(Some(&f), &Overrides::default()).expect("valid");
        assert_eq!(reloaded.vault.key_file, c.vault.key_file);
        // Flags are relative to the working directory they were typed in.
        let o = Overrides {
            state_dir: Some("flag-state".into()),
            ..Overrides::default()
        }
        .with_socket(Some("flag.sock".into()));
        let c = load(Some(&f), &o).expect("valid");
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(c.state_dir, cwd.join("flag-state"));
        assert_eq!(c.control.socket, cwd.join("flag.sock"));
        // Text without a file has no directory: a relative path stays a problem.
        let err = check_str("role = \"hub\"\nstate_dir = \"state\"\n", "x").expect_err("rel");
        assert_eq!(err.problems()[0].key, "state_dir");
        // A problem names the resolved path.
        std::fs::write(
            &f,
            "role = \"hub\"\n[files]\nallowed_roots = [\"a/../b\"]\n",
        )
        .expect("write");
        let err = check_file(&f).expect_err("dotdot");
        let shown = err.to_string();
        assert!(shown.contains(&conf.display().to_string()), "{shown}");
    }

    #[test]
    fn missing_role_is_reported() {
        let err = check_str("", "x").expect_err("role required");
        assert_eq!(err.problems()[0].key, "role");
    }

    #[test]
    fn overrides_win() {
        let mut o = Overrides {
            role: Some(DaemonRole::Target),
            ..Overrides::default()
        };
        o = o.with_socket(Some("/tmp/o.sock".into()));
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "role = \"hub\"\n[control]\nsocket = \"/tmp/file.sock\"\n",
        )
        .expect("write");
        let c = load(Some(&f), &o).expect("valid");
        assert_eq!(c.role, Some(DaemonRole::Target));
        assert_eq!(c.control.socket, PathBuf::from("/tmp/o.sock"));
    }

    #[test]
    fn unreadable_file_is_a_read_error() {
        let err = check_file(Path::new("/nonexistent/tetherd.toml")).expect_err("missing");
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/tetherd.toml"));
    }
}
