//! `tether exec [-H SEL] [options] -- CMD`: run a command on many hosts.
//!
//! Output is shown live, one complete line at a time prefixed by the host's name (lines of
//! different hosts never interleave mid-line); `--group` instead folds hosts with identical
//! output under one compact host list (`web[01-16]`). `--json` prints the daemon's NDJSON events
//! as they arrive. A summary table (host, exit, duration, bytes) goes to stderr. Exit code 0
//! when every host exited 0, 1 when any failed or was skipped, 2 when the request was refused
//! (usage, unknown hosts, policy, an approval denied or expired, or still pending with
//! `--no-wait`), 130 on Ctrl-C (the remote commands are cancelled: closing the request makes the
//! hub signal them and close their channels).
//!
//! When the policy says `require-approval`, the hub answers with an approval request's id; `exec`
//! then waits for the decision with a live status line on stderr and, once it is granted, sends
//! the same request again with the id (it runs exactly once). `--no-wait` prints the id on stdout
//! (`{"approval":ID,"state":"pending"}` with `--json`) and exits 2; run the same command later
//! with `--approval ID`.
//!
//! With more than one host and stderr a terminal, a progress bar on stderr counts finished
//! hosts (ok / failed / skipped so far); output lines are printed above it, and it is cleared
//! before the summary. It is never drawn with `--json`, for one host, or when stderr is a pipe
//! or file.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

use clap::Args;
use tether_api::{Exec, ExecEvent, ExecRequest, ExecStream, ExecSummary};

use crate::error::CliError;
use crate::global::Global;
use crate::output;

/// `tether exec` arguments.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Hosts to run on: host:a,b  group:g  tag:k=v  all  ~regex, joined with `,`, negated
    /// with `!`. A bare name means that host.
    #[arg(short = 'H', long = "hosts", value_name = "SEL", default_value = "all")]
    pub selector: String,
    /// Hosts running at once.
    #[arg(long, default_value_t = 10)]
    pub concurrency: u32,
    /// Per host: the longest the command may run before it is cancelled (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub timeout: String,
    /// Per host: the longest opening its SSH connection may take when none is pooled
    /// (default: the hub's `[ssh] connect_timeout`, 5s unless configured).
    #[arg(long, value_name = "DURATION")]
    pub connect_timeout: Option<String>,
    /// Run on this many hosts first; stop if any of them fails.
    #[arg(long, value_name = "N")]
    pub canary: Option<u32>,
    /// Stop starting hosts once N hosts (or P% of them) have failed.
    #[arg(long, value_name = "N|P%")]
    pub max_failures: Option<String>,
    /// Bytes of output kept per host and stream; the rest is dropped (with a note).
    #[arg(long, value_name = "BYTES")]
    pub output_limit: Option<u64>,
    /// A change/ticket id for policy plugins.
    #[arg(long, value_name = "ID")]
    pub ticket: Option<String>,
    /// Use this granted approval (apr-…): the command and hosts must be exactly as approved.
    #[arg(long, value_name = "ID")]
    pub approval: Option<String>,
    /// When an approval is needed, print its id and exit 2 instead of waiting.
    #[arg(long)]
    pub no_wait: bool,
    /// Fold hosts with identical output into one block (like `dshbak -c`).
    #[arg(long)]
    pub group: bool,
    /// The command (after `--`), run by /bin/sh -c on each host.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `30s`, `500ms`, `2m`, `1h`, or plain seconds, in milliseconds.
pub(crate) fn parse_duration_ms(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, unit) = t.split_at(
        t.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len()),
    );
    let n: f64 = num.parse().ok()?;
    let factor = match unit {
        "ms" => 1.0,
        "" | "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    let ms = n * factor;
    (ms.is_finite() && ms >= 1.0).then_some(ms as u64)
}

/// A selector from `-H`: a bare name (or comma list of names) means `host:`.
pub(crate) fn selector(s: &str) -> String {
    let bare = !s.is_empty()
        && s.split(',').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        })
        && s != "all";
    if bare {
        format!("host:{s}")
    } else {
        s.to_owned()
    }
}

