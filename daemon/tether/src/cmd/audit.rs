//! `tether audit verify|tail|export|checkpoint` (admin and auditor). Every read is itself
//! recorded in the audit log as `audit.read`.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use tether_control::client::segment;

use crate::cli::Global;
use crate::error::CliError;
use crate::output;

/// `tether audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain, HMACs and the signed head. Exit 0 when intact, 1 when broken
    /// (the first broken seq and the kind of break are printed).
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
    /// Export the log (as written, one JSON record per line).
    Export {
        /// Output format. More (ocsf, ecs, cef, syslog) arrive with SIEM export.
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        /// From this UTC date on (YYYY-MM-DD).
        #[arg(long, value_name = "DATE")]
        from: Option<String>,
        /// Only these event types (repeatable; `enroll.*` matches a prefix).
        #[arg(long = "type", value_name = "TYPE")]
        types: Vec<String>,
        /// Write to this file instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Print a fresh signed checkpoint (seq, hash, signature) to store off the box.
    Checkpoint {
        /// Print the portable text form (the default and only form today).
        #[arg(long)]
        export: bool,
    },
}

/// Export formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// One JSON record per line, byte for byte as in the log.
    Jsonl,
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

fn query(types: &[String], host: Option<&str>, extra: &[(&str, String)]) -> String {
    let mut parts: Vec<String> = types
        .iter()
        .map(|t| format!("type={}", segment(t)))
        .collect();
    if let Some(h) = host {
        parts.push(format!("host={}", segment(h)));
    }
    parts.extend(extra.iter().map(|(k, v)| format!("{k}={}", segment(v))));
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
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
            let out: Value = client
                .post_json(
                    "/v1/audit/verify",
                    &json!({"from": from, "against": against}),
                )
                .await?;
            let ok = out["ok"].as_bool() == Some(true);
            let r = &out["report"];
            if global.json {
                output::json(&out);
            } else if ok {
                println!(
                    "audit log OK: {} records in {} files (seq {}..{}), {:.1} MB/s",
                    r["records"],
                    r["files"],
                    r["first_seq"].as_u64().unwrap_or(0),
                    r["last_seq"],
                    out["mb_per_s"].as_f64().unwrap_or(0.0)
                );
                if let Some(seq) = r["checkpoint_seq"].as_u64() {
                    println!("  contains the given checkpoint (seq {seq})");
                }
            } else {
                let b = &r["broken"];
                println!(
                    "audit log BROKEN at seq {}: {} ({}:{})",
                    b["seq"],
                    b["kind"].as_str().unwrap_or("?"),
                    b["file"].as_str().unwrap_or("?"),
                    b["line"]
                );
                println!("  {}", b["detail"].as_str().unwrap_or(""));
            }
            Ok(if ok { 0 } else { 1 })
        }
        AuditCommand::Tail(a) => {
            let q = query(
                &a.types,
                a.host.as_deref(),
                &[("limit", a.lines.to_string())],
            );
            let text = client.get_text(&format!("/v1/audit/records{q}")).await?;
            print_records(global.json, &text);
            if a.follow {
                let q = query(&a.types, a.host.as_deref(), &[]);
                let mut pending = Vec::new();
                let path = format!("/v1/audit/follow{q}");
                let follow = client.get_stream(&path, |chunk| {
                    pending.extend_from_slice(chunk);
                    while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=i).collect();
                        print_records(global.json, &String::from_utf8_lossy(&line));
                    }
                    let _ = std::io::stdout().flush();
                    true
                });
                tokio::select! {
                    r = follow => r?,
                    _ = tokio::signal::ctrl_c() => return Ok(130),
                }
            }
            Ok(0)
        }
        AuditCommand::Export {
            format: Format::Jsonl,
            from,
            types,
            output,
        } => {
            let extra: Vec<(&str, String)> = std::iter::once(("format", "jsonl".to_owned()))
                .chain(from.map(|f| ("from", f)))
                .collect();
            let q = query(&types, None, &extra);
            let mut sink: Box<dyn Write> =
                match &output {
                    Some(p) => Box::new(std::fs::File::create(p).map_err(|e| {
                        CliError::Usage(format!("cannot create {}: {e}", p.display()))
                    })?),
                    None => Box::new(std::io::stdout().lock()),
                };
            let mut write_err = None;
            client
                .get_stream(&format!("/v1/audit/export{q}"), |chunk| {
                    match sink.write_all(chunk) {
                        Ok(()) => true,
                        Err(e) => {
                            write_err = Some(e);
                            false
                        }
                    }
                })
                .await?;
            if let Some(e) = write_err {
                return Err(CliError::Internal(format!(
                    "writing the export failed: {e}"
                )));
            }
            sink.flush()
                .map_err(|e| CliError::Internal(format!("writing the export failed: {e}")))?;
            Ok(0)
        }
        AuditCommand::Checkpoint { export: _ } => {
            let text = client.get_text("/v1/audit/checkpoint").await?;
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            Ok(0)
        }
    }
}

/// Prints NDJSON records: as they are with --json, else one readable line each.
fn print_records(json: bool, text: &str) {
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if json {
            println!("{line}");
            continue;
        }
        let Ok(r) = serde_json::from_str::<Value>(line) else {
            println!("{line}");
            continue;
        };
        let actor = &r["actor"];
        println!(
            "{:>6} {} {:<16} {}({}) via {}{} {}",
            r["seq"],
            r["ts"].as_str().unwrap_or(""),
            r["type"].as_str().unwrap_or(""),
            actor["user"].as_str().unwrap_or("?"),
            actor["role"].as_str().unwrap_or("no role"),
            actor["via"].as_str().unwrap_or("?"),
            r["host"]
                .as_str()
                .map(|h| format!(" host={h}"))
                .unwrap_or_default(),
            r["data"]
        );
    }
}
