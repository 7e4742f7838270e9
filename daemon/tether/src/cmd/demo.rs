//! `tether demo`: a hub and N targets as child processes on loopback, no root.
//!
//! Each daemon gets its own directory (config, state, socket, log) under one temp dir, which is
//! removed on Ctrl-C. As the tunnel, enrollment and SSH land, the demo enrolls its targets.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

use crate::error::CliError;
use crate::global::Global;
use crate::output;

/// Arguments of `tether demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many targets to start beside the hub.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=20))]
    pub targets: u8,
    /// Keep state in DIR (created if missing, kept afterwards) instead of a temp dir.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// One daemon of the demo.
#[derive(Debug, Serialize)]
struct Member {
    name: String,
    role: &'static str,
    pid: u32,
    socket: PathBuf,
    log: PathBuf,
}

struct Running {
    member: Member,
    child: Child,
}

pub async fn run(global: &Global, args: DemoArgs) -> Result<u8, CliError> {
    let tetherd = find_tetherd()?;
    let (root, _temp) = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", dir.display())))?;
            (dir.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("tether-demo-")
                .tempdir()
                .map_err(|e| CliError::Internal(format!("cannot create a temp dir: {e}")))?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let mut running: Vec<Running> = Vec::new();
    let outcome = async {
        running.push(start(&tetherd, &root, "hub", "hub")?);
        wait_ready(&mut running).await?;
        let hub = tether_api::Client::new(&running[0].member.socket);
        for i in 1..=args.targets {
            let name = format!("t{i}");
            let config = write_config(&root, &name, "target")?;
            // A real invite, enrolled with the real `tetherd enroll`.
            let invite = hub
                .call::<tether_api::VpnInvite>(&tether_api::InviteRequest {
                    name: name.clone(),
                    tags: [("demo".to_owned(), "yes".to_owned())].into(),
                    groups: vec!["demo".to_owned()],
                    ttl: Some("10m".to_owned()),
                })
                .await?;
            let token = invite.token;
            enroll(&tetherd, &config, &token).await?;
            running.push(start(&tetherd, &root, &name, "target")?);
        }
        wait_ready(&mut running).await?;
        wait_tunnels(&hub, args.targets as usize).await
    }
    .await;
    if let Err(e) = outcome {
        stop_all(&mut running).await;
        return Err(e);
    }

    let hub_socket = running[0].member.socket.clone();
    if global.json {
        let members: Vec<&Member> = running.iter().map(|r| &r.member).collect();
        output::json(&serde_json::json!({"event": "ready", "dir": root, "daemons": members}));
    } else {
        println!(
            "tether demo: {} daemons running on loopback (state in {})",
            running.len(),
            root.display()
        );
        for r in &running {
            let m = &r.member;
            println!(
                "  {:<4} {:<6} pid {:<7} socket {}",
                m.name,
                m.role,
                m.pid,
                m.socket.display()
            );
        }
        println!();
        println!(
            "Every target enrolled with a real invite; their WireGuard tunnels to the hub are up."
        );
        println!("Talk to the hub from another terminal (the lines work as printed):");
        for line in talk_commands(&hub_socket, &tether_binary()) {
            println!("  {line}");
        }
        println!("Logs: {}/<name>/tetherd.log", root.display());
        println!("demo ready — press Ctrl-C to stop and clean up");
    }

    let outcome = supervise(&mut running).await;
    stop_all(&mut running).await;
    match outcome {
        Ok(()) => {
            if !global.json {
                println!(
                    "demo stopped{}",
                    if args.dir.is_none() {
                        "; temp state removed"
                    } else {
                        ""
                    }
                );
            } else {
                output::json(&serde_json::json!({"event": "stopped"}));
            }
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

/// The commands the demo suggests, runnable as printed by a POSIX shell: the CLI by its full
/// path (it is usually in the cargo target dir, not on PATH), every path shell-quoted.
fn talk_commands(hub_socket: &Path, tether: &Path) -> Vec<String> {
    let t = shell_quote(&tether.display().to_string());
    vec![
        format!(
            "export TETHER_SOCKET={}",
            shell_quote(&hub_socket.display().to_string())
        ),
        format!("{t} vpn status        # peers, handshakes, traffic"),
        format!("{t} hosts list        # the inventory"),
        format!("{t} audit tail        # what happened, hash-chained"),
    ]
}

/// This CLI's own path (so the printed commands run the same build), else plain `tether`.
fn tether_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| std::fs::canonicalize(p).ok())
        .unwrap_or_else(|| PathBuf::from("tether"))
}

/// `text` as one POSIX shell word: unchanged when it is only safe characters, else in single
/// quotes (a `'` inside becomes `'\''`).
fn shell_quote(text: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c);
    if !text.is_empty() && text.chars().all(safe) {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// `$TETHER_TETHERD`, else `tetherd` beside this binary, else `tetherd` on PATH.
fn find_tetherd() -> Result<PathBuf, CliError> {
    if let Some(p) = std::env::var_os("TETHER_TETHERD").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("tetherd")))
        && sibling.is_file()
    {
        return Ok(sibling);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("tetherd"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CliError::Usage(
                "cannot find the tetherd binary: build it (cargo build --bins) or set TETHER_TETHERD=/path/to/tetherd"
                    .to_owned(),
            )
        })
}

/// Writes `root/NAME/tetherd.toml`: loopback only, port 0 for the tunnel and enrollment.
fn write_config(root: &Path, name: &str, role: &str) -> Result<PathBuf, CliError> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)
        .map_err(|e| CliError::Internal(format!("demo: cannot create {}: {e}", dir.display())))?;
    let config = dir.join("tetherd.toml");
    let text = format!(
        "# written by `tether demo`: loopback only, ports chosen by the OS\nrole = \"{role}\"\nstate_dir = {state:?}\n\n[tunnel]\nlisten = \"127.0.0.1:0\"\n\n[enroll]\nlisten = \"127.0.0.1:0\"\n\n[control]\nsocket = {socket:?}\n",
        state = dir.join("state").display().to_string(),
        socket = dir.join("tetherd.sock").display().to_string(),
    );
    std::fs::write(&config, text)
        .map_err(|e| CliError::Internal(format!("demo: cannot write {}: {e}", config.display())))?;
    Ok(config)
}

