//! `tether audit verify|tail|export|checkpoint` (admin and auditor). Every read is itself
//! recorded in the audit log as `audit.read`.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use tether_api::{
    AuditCheckpoint, AuditFollow, AuditFollowQuery, AuditRecord, AuditRecords, AuditRecordsQuery,
    AuditRotateKey, AuditVerify, Empty, RotateKeyRequest, VerifyRequest,
};

use crate::error::CliError;
use crate::global::Global;
use crate::output;
use crate::table::Table;

/// `tether audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain, HMACs, the signed head and the head counter kept outside
    /// state_dir. Exit 0 when intact and anchored; 1 when broken (the first broken seq and the
    /// kind of break are printed) or unanchored (intact, but nothing outside state_dir vouches
    /// for the log's length: a rollback of log and head together cannot be ruled out).
    Verify {
        /// Only verify day files from this UTC date on (YYYY-MM-DD).
        #[arg(long, value_name = "DATE")]
        from: Option<String>,
        /// A checkpoint exported earlier (`tether audit checkpoint --export > FILE`): prove the log
        /// still contains it (detects rollback of log and head together).
        #[arg(long, value_name = "FILE")]
        against: Option<PathBuf>,
    },
    /// Print recent records; with -f keep printing new ones until Ctrl-C.
    Tail(TailArgs),
    /// Export the log: as written (jsonl) or rendered for a SIEM (ocsf, ecs, cef, syslog).
    Export(crate::cmd::audit_export::ExportArgs),
    /// Print a fresh signed checkpoint (seq, hash, signature) to store off the box.
    Checkpoint {
        /// Print the portable text form (the default and only form today).
        #[arg(long)]
        export: bool,
    },
    /// Rotate the audit keys (admin): a new key epoch. A `key.rotated` record, MACed with the
    /// old key, names the new keys; later records use them; old keys stay in the vault so the
    /// whole chain keeps verifying. Without a flag both keys rotate.
    RotateKey {
        /// Rotate the HMAC key that MACs every record.
        #[arg(long)]
        hmac: bool,
        /// Rotate the Ed25519 key that signs the head.
        #[arg(long)]
        signing: bool,
    },
}

/// Arguments of `tether audit tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// How many recent records to show.
    #[arg(short = 'n', long, default_value_t = 20)]
    lines: usize,
    /// Keep following new records.
    #[arg(short, long)]
    follow: bool,
    /// Only these event types (repeatable; `enroll.*` matches a prefix).
    #[arg(long = "type", value_name = "TYPE")]
    types: Vec<String>,
    /// Only records about this host.
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
}