fn request(args: &ExecArgs) -> Result<ExecRequest, CliError> {
    let ms = |v: &str, flag: &str| {
        parse_duration_ms(v).ok_or_else(|| {
            CliError::Usage(format!(
                "{flag} {v:?} is not a duration; write e.g. 30s, 500ms or 2m"
            ))
        })
    };
    let (max_failures, max_failures_percent) = match args.max_failures.as_deref() {
        None => (None, None),
        Some(v) => match v.strip_suffix('%') {
            Some(p) => (
                None,
                Some(p.parse::<u32>().ok().filter(|p| *p <= 100).ok_or_else(|| {
                    CliError::Usage(format!(
                        "--max-failures {v:?}: write a number or a percentage like 10%"
                    ))
                })?),
            ),
            None => (
                Some(v.parse::<u32>().map_err(|_| {
                    CliError::Usage(format!(
                        "--max-failures {v:?}: write a number or a percentage like 10%"
                    ))
                })?),
                None,
            ),
        },
    };
    Ok(ExecRequest {
        selector: selector(&args.selector),
        command: args.command.join(" "),
        concurrency: Some(args.concurrency),
        timeout_ms: Some(ms(&args.timeout, "--timeout")?),
        connect_timeout_ms: args
            .connect_timeout
            .as_deref()
            .map(|v| ms(v, "--connect-timeout"))
            .transpose()?,
        canary: args.canary,
        max_failures,
        max_failures_percent,
        output_limit: args.output_limit,
        ticket: args.ticket.clone(),
        approval: args.approval.clone(),
    })
}

/// One host's row of the summary.
#[derive(Debug, Default, Clone)]
struct Row {
    exit: String,
    duration_ms: Option<u64>,
    bytes: u64,
    dropped: u64,
}

/// Prints events as they come: complete lines prefixed by host, or grouped at the end.
struct Printer {
    group: bool,
    colour: bool,
    width: usize,
    /// Partial lines per (host, stream).
    partial: BTreeMap<(String, bool), String>,
    /// Everything per host, for `--group`: (stdout, stderr).
    whole: BTreeMap<String, (String, String)>,
    rows: BTreeMap<String, Row>,
    order: Vec<String>,
    summary: Option<ExecSummary>,
    /// Whether stderr is a terminal (a progress bar may be drawn there).
    tty: bool,
    /// The progress bar, once the hosts are known ([`progress_bar`]).
    bar: indicatif::ProgressBar,
    /// Finished hosts so far: ok, failed, skipped.
    tally: (u64, u64, u64),
}

