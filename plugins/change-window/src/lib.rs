//! `change-window`: a Tether policy plugin that denies writes outside maintenance windows,
//! unless the request carries a change ticket matching a pattern. Everything else abstains.
//!
//! Config (`[plugins.change-window.config]` in `plugins.toml`, all times UTC):
//! - `windows`: `"Sat 02:00-06:00,Sun 02:00-06:00"`; a window may run past midnight (`Fri 22:00-02:00`).
//! - `write_commands`: comma-separated commands that count as writes: a program name and
//!   optionally its subcommand (default
//!   `systemctl restart,systemctl stop,systemctl start,apt,apt-get,dnf,yum,deploy`). They are
//!   matched against every simple command the host parsed (`tether:plugin@0.2.0`), so chaining,
//!   paths (`/usr/bin/systemctl`), options (`--no-block`) and wrappers (`env`, `sudo`) don't
//!   hide a write.
//! - `ticket_pattern`: a glob where `*` matches anything (default `CHG-*`).
//!
//! The decision is the pure function [`decide`]; `evaluate` only reads the config and the clock.
use tether_plugin_sdk::host::{clock, config, log};
use tether_plugin_sdk::policy::{
    Command, PolicyHook, Request, RequestKind, Verdict, export_policy,
};
use tether_plugin_sdk::time::{Timestamp, Weekday};

const DEFAULT_WRITE_COMMANDS: &str =
    "systemctl restart,systemctl stop,systemctl start,apt,apt-get,dnf,yum,deploy";
const MINUTES_PER_WEEK: u32 = 7 * 1440;

/// The plugin's settings, parsed from its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Weekly windows as `[start, end)` minute-of-week ranges (end may exceed one week: wraps).
    pub windows: Vec<(u32, u32)>,
    /// Command prefixes that count as writes.
    pub write_commands: Vec<String>,
    /// Glob a ticket id must match.
    pub ticket_pattern: String,
}

/// Parses `"Sat 02:00-06:00,Sun 02:00-06:00"` into minute-of-week ranges.
pub fn parse_windows(spec: &str) -> Result<Vec<(u32, u32)>, String> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || format!("bad window {item:?}: expected like \"Sat 02:00-06:00\"");
        let (day, span) = item.split_once(' ').ok_or_else(bad)?;
        let day = Weekday::parse(day).ok_or_else(bad)?;
        let (from, to) = span.trim().split_once('-').ok_or_else(bad)?;
        let (from, to) = (hhmm(from).ok_or_else(bad)?, hhmm(to).ok_or_else(bad)?);
        let start = u32::from(day.index()) * 1440 + from;
        // A window ending at or before its start runs past midnight into the next day.
        let end = start - from + to + if to <= from { 1440 } else { 0 };
        out.push((start, end));
    }
    Ok(out)
}

/// Minutes after midnight for `HH:MM` (`24:00` allowed as an end).
fn hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
}

impl Settings {
    /// Reads the settings from config values (`None` = not set: use the default).
    pub fn from_config(
        windows: Option<String>,
        commands: Option<String>,
        pattern: Option<String>,
    ) -> Result<Self, String> {
        Ok(Settings {
            windows: parse_windows(&windows.unwrap_or_default())?,
            write_commands: commands
                .as_deref()
                .unwrap_or(DEFAULT_WRITE_COMMANDS)
                .split(',')
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty())
                .collect(),
            ticket_pattern: pattern.unwrap_or_else(|| "CHG-*".to_owned()),
        })
    }

    /// Whether `now` falls in a maintenance window.
    pub fn in_window(&self, now: Timestamp) -> bool {
        let m = now.minute_of_week();
        self.windows
            .iter()
            .any(|&(s, e)| (s..e).contains(&m) || (s..e).contains(&(m + MINUTES_PER_WEEK)))
    }

    /// Whether `req` changes the target: a file write, or an exec/session any of whose simple
    /// commands (as the host parsed them: after `;`, `&&`, pipes, inside `sh -c` strings and
    /// behind wrappers such as `sudo` or `env`) is a write command. A command the host could
    /// not parse counts as a write (we can't tell, so the window applies).
    pub fn is_write(&self, req: &Request) -> bool {
        match req.kind {
            RequestKind::FileWrite => return true,
            RequestKind::FileRead => return false,
            RequestKind::Exec | RequestKind::Session => {}
        }
        if req.unparsable.is_some() {
            return true;
        }
        req.commands().iter().any(|c| self.command_writes(c))
    }

    /// Whether one simple command matches a write prefix: the prefix's first word is the
    /// program's base name (`/usr/bin/systemctl` is `systemctl`; `apt` also covers `apt-get`
    /// only when listed), and its other words appear in order among the non-option arguments
    /// (`systemctl --no-block restart x` is `systemctl restart`).
    pub fn command_writes(&self, c: &Command) -> bool {
        let program = c.program();
        if program.is_empty() {
            return false;
        }
        let operands: Vec<&str> = c
            .args()
            .iter()
            .map(String::as_str)
            .filter(|a| !a.starts_with('-'))
            .collect();
        self.write_commands.iter().any(|prefix| {
            let mut words = prefix.split_whitespace();
            if words.next() != Some(program) {
                return false;
            }
            let rest: Vec<&str> = words.collect();
            rest.is_empty() || operands.windows(rest.len()).any(|w| w == rest.as_slice())
        })
    }
}

/// Glob match where `*` matches any run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            let Some(rest) = text.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .filter(|&i| rest.is_char_boundary(i))
                .any(|i| glob_match(tail, &rest[i..]))
        }
    }
}

/// The plugin's decision for `req` at `now`.
pub fn decide(req: &Request, now: Timestamp, settings: &Settings) -> Verdict {
    if !settings.is_write(req) || settings.in_window(now) {
        return Verdict::Abstain;
    }
    match req.ticket() {
        Some(t) if glob_match(&settings.ticket_pattern, t) => Verdict::Abstain,
        _ => Verdict::deny(format!(
            "writes outside maintenance windows need a change ticket matching {} (it is {} {:02}:{:02} UTC)",
            settings.ticket_pattern,
            now.weekday(),
            now.hour(),
            now.minute()
        )),
    }
}

/// The plugin: reads its config and the host clock, then calls [`decide`].
pub struct ChangeWindow;

impl PolicyHook for ChangeWindow {
    fn evaluate(req: Request) -> Verdict {
        let settings = Settings::from_config(
            config::get("windows"),
            config::get("write_commands"),
            config::get("ticket_pattern"),
        );
        match settings {
            Ok(settings) => decide(&req, clock::now(), &settings),
            Err(why) => {
                // Fail closed: a broken config must not silently allow writes.
                log::error(&format!("change-window config: {why}"));
                Verdict::deny(format!("change-window is misconfigured: {why}"))
            }
        }
    }
}

export_policy!(ChangeWindow);

#[cfg(test)]
mod tests;