/// `tetherd enroll -` with the token on stdin (never on a command line).
async fn enroll(tetherd: &Path, config: &Path, token: &str) -> Result<(), CliError> {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(tetherd)
        .args(["enroll", "-", "--config"])
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            CliError::Internal(format!(
                "demo: cannot run {} enroll: {e}",
                tetherd.display()
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(token.as_bytes()).await;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| CliError::Internal(format!("demo: enroll failed: {e}")))?;
    if !out.status.success() {
        return Err(CliError::Internal(format!(
            "demo: enrolling {} failed: {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Waits until the hub sees every target's tunnel up (handshake done).
async fn wait_tunnels(hub: &tether_api::Client, targets: usize) -> Result<(), CliError> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = hub
            .call::<tether_api::VpnStatusGet>(&tether_api::Empty {})
            .await?;
        let up = status.peers.iter().filter(|p| p.up).count();
        if up >= targets {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CliError::Internal(format!(
                "demo: only {up} of {targets} tunnels came up within 15 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn start(tetherd: &Path, root: &Path, name: &str, role: &'static str) -> Result<Running, CliError> {
    let dir = root.join(name);
    let io = |what: &str, e: std::io::Error| {
        CliError::Internal(format!("demo: cannot {what} in {}: {e}", dir.display()))
    };
    let config = write_config(root, name, role)?;
    let socket = dir.join("tetherd.sock");
    let log = dir.join("tetherd.log");
    let log_file = std::fs::File::create(&log).map_err(|e| io("create the log", e))?;
    let log_err = log_file.try_clone().map_err(|e| io("open the log", e))?;
    let child = Command::new(tetherd)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        // Own process group: Ctrl-C reaches only us, and we stop the daemons in order.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            CliError::Internal(format!("demo: cannot start {}: {e}", tetherd.display()))
        })?;
    Ok(Running {
        member: Member {
            name: name.to_owned(),
            role,
            pid: child.id().unwrap_or(0),
            socket,
            log,
        },
        child,
    })
}

async fn wait_ready(running: &mut [Running]) -> Result<(), CliError> {
    let deadline = Instant::now() + Duration::from_secs(15);
    for r in running.iter_mut() {
        let client = tether_api::Client::new(&r.member.socket);
        loop {
            if client
                .call::<tether_api::Readyz>(&tether_api::Empty {})
                .await
                .is_ok()
            {
                break;
            }
            if let Ok(Some(status)) = r.child.try_wait() {
                return Err(died(&r.member, &status.to_string()));
            }
            if Instant::now() > deadline {
                return Err(died(&r.member, "not ready after 15 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

fn died(m: &Member, why: &str) -> CliError {
    let log = std::fs::read_to_string(&m.log).unwrap_or_default();
    let tail: Vec<&str> = log
        .lines()
        .rev()
        .take(10)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    CliError::Internal(format!(
        "demo: {} ({}) failed: {why}\n{}",
        m.name,
        m.role,
        tail.join("\n")
    ))
}

/// Waits for Ctrl-C / SIGTERM (a normal stop) or for a daemon to die (an error).
async fn supervise(running: &mut [Running]) -> Result<(), CliError> {
    let mut int = signal(SignalKind::interrupt()).map_err(|e| CliError::Internal(e.to_string()))?;
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| CliError::Internal(e.to_string()))?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = int.recv() => return Ok(()),
            _ = term.recv() => return Ok(()),
            _ = tick.tick() => {
                for r in running.iter_mut() {
                    if let Ok(Some(status)) = r.child.try_wait() {
                        return Err(died(&r.member, &format!("exited unexpectedly ({status})")));
                    }
                }
            }
        }
    }
}

/// SIGTERM to every daemon, then up to 5 s to exit, then SIGKILL.
async fn stop_all(running: &mut [Running]) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for r in running.iter() {
        if let Some(pid) = r.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for r in running.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(5), r.child.wait())
            .await
            .is_err()
        {
            let _ = r.child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn printed_commands_name_the_binary_by_path_and_quote_what_needs_it() {
        let lines = super::talk_commands(
            Path::new("/tmp/demo dir/hub/tetherd.sock"),
            Path::new("/home/me/.cache/tether-target/debug/tether"),
        );
        assert_eq!(
            lines[0],
            "export TETHER_SOCKET='/tmp/demo dir/hub/tetherd.sock'"
        );
        assert!(lines[1].starts_with("/home/me/.cache/tether-target/debug/tether vpn status"));
        assert_eq!(super::shell_quote("it's"), "'it'\\''s'");
    }
}