/// A progress bar over `hosts` hosts on stderr: drawn only when there is more than one host and
/// stderr is a terminal, hidden otherwise.
fn progress_bar(hosts: usize, tty: bool) -> indicatif::ProgressBar {
    if hosts < 2 || !tty {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(hosts as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} [{bar:30}] {pos}/{len} hosts  {msg}  {elapsed}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

const COLOURS: [&str; 6] = ["36", "33", "35", "32", "34", "31"];

impl Printer {
    fn prefix(&self, host: &str) -> String {
        let idx = self.order.iter().position(|h| h == host).unwrap_or(0);
        if self.colour {
            format!(
                "\x1b[{}m{host:<w$}\x1b[0m | ",
                COLOURS[idx % COLOURS.len()],
                w = self.width
            )
        } else {
            format!("{host:<w$} | ", w = self.width)
        }
    }

    fn line(&self, host: &str, stderr: bool, text: &str) {
        let line = format!("{}{text}\n", self.prefix(host));
        // Above the bar (a no-op wrapper when it is hidden).
        self.bar.suspend(|| {
            if stderr {
                let _ = std::io::stderr().write_all(line.as_bytes());
            } else {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(line.as_bytes());
                let _ = out.flush();
            }
        });
    }

    /// One more host finished: `0` ok, `1` failed, `2` skipped.
    fn finished(&mut self, how: usize) {
        match how {
            0 => self.tally.0 += 1,
            1 => self.tally.1 += 1,
            _ => self.tally.2 += 1,
        }
        self.bar.inc(1);
        let (ok, failed, skipped) = self.tally;
        self.bar
            .set_message(format!("{ok} ok, {failed} failed, {skipped} skipped"));
    }

    fn output(&mut self, host: &str, stream: ExecStream, data: &str) {
        let stderr = stream == ExecStream::Stderr;
        if self.group {
            let e = self.whole.entry(host.to_owned()).or_default();
            if stderr {
                e.1.push_str(data)
            } else {
                e.0.push_str(data)
            }
            return;
        }
        let key = (host.to_owned(), stderr);
        let mut buf = self.partial.remove(&key).unwrap_or_default();
        buf.push_str(data);
        while let Some(i) = buf.find('\n') {
            let rest = buf.split_off(i + 1);
            self.line(host, stderr, buf.trim_end_matches('\n'));
            buf = rest;
        }
        if !buf.is_empty() {
            self.partial.insert(key, buf);
        }
    }

    fn flush(&mut self, host: &str) {
        for stderr in [false, true] {
            if let Some(rest) = self.partial.remove(&(host.to_owned(), stderr)) {
                self.line(host, stderr, &rest);
            }
        }
    }

    fn event(&mut self, event: ExecEvent) {
        match event {
            ExecEvent::Accepted { hosts } => {
                self.width = hosts.iter().map(String::len).max().unwrap_or(0);
                self.bar = progress_bar(hosts.len(), self.tty);
                self.order = hosts;
            }
            ExecEvent::Started { .. } => {}
            ExecEvent::Output { host, stream, data } => self.output(&host, stream, &data),
            ExecEvent::Exit {
                host,
                code,
                signal,
                duration_ms,
                stdout_bytes,
                stderr_bytes,
                dropped_bytes,
            } => {
                self.flush(&host);
                if dropped_bytes > 0 && !self.group {
                    self.line(&host, true, &format!("[tether: {dropped_bytes} bytes of output dropped beyond the output limit]"));
                }
                self.finished(usize::from(code != Some(0)));
                let exit = match (code, signal) {
                    (Some(c), _) => c.to_string(),
                    (None, Some(s)) => format!("signal {s}"),
                    (None, None) => "?".to_owned(),
                };
                self.rows.insert(
                    host,
                    Row {
                        exit,
                        duration_ms: Some(duration_ms),
                        bytes: stdout_bytes + stderr_bytes,
                        dropped: dropped_bytes,
                    },
                );
            }
            ExecEvent::Error {
                host,
                kind,
                message,
                duration_ms,
            } => {
                self.flush(&host);
                self.finished(1);
                self.line(&host, true, &format!("[tether: {message}]"));
                self.rows.insert(
                    host,
                    Row {
                        exit: kind,
                        duration_ms: Some(duration_ms),
                        ..Row::default()
                    },
                );
            }
            ExecEvent::Skipped { host, reason: _ } => {
                self.finished(2);
                self.rows.insert(
                    host,
                    Row {
                        exit: "skipped".to_owned(),
                        ..Row::default()
                    },
                );
            }
            ExecEvent::Summary(s) => self.summary = Some(s),
        }
    }

    fn finish(&mut self) {
        self.bar.finish_and_clear();
        if self.group {
            let mut blocks: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
            for host in &self.order {
                let (out, err) = self.whole.get(host).cloned().unwrap_or_default();
                let exit = self
                    .rows
                    .get(host)
                    .map(|r| r.exit.clone())
                    .unwrap_or_default();
                blocks
                    .entry((out, err, exit))
                    .or_default()
                    .push(host.clone());
            }
            let mut out = std::io::stdout().lock();
            for ((stdout, stderr, exit), hosts) in blocks {
                let _ = writeln!(
                    out,
                    "---------------- {} (exit {exit}) ----------------",
                    compact_hosts(&hosts)
                );
                let _ = out.write_all(stdout.as_bytes());
                if !stdout.is_empty() && !stdout.ends_with('\n') {
                    let _ = writeln!(out);
                }
                let _ = out.write_all(stderr.as_bytes());
                if !stderr.is_empty() && !stderr.ends_with('\n') {
                    let _ = writeln!(out);
                }
            }
        }
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "\n{:<w$}  {:<12} {:>10} {:>10}",
            "HOST",
            "EXIT",
            "DURATION",
            "BYTES",
            w = self.width.max(4)
        );
        for host in &self.order {
            let Some(r) = self.rows.get(host) else {
                continue;
            };
            let dur = r.duration_ms.map_or_else(
                || "-".to_owned(),
                |ms| format!("{:.2}s", ms as f64 / 1000.0),
            );
            let bytes = if r.dropped > 0 {
                format!("{} ({} dropped)", r.bytes, r.dropped)
            } else {
                r.bytes.to_string()
            };
            let _ = writeln!(
                err,
                "{host:<w$}  {:<12} {dur:>10} {bytes:>10}",
                r.exit,
                w = self.width.max(4)
            );
        }
        if let Some(s) = &self.summary {
            let _ = writeln!(
                err,
                "{} ok, {} failed, {} skipped of {} hosts in {:.2}s{}",
                s.ok,
                s.failed,
                s.skipped,
                s.hosts,
                s.duration_ms as f64 / 1000.0,
                s.aborted
                    .as_deref()
                    .map(|a| format!(" (stopped: {a})"))
                    .unwrap_or_default()
            );
        }
    }
}

/// `web01, web02, web03, db1` → `db1,web[01-03]`: hosts with the same prefix and a numeric
/// suffix of the same width fold into ranges.
pub(crate) fn compact_hosts(hosts: &[String]) -> String {
    let mut groups: BTreeMap<(String, usize), Vec<u64>> = BTreeMap::new();
    let mut plain: Vec<String> = Vec::new();
    for h in hosts {
        let digits = h.chars().rev().take_while(char::is_ascii_digit).count();
        if digits == 0 || digits == h.len() {
            plain.push(h.clone());
            continue;
        }
        let (prefix, num) = h.split_at(h.len() - digits);
        match num.parse::<u64>() {
            Ok(n) => groups
                .entry((prefix.to_owned(), digits))
                .or_default()
                .push(n),
            Err(_) => plain.push(h.clone()),
        }
    }
    let mut parts = plain;
    for ((prefix, width), mut nums) in groups {
        nums.sort_unstable();
        nums.dedup();
        if nums.len() == 1 {
            parts.push(format!("{prefix}{:0width$}", nums[0]));
            continue;
        }
        let mut ranges: Vec<String> = Vec::new();
        let mut i = 0;
        while i < nums.len() {
            let mut j = i;
            while j + 1 < nums.len() && nums[j + 1] == nums[j] + 1 {
                j += 1;
            }
            ranges.push(if i == j {
                format!("{:0width$}", nums[i])
            } else {
                format!("{:0width$}-{:0width$}", nums[i], nums[j])
            });
            i = j + 1;
        }
        parts.push(format!("{prefix}[{}]", ranges.join(",")));
    }
    parts.sort();
    parts.join(",")
}

pub async fn run(global: &Global, args: ExecArgs) -> Result<u8, CliError> {
    let mut req = request(&args)?;
    let id = match run_once(global, &args, &req).await {
        Err(CliError::Client(tether_api::ClientError::Api { error, .. }))
            if error.code == "approval_required" && error.approval.is_some() =>
        {
            error.approval.unwrap_or_default()
        }
        other => return other,
    };
    if args.no_wait {
        if global.json {
            output::json(&serde_json::json!({"approval": id, "state": "pending"}));
        } else {
            println!("{id}");
            eprintln!(
                "tether: approval {id} is pending; once another user approved it (`tether approvals approve {id}`), run the same command with --approval {id}"
            );
        }
        return Ok(2);
    }
    eprintln!(
        "tether: the policy needs an approval for this; another user can approve it with `tether approvals approve {id}`"
    );
    let decision = tokio::select! {
        d = super::approvals::wait(global, &id) => d?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ninterrupted: approval {id} stays pending; run the same command with --approval {id} once it is granted");
            return Ok(130);
        }
    };
    match decision {
        super::approvals::Decision::Granted => {
            req.approval = Some(id);
            run_once(global, &args, &req).await
        }
        super::approvals::Decision::Refused(a) => {
            let by = a
                .reviews
                .iter()
                .rev()
                .find(|r| r.decision == "deny")
                .map(|r| {
                    format!(
                        " by {}{}",
                        r.reviewer.user,
                        r.comment
                            .as_deref()
                            .map(|c| format!(": {c}"))
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            eprintln!(
                "tether: approval {} was {}{by}; nothing was run",
                a.id, a.state
            );
            Ok(2)
        }
    }
}

/// Sends `req` once and shows its events.
async fn run_once(global: &Global, args: &ExecArgs, req: &ExecRequest) -> Result<u8, CliError> {
    let client = global.client();
    let mut printer = Printer {
        group: args.group,
        colour: std::io::stdout().is_terminal(),
        width: 0,
        partial: BTreeMap::new(),
        whole: BTreeMap::new(),
        rows: BTreeMap::new(),
        order: Vec::new(),
        summary: None,
        tty: std::io::stderr().is_terminal(),
        bar: indicatif::ProgressBar::hidden(),
        tally: (0, 0, 0),
    };
    let json = global.json;
    let mut summary: Option<ExecSummary> = None;
    let interrupt = tokio::signal::ctrl_c();
    let streamed = async {
        if json {
            client
                .stream_lines::<Exec>(req, |line| {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(line);
                    let _ = out.flush();
                    if let Ok(ExecEvent::Summary(s)) = serde_json::from_slice::<ExecEvent>(line) {
                        summary = Some(s);
                    }
                    true
                })
                .await
        } else {
            client
                .stream::<Exec>(req, |event| {
                    printer.event(event);
                    true
                })
                .await
        }
    };
    tokio::select! {
        r = streamed => r?,
        _ = interrupt => {
            printer.bar.finish_and_clear();
            eprintln!("\ninterrupted: the remote commands are being cancelled");
            return Ok(130);
        }
    }
    if !json {
        printer.finish();
        summary = printer.summary.take();
    }
    match summary {
        Some(s) if s.failed == 0 && s.skipped == 0 => Ok(0),
        Some(_) => Ok(1),
        None => Err(CliError::Internal(
            "the daemon ended the stream without a summary (did it stop?)".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("30s"), Some(30_000));
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("2m"), Some(120_000));
        assert_eq!(parse_duration_ms("1.5"), Some(1500));
        assert_eq!(parse_duration_ms("soon"), None);
        assert_eq!(parse_duration_ms("0s"), None);
    }

    #[test]
    fn compact_host_lists() {
        let hosts: Vec<String> = (1..=16)
            .map(|i| format!("web{i:02}"))
            .chain(["db1".to_owned(), "web20".to_owned()])
            .collect();
        assert_eq!(compact_hosts(&hosts), "db1,web[01-16,20]");
        assert_eq!(compact_hosts(&["a".to_owned()]), "a");
        assert_eq!(compact_hosts(&["t1".to_owned(), "t3".to_owned()]), "t[1,3]");
    }

    #[test]
    fn the_bar_is_drawn_only_for_several_hosts_on_a_terminal() {
        assert!(progress_bar(5, false).is_hidden());
        assert!(progress_bar(1, true).is_hidden());
        assert!(progress_bar(0, true).is_hidden());
    }

    #[test]
    fn bare_names_are_hosts() {
        assert_eq!(selector("web1"), "host:web1");
        assert_eq!(selector("web1,web2"), "host:web1,web2");
        assert_eq!(selector("all"), "all");
        assert_eq!(selector("group:web"), "group:web");
        assert_eq!(selector("!host:a"), "!host:a");
    }
}
