//! `tether audit export --format jsonl|ocsf|ecs|cef|syslog [--from SEQ] [--to SEQ] [--since T]`:
//! the log streamed from the daemon (`GET /v1/audit/export`, itself audited as `audit.read`) and
//! rendered here, one record at a time, by the sans-IO renderers of `tether-siem`: memory stays
//! bounded by one record whatever the log's size. `jsonl` writes the records byte for byte.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use tether_api::{AuditExport, AuditExportQuery};
use tether_siem::{Context, Format as Siem, Record};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::CliError;
use crate::global::Global;

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON record per line, byte for byte as in the log.
    Jsonl,
    /// One OCSF 1.3 event per line (Authentication 3002, Process Activity 1007, File System
    /// Activity 1001, SSH Activity 4007, API Activity 6003).
    Ocsf,
    /// One Elastic Common Schema document per line.
    Ecs,
    /// One ArcSight CEF line per record.
    Cef,
    /// One RFC 5424 syslog line per record (structured data `tether@32473`).
    Syslog,
}

/// Arguments of `tether audit export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    format: Format,
    /// Only records with this seq or later.
    #[arg(long, value_name = "SEQ")]
    from: Option<u64>,
    /// Only records up to this seq (the export stops there).
    #[arg(long, value_name = "SEQ")]
    to: Option<u64>,
    /// Only records at or after this time: a UTC date (YYYY-MM-DD), an RFC 3339 timestamp, or
    /// an age such as 90m, 24h, 7d.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only these event types (repeatable; `enroll.*` matches a prefix).
    #[arg(long = "type", value_name = "TYPE")]
    types: Vec<String>,
    /// The machine name written as the syslog HOSTNAME / OCSF and ECS observer (default: this
    /// machine's host name).
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// Write to this file instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// `--since` as a UTC time.
fn since(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--since {text:?}: give a UTC date (2026-11-27), an RFC 3339 time (2026-11-27T08:00:00Z) or an age (90m, 24h, 7d)"
        ))
    };
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    if text.len() == 10 {
        let t = OffsetDateTime::parse(&format!("{text}T00:00:00Z"), &Rfc3339).map_err(|_| bad())?;
        return Ok(t);
    }
    let (n, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(bad()),
    };
    Ok(now - time::Duration::seconds(secs))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// What became of one line of the stream.
enum Line {
    Skip,
    Write(Vec<u8>),
    Stop,
}

/// Decides and renders one streamed line.
fn render(
    line: &[u8],
    a: &ExportArgs,
    since: Option<&str>,
    ctx: &Context<'_>,
) -> Result<Line, CliError> {
    let text = std::str::from_utf8(line)
        .map_err(|_| CliError::Internal("the daemon sent a line that is not UTF-8".into()))?;
    if text.trim().is_empty() {
        return Ok(Line::Skip);
    }
    let v = Record::parse_line(text).map_err(|e| CliError::Internal(e.to_string()))?;
    if let Some(err) = v.get("error") {
        return Err(CliError::Internal(format!(
            "the daemon stopped the export: {}",
            err.get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("unknown error")
        )));
    }
    let r = Record::from_value(&v).map_err(|e| CliError::Internal(e.to_string()))?;
    if a.to.is_some_and(|to| r.seq > to) {
        return Ok(Line::Stop);
    }
    if a.from.is_some_and(|from| r.seq < from) {
        return Ok(Line::Skip);
    }
    // RFC 3339 UTC timestamps with the same layout compare as text.
    if since.is_some_and(|s| r.ts < s) {
        return Ok(Line::Skip);
    }
    let mut out = match a.format {
        Format::Jsonl => return Ok(Line::Write(line.to_vec())),
        Format::Ocsf => Siem::Ocsf,
        Format::Ecs => Siem::Ecs,
        Format::Cef => Siem::Cef,
        Format::Syslog => Siem::Syslog,
    }
    .render(&r, ctx, &v)
    .into_bytes();
    out.push(b'\n');
    Ok(Line::Write(out))
}

/// Runs `tether audit export`.
pub async fn run(global: &Global, a: ExportArgs) -> Result<u8, CliError> {
    if let (Some(f), Some(t)) = (a.from, a.to)
        && f > t
    {
        return Err(CliError::Usage(format!(
            "--from {f} is after --to {t}: nothing to export"
        )));
    }
    let since = match &a.since {
        Some(s) => Some(since(s, OffsetDateTime::now_utc())?.to_offset(time::UtcOffset::UTC)),
        None => None,
    };
    // Six fractional digits and `Z`, like the log's timestamps, so text order is time order.
    let since_text = since.map(|t| {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.microsecond()
        )
    });
    let q = AuditExportQuery {
        format: Some("jsonl".to_owned()),
        types: a.types.clone(),
        host: None,
        // Day files before --since's date are not even read.
        from: since.map(|t| format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())),
    };
    let host = a.hostname.clone().unwrap_or_else(hostname);
    let ctx = Context {
        version: env!("CARGO_PKG_VERSION"),
        hostname: &host,
    };
    let mut sink: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).map_err(
            |e| CliError::Usage(format!("cannot create {}: {e}", p.display())),
        )?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut failed: Option<CliError> = None;
    global
        .client()
        .stream_lines::<AuditExport>(&q, |line| {
            match render(line, &a, since_text.as_deref(), &ctx) {
                Ok(Line::Skip) => true,
                Ok(Line::Stop) => false,
                Ok(Line::Write(bytes)) => match sink.write_all(&bytes) {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(CliError::Internal(format!(
                            "writing the export failed: {e}"
                        )));
                        false
                    }
                },
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        })
        .await?;
    if let Some(e) = failed {
        return Err(e);
    }
    sink.flush()
        .map_err(|e| CliError::Internal(format!("writing the export failed: {e}")))?;
    Ok(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_dates_timestamps_and_ages() {
        let now = OffsetDateTime::parse("2026-11-27T12:00:00Z", &Rfc3339).unwrap();
        let f = |s| since(s, now).map(|t| t.format(&Rfc3339).unwrap());
        assert_eq!(f("2026-11-20").unwrap(), "2026-11-20T00:00:00Z");
        assert_eq!(
            f("2026-11-27T08:00:00+01:00").unwrap(),
            "2026-11-27T08:00:00+01:00"
        );
        assert_eq!(f("24h").unwrap(), "2026-11-26T12:00:00Z");
        assert_eq!(f("90m").unwrap(), "2026-11-27T10:30:00Z");
        for bad in ["", "yesterday", "5y", "h", "2026-13-01"] {
            assert!(f(bad).is_err(), "{bad}");
        }
    }
}
