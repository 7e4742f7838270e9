//! `tether status`.

use clap::Args;
use tether_api::{Empty, Status};
use tether_model::VERSION;

use crate::error::CliError;
use crate::global::Global;
use crate::output;

/// Arguments of `tether status`.
#[derive(Debug, Args)]
pub struct StatusArgs {}

pub async fn run(global: &Global, _args: StatusArgs) -> Result<u8, CliError> {
    let client = global.client();
    let s = client.call::<Status>(&Empty {}).await?;
    let mismatch = version_mismatch(VERSION, crate::COMMIT, &s.version, &s.commit);
    if global.json {
        output::json(&s);
    } else {
        println!(
            "tetherd {} {} (commit {}, pid {}), up {}",
            s.role,
            s.version,
            s.commit,
            s.pid,
            output::duration(s.uptime_secs)
        );
        println!("  socket:    {}", client.socket().display());
        println!("  hosts:     {}", s.hosts);
        println!("  your role: {}", s.caller_role);
        for g in &s.access_grants {
            println!(
                "  granted:   {} to {} until {} ({})",
                g.role,
                g.holder.user,
                output::when(g.expires_at),
                g.id
            );
        }
        println!("  cli:       tether {VERSION} (commit {})", crate::COMMIT);
    }
    // On stderr, so `--json` output stays one parseable object.
    if let Some(warning) = mismatch {
        eprintln!("tether: warning: {warning}");
    }
    Ok(0)
}

/// A warning when this CLI and the daemon were built from different releases or commits (an
/// `unknown` commit on either side compares by version only).
pub(crate) fn version_mismatch(
    cli_version: &str,
    cli_commit: &str,
    daemon_version: &str,
    daemon_commit: &str,
) -> Option<String> {
    let commits_differ =
        cli_commit != "unknown" && daemon_commit != "unknown" && cli_commit != daemon_commit;
    (cli_version != daemon_version || commits_differ).then(|| {
        format!(
            "this CLI is {cli_version} (commit {cli_commit}) but tetherd is {daemon_version} \
             (commit {daemon_commit}); install matching builds (restart tetherd after upgrading it)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::version_mismatch;

    #[test]
    fn same_build_gives_no_warning() {
        assert_eq!(version_mismatch("0.1.0", "abc", "0.1.0", "abc"), None);
        assert_eq!(version_mismatch("0.1.0", "unknown", "0.1.0", "abc"), None);
        assert_eq!(version_mismatch("0.1.0", "abc", "0.1.0", "unknown"), None);
    }

    #[test]
    fn another_commit_or_version_warns_naming_both() {
        let w = version_mismatch("0.1.0", "abc", "0.1.0", "def").unwrap_or_default();
        assert!(w.contains("commit abc") && w.contains("commit def"), "{w}");
        let w = version_mismatch("0.2.0", "abc", "0.1.0", "abc").unwrap_or_default();
        assert!(w.contains("0.2.0") && w.contains("tetherd is 0.1.0"), "{w}");
        assert!(version_mismatch("0.2.0", "unknown", "0.1.0", "unknown").is_some());
    }
}
