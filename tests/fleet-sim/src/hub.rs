//! The real hub: a `tetherd run --role hub` process on loopback in a temp dir, driven over its
//! control socket with the typed API client, and measured from `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tether_api::Client;

/// A running hub, killed on drop.
pub struct Hub {
    /// Temp dir holding its state, config, socket and log.
    pub dir: tempfile::TempDir,
    /// The control API client.
    pub client: Client,
    child: Child,
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Hub {
    /// Starts `tetherd` (the binary at `tetherd`) as a hub listening on 127.0.0.1 only, and
    /// waits until its control API answers.
    /// `extra` is appended to its config file (e.g. an `[ssh]` section).
    pub async fn start(tetherd: &Path, extra: &str) -> Result<Hub, String> {
        let dir = tempfile::Builder::new()
            .prefix("tether-fleet-sim-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let socket = dir.path().join("tetherd.sock");
        let config = dir.path().join("tetherd.toml");
        let text = format!(
            "role = \"hub\"\nstate_dir = \"{}\"\n\n[tunnel]\nlisten = \"127.0.0.1:0\"\n\n\
             [enroll]\nlisten = \"127.0.0.1:0\"\n\n[control]\nsocket = \"{}\"\n\n{extra}",
            dir.path().join("state").display(),
            socket.display()
        );
        std::fs::write(&config, text).map_err(|e| format!("write {}: {e}", config.display()))?;
        let log = std::fs::File::create(dir.path().join("tetherd.log"))
            .map_err(|e| format!("log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("log: {e}"))?;
        let child = Command::new(tetherd)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", tetherd.display()))?;
        let hub = Hub {
            client: Client::new(&socket),
            dir,
            child,
        };
        let started = Instant::now();
        loop {
            if hub
                .client
                .call::<tether_api::VpnStatusGet>(&tether_api::Empty {})
                .await
                .is_ok()
            {
                return Ok(hub);
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "the hub did not answer on its control socket within 30 s; its log:\n{}",
                    hub.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The hub's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The hub's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tetherd.log")).unwrap_or_default()
    }

    /// The hub's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
}

/// User + system CPU time of a process so far.
pub fn cpu_time(pid: u32) -> Duration {
    stat_ticks(pid, false)
}

/// User + system CPU time of a process so far plus that of its waited-for children (the
/// simulator: every command its targets run is a child process).
pub fn cpu_time_with_children(pid: u32) -> Duration {
    stat_ticks(pid, true)
}

fn stat_ticks(pid: u32, children: bool) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the ')'.
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(100);
    // cutime and cstime follow (fields 16 and 17).
    let extra = if children { ticks(13) + ticks(14) } else { 0 };
    Duration::from_millis((ticks(11) + ticks(12) + extra) * 1000 / hz)
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}

/// Peak resident set size of a process, in KiB.
pub fn hwm_kib(pid: u32) -> u64 {
    status_field(pid, "VmHWM:")
}

fn status_field(pid: u32, name: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Open file descriptors of a process (sockets included).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Bytes of audit records in the `*.jsonl` files of `dir`: up to each file's last newline (the
/// audit writer preallocates its files, so their length says little).
pub fn audit_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
        .map(|e| {
            std::fs::read(e.path())
                .ok()
                .and_then(|b| b.iter().rposition(|c| *c == b'\n'))
                .map_or(0, |i| i as u64 + 1)
        })
        .sum()
}