pub async fn run(global: &Global, cmd: AuditCommand) -> Result<u8, CliError> {
    let client = global.client();
    match cmd {
        AuditCommand::Verify { from, against } => {
            let against =
                match against {
                    None => None,
                    Some(p) => Some(std::fs::read_to_string(&p).map_err(|e| {
                        CliError::Usage(format!("cannot read {}: {e}", p.display()))
                    })?),
                };
            let out = client
                .call::<AuditVerify>(&VerifyRequest { from, against })
                .await?;
            let r = &out.report;
            if global.json {
                output::json(&out);
            } else if let Some(b) = &r.broken {
                let kind = serde_json::to_value(b.kind).unwrap_or_default();
                println!(
                    "audit log BROKEN at seq {}: {} ({}:{})",
                    b.seq,
                    kind.as_str().unwrap_or("?"),
                    b.file
                        .as_deref()
                        .map_or("?".into(), |f| f.display().to_string()),
                    b.line.map_or("null".to_owned(), |l| l.to_string())
                );
                println!("  {}", b.detail);
            } else {
                let verdict = if out.ok { "OK" } else { "UNANCHORED" };
                println!(
                    "audit log {verdict}: {} records in {} files (seq {}..{}), {:.1} MB/s",
                    r.records,
                    r.files,
                    r.first_seq.unwrap_or(0),
                    r.last_seq,
                    out.mb_per_s
                );
                if let Some(seq) = r.anchor_seq {
                    println!("  reaches the head counter kept outside state_dir (seq {seq})");
                }
                if let Some(why) = &r.unanchored {
                    println!(
                        "  the chain is intact, but nothing outside state_dir vouches for its length: {why}"
                    );
                    println!(
                        "  keep `tether audit checkpoint --export` output off the box and pass it with --against"
                    );
                }
                if let Some(seq) = r.checkpoint_seq {
                    println!("  contains the given checkpoint (seq {seq})");
                }
            }
            Ok(if out.ok { 0 } else { 1 })
        }
        AuditCommand::Tail(a) => {
            let q = AuditRecordsQuery {
                types: a.types.clone(),
                host: a.host.clone(),
                from: None,
                limit: Some(a.lines),
            };
            // The recent records (at most -n) as one aligned table; followed records line up
            // with it. --json prints every record as it came, one per line.
            let mut table =
                Table::new(&["SEQ", "TIME", "TYPE", "ACTOR", "HOST", "DATA"]).right(&[0]);
            client
                .stream_lines::<AuditRecords>(&q, |line| {
                    match record(global.json, line) {
                        Shown::Raw(text) => println!("{text}"),
                        Shown::Row(cells) => table.row(cells),
                        Shown::Nothing => {}
                    }
                    true
                })
                .await?;
            if !table.is_empty() {
                table.print();
            }
            if a.follow {
                let q = AuditFollowQuery {
                    types: a.types,
                    host: a.host,
                };
                let mut ended: Option<tether_api::ApiError> = None;
                let follow = client.stream_lines::<AuditFollow>(&q, |line| {
                    // The daemon ends a follow with an error line (role removed, log damaged).
                    if let Ok(e) = serde_json::from_slice::<tether_api::ErrorBody>(line) {
                        ended = Some(e.error);
                        return false;
                    }
                    match record(global.json, line) {
                        Shown::Raw(text) => println!("{text}"),
                        Shown::Row(cells) => println!("{}", table.follow_line(cells)),
                        Shown::Nothing => {}
                    }
                    let _ = std::io::stdout().flush();
                    true
                });
                tokio::select! {
                    r = follow => r?,
                    _ = tokio::signal::ctrl_c() => return Ok(130),
                }
                if let Some(e) = ended {
                    let text = if e.hint.is_empty() {
                        e.message
                    } else {
                        format!("{}\nhint: {}", e.message, e.hint)
                    };
                    return Err(if e.code == "forbidden" {
                        CliError::Usage(text)
                    } else {
                        CliError::Internal(text)
                    });
                }
            }
            Ok(0)
        }
        AuditCommand::Export(args) => crate::cmd::audit_export::run(global, args).await,
        AuditCommand::RotateKey { hmac, signing } => {
            let out = client
                .call::<AuditRotateKey>(&RotateKeyRequest { hmac, signing })
                .await?;
            if global.json {
                output::json(&out);
            } else {
                println!(
                    "audit keys rotated ({}): key epoch {} from the key.rotated record at seq {}",
                    out.rotated.join(" and "),
                    out.epoch,
                    out.seq
                );
                println!("  hmac key id:      {}", out.hmac_key_id);
                println!("  head signing key: {}", out.signing_key);
            }
            Ok(0)
        }
        AuditCommand::Checkpoint { export: _ } => {
            let text = client.call::<AuditCheckpoint>(&Empty {}).await?;
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            Ok(0)
        }
    }
}

/// How one NDJSON record of the log is shown.
enum Shown {
    /// As it came: with --json, or a line that is not a record.
    Raw(String),
    /// The cells of a table row: seq, time, type, actor, host, data.
    Row([String; 6]),
    /// A blank line.
    Nothing,
}

fn record(json: bool, line: &[u8]) -> Shown {
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end();
    if line.trim().is_empty() {
        return Shown::Nothing;
    }
    if json {
        return Shown::Raw(line.to_owned());
    }
    let Ok(r) = serde_json::from_str::<AuditRecord>(line) else {
        return Shown::Raw(line.to_owned());
    };
    let via = serde_json::to_value(r.actor.via).unwrap_or_default();
    Shown::Row([
        r.seq.to_string(),
        r.ts.to_string(),
        r.kind.to_string(),
        format!(
            "{}({}) via {}",
            r.actor.user,
            r.actor.role.map_or("no role", |role| role.as_str()),
            via.as_str().unwrap_or("?")
        ),
        r.host.unwrap_or_else(|| "-".to_owned()),
        r.data.to_string(),
    ])
}
