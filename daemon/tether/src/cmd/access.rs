//! `tether access request|approve|list|revoke`: just-in-time roles.
//!
//! `tether access request --role operator --for 2h --reason TEXT` asks for a role; someone who
//! holds it (or an admin), never you, runs `tether access approve ID`; the role is yours until
//! the grant ends, then gone without anyone acting (`tether status` shows it meanwhile). The
//! holder or an admin can end it early with `tether access revoke ID`.

use clap::Subcommand;
use tether_api::{
    AccessAsk, AccessList, AccessQuery, AccessRequest, AccessRevoke, ApprovalRef, ApprovalsApprove,
    ApproveRequest,
};
use tether_model::Role;

use super::approvals::{secs, show, what};
use crate::error::CliError;
use crate::global::Global;
use crate::output;
use crate::table::Table;

/// `tether access ...`
#[derive(Debug, Subcommand)]
pub enum AccessCommand {
    /// Ask for a role for a while.
    Request {
        /// The role: operator, auditor, admin, read_only.
        #[arg(long)]
        role: Role,
        /// How long once granted (e.g. 30m, 2h).
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why you need it (kept in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Approve someone's access request (you must hold the role, or be admin).
    Approve {
        /// The request (apr-…).
        id: String,
        /// Why.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Access requests and grants, newest first.
    List {
        /// Only this state: pending, granted, denied, expired, revoked.
        #[arg(long)]
        state: Option<String>,
    },
    /// End a granted role now (its holder or an admin).
    Revoke {
        /// The grant (apr-…).
        id: String,
    },
}

pub async fn run(global: &Global, cmd: AccessCommand) -> Result<u8, CliError> {
    let client = global.client();
    let one = match cmd {
        AccessCommand::Request {
            role,
            duration,
            reason,
        } => {
            let a = client
                .call::<AccessRequest>(&AccessAsk {
                    role,
                    duration_secs: secs(&duration, "--for")?,
                    reason,
                })
                .await?;
            if !global.json {
                println!(
                    "access request {} is {}: ask someone holding {role} (or an admin) to run `tether access approve {}`",
                    a.id, a.state, a.id
                );
                return Ok(0);
            }
            a
        }
        AccessCommand::Approve { id, comment } => {
            client
                .call::<ApprovalsApprove>(&ApproveRequest {
                    id,
                    comment,
                    allowance: None,
                })
                .await?
        }
        AccessCommand::List { state } => {
            let out = client.call::<AccessList>(&AccessQuery { state }).await?;
            if global.json {
                output::json(&out);
                return Ok(0);
            }
            if out.approvals.is_empty() {
                println!("no access requests");
                return Ok(0);
            }
            let now = output::now_unix();
            let mut t = Table::new(&["ID", "STATE", "HOLDER", "WHAT", "UNTIL"]);
            for a in &out.approvals {
                t.row([
                    a.id.clone(),
                    a.state.clone(),
                    a.requester.user.clone(),
                    what(a),
                    output::relative(a.grant_expires_at.unwrap_or(a.expires_at), now),
                ]);
            }
            t.print();
            return Ok(0);
        }
        AccessCommand::Revoke { id } => client.call::<AccessRevoke>(&ApprovalRef { id }).await?,
    };
    if global.json {
        output::json(&one);
    } else {
        print!("{}", show(&one));
    }
    Ok(0)
}
