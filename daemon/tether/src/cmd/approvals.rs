//! `tether approvals list|show|approve|deny`, and the wait `tether exec` does for a decision.
//!
//! An approval request is made when the policy says `require-approval` for a command; another
//! user (never the requester, admins and root included) approves or denies it here. `approve
//! --for 1h [--allow-pattern RE] [--allow-hosts SEL]` grants a scoped allowance instead of a
//! single use: the same requester may run commands matching RE (whole command; default: exactly
//! the approved one) on those hosts (default: the approved ones; never others) until it ends.
//! Exit codes: 0 done, 2 refused (self-approval, wrong state, expired, not eligible, usage).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::Subcommand;
use tether_api::{
    AllowanceRequest, ApprovalInfo, ApprovalRef, ApprovalsApprove, ApprovalsDeny, ApprovalsList,
    ApprovalsQuery, ApprovalsShow, ApproveRequest, DenyRequest,
};

use crate::error::CliError;
use crate::global::Global;
use crate::output;
use crate::table::Table;

/// `tether approvals ...`
#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Approval requests, newest first.
    List {
        /// Only this state: pending, granted, denied, expired, used, revoked.
        #[arg(long)]
        state: Option<String>,
        /// Only exec or access requests.
        #[arg(long)]
        kind: Option<String>,
    },
    /// One request: what, who, why, the quorum and the reviews.
    Show {
        /// The request (apr-…).
        id: String,
    },
    /// Approve a request (you must not be its requester).
    Approve {
        /// The request (apr-…).
        id: String,
        /// Why (kept in the audit log).
        #[arg(long)]
        comment: Option<String>,
        /// Grant an allowance: commands matching this regular expression (the whole command)
        /// may run without a new approval. Needs --for.
        #[arg(long, value_name = "REGEX", requires = "ttl")]
        allow_pattern: Option<String>,
        /// Grant an allowance on these hosts (a selector; each host must be one of the
        /// request's). Needs --for.
        #[arg(long, value_name = "SEL", requires = "ttl")]
        allow_hosts: Option<String>,
        /// Grant an allowance lasting this long (e.g. 30m, 1h) instead of a single use.
        #[arg(long = "for", id = "ttl", value_name = "DURATION")]
        ttl: Option<String>,
    },
    /// Deny a request (or withdraw your own).
    Deny {
        /// The request (apr-…).
        id: String,
        /// Why.
        #[arg(long)]
        comment: Option<String>,
    },
}

pub async fn run(global: &Global, cmd: ApprovalsCommand) -> Result<u8, CliError> {
    let client = global.client();
    let one = match cmd {
        ApprovalsCommand::List { state, kind } => {
            let out = client
                .call::<ApprovalsList>(&ApprovalsQuery { state, kind })
                .await?;
            if global.json {
                output::json(&out);
            } else {
                print_list(&out.approvals);
            }
            return Ok(0);
        }
        ApprovalsCommand::Show { id } => client.call::<ApprovalsShow>(&ApprovalRef { id }).await?,
        ApprovalsCommand::Approve {
            id,
            comment,
            allow_pattern,
            allow_hosts,
            ttl,
        } => {
            let allowance = match ttl {
                None => None,
                Some(t) => Some(AllowanceRequest {
                    pattern: allow_pattern,
                    hosts: allow_hosts,
                    ttl_secs: secs(&t, "--for")?,
                }),
            };
            client
                .call::<ApprovalsApprove>(&ApproveRequest {
                    id,
                    comment,
                    allowance,
                })
                .await?
        }
        ApprovalsCommand::Deny { id, comment } => {
            client
                .call::<ApprovalsDeny>(&DenyRequest { id, comment })
                .await?
        }
    };
    if global.json {
        output::json(&one);
    } else {
        print!("{}", show(&one));
    }
    Ok(0)
}

/// A duration flag in whole seconds.
pub(crate) fn secs(text: &str, flag: &str) -> Result<u64, CliError> {
    super::exec::parse_duration_ms(text)
        .map(|ms| ms.div_ceil(1000))
        .ok_or_else(|| {
            CliError::Usage(format!(
                "{flag} {text:?} is not a duration; write e.g. 90s, 30m or 2h"
            ))
        })
}

/// What an approval is for, in a few words.
pub(crate) fn what(a: &ApprovalInfo) -> String {
    match (&a.command, a.role) {
        (Some(cmd), _) => format!("{cmd:?} on {}", a.hosts.join(",")),
        (None, Some(role)) => format!(
            "role {role} for {}",
            output::duration(a.duration_secs.unwrap_or(0))
        ),
        _ => String::new(),
    }
}

fn quorum(a: &ApprovalInfo) -> String {
    let approvals = a.reviews.iter().filter(|r| r.decision == "approve").count();
    let needed: u32 = a.quorum.iter().map(|q| q.count).sum();
    format!("{approvals}/{needed}")
}

fn print_list(list: &[ApprovalInfo]) {
    if list.is_empty() {
        println!("no approval requests");
        return;
    }
    let now = output::now_unix();
    let mut t = Table::new(&["ID", "STATE", "REQUESTER", "WHAT", "QUORUM", "EXPIRES"]);
    for a in list {
        t.row([
            a.id.clone(),
            a.state.clone(),
            a.requester.user.clone(),
            what(a),
            quorum(a),
            output::relative(a.grant_expires_at.unwrap_or(a.expires_at), now),
        ]);
    }
    t.print();
}

/// The text form of one request.
pub(crate) fn show(a: &ApprovalInfo) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "{} ({}, {})", a.id, a.kind, a.state);
    let _ = writeln!(
        s,
        "  requester: {} (uid {})",
        a.requester.user, a.requester.uid
    );
    let _ = writeln!(s, "  what:      {}", what(a));
    let _ = writeln!(s, "  reason:    {}", a.reason);
    let q: Vec<String> = a
        .quorum
        .iter()
        .map(|q| format!("{} × {}", q.count, q.role))
        .collect();
    let _ = writeln!(
        s,
        "  quorum:    {} ({})",
        q.join(" + "),
        if a.quorum_met { "met" } else { "not met" }
    );
    let _ = writeln!(s, "  expires:   {}", output::when(a.expires_at));
    for r in &a.reviews {
        let _ = writeln!(
            s,
            "  review:    {} by {} ({}){}",
            r.decision,
            r.reviewer.user,
            r.role,
            r.comment
                .as_deref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default()
        );
    }
    if let Some(al) = &a.allowance {
        let _ = writeln!(
            s,
            "  allowance: /{}/ on {} until {}",
            al.pattern,
            al.hosts.join(","),
            output::when(al.expires_at)
        );
    }
    if let Some(t) = a.grant_expires_at {
        let _ = writeln!(s, "  role until: {}", output::when(t));
    }
    if let Some(t) = a.used_at {
        let _ = writeln!(s, "  used:      {}", output::when(t));
    }
    let _ = writeln!(s, "  binding:   sha256:{}", a.binding);
    s
}

/// How a wait for a decision ended.
pub(crate) enum Decision {
    /// Granted: the request may be sent again with the id.
    Granted,
    /// Denied or expired (the record says which).
    Refused(Box<ApprovalInfo>),
}

/// Waits for approval `id` to be decided, polling it every second with a live status line on
/// stderr (rewritten in place on a terminal, one line per change otherwise).
pub(crate) async fn wait(global: &Global, id: &str) -> Result<Decision, CliError> {
    let client = global.client();
    let tty = std::io::stderr().is_terminal();
    let mut last = String::new();
    loop {
        let a = client
            .call::<ApprovalsShow>(&ApprovalRef { id: id.to_owned() })
            .await?;
        let now = output::now_unix();
        let line = format!(
            "waiting for approval {id}: {}, {} approvals, expires {}",
            a.state,
            quorum(&a),
            output::relative(a.expires_at, now)
        );
        if line != last {
            let mut err = std::io::stderr().lock();
            if tty {
                let _ = write!(err, "\r\x1b[2K{line}");
            } else {
                let _ = writeln!(err, "{line}");
            }
            let _ = err.flush();
            last = line;
        }
        match a.state.as_str() {
            "pending" => {}
            "granted" => {
                if tty {
                    eprintln!();
                }
                return Ok(Decision::Granted);
            }
            _ => {
                if tty {
                    eprintln!();
                }
                return Ok(Decision::Refused(Box::new(a)));
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
