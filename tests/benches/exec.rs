//! Exec benchmarks against OpenSSH, Ansible and the usual fan-out tools, in one run.
//!
//! Run (as root: it creates the `tetherbench` account with `/bin/sh`, runs sshd, and may
//! `apt-get install pssh`): `scripts/bench-exec` (builds under the build lock, then runs this
//! binary outside it). Environment: `BENCH_N` targets (default 100), `BENCH_ITER` latency
//! samples (default 200), `BENCH_ANSIBLE=0` skips Ansible, `BENCH_LATENCY_ONLY=1` stops after the
//! `exec true` latency (and the disk's fdatasync), `BENCH_TRACE=DIR` records `BENCH_TRACE_ITER`
//! (100) more requests with `perf trace` for `scripts/exec-breakdown`, `BENCH_TMPFS=1` samples a
//! second hub + target whose state is on tmpfs (not durable: it only shows what the disk costs),
//! `BENCH_PERF_STAT=N` counts what hub and target spend (CPU time, context switches, page
//! faults; instructions where the machine has hardware counters) on N more requests
//! (`BENCH_PERF_THREADS=1`: and per thread on N more). The
//! `exec true` samples of tether (disk, tmpfs) and of the OpenSSH ControlMaster alternate.
//!
//! Both sides run the command as the same account with the same shell: tether's targets have
//! `ssh.run_as = "tetherbench"` (so `/bin/sh -c` as that user), sshd logs `tetherbench` in
//! (login shell `/bin/sh`). Every sshd-side tool talks to one local sshd through N host aliases;
//! tether talks to N real target daemons over its userspace WireGuard tunnel on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tether_e2e::{Daemon, bin, code, config_text, is_root, stderr, stdout};

const USER: &str = "tetherbench";

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(cmd).output().unwrap()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A field of `/proc/PID/FILE` in kB, as MiB.
fn proc_kb(pid: u32, file: &str, field: &str) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// `VmRSS` of a process, MiB (includes the binary's file pages, shared by every daemon).
fn rss_mib(pid: u32) -> f64 {
    proc_kb(pid, "status", "VmRSS:")
}

/// `RssAnon`: the process's own memory (heap, stacks), MiB.
fn anon_mib(pid: u32) -> f64 {
    proc_kb(pid, "status", "RssAnon:")
}

/// Proportional set size: shared pages divided among the processes sharing them, MiB.
fn pss_mib(pid: u32) -> f64 {
    proc_kb(pid, "smaps_rollup", "Pss:")
}

fn mem(pid: u32) -> String {
    format!(
        "RSS {:.1} MiB (anon {:.1}, PSS {:.1})",
        rss_mib(pid),
        anon_mib(pid),
        pss_mib(pid)
    )
}

/// This disk's `fdatasync` as the audit writer pays it: `samples` appends of a 500-byte record
/// into a file whose blocks were written (as zeros) and synced beforehand (the audit log's zero
/// tail), each followed by `fdatasync`. Returns the sorted durations in ms. `dir` should be on
/// the file system the daemons' state directories are on.
fn disk_fdatasync(dir: &Path, samples: usize) -> Vec<f64> {
    use std::os::unix::fs::FileExt;
    let path = dir.join("tether-bench-fdatasync");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let record = [b'x'; 500];
    f.write_all_at(&vec![0u8; 500 * (samples + 1)], 0).unwrap();
    f.sync_all().unwrap();
    let mut took = Vec::with_capacity(samples);
    for i in 0..samples {
        f.write_all_at(&record, (i * 500) as u64).unwrap();
        let t = Instant::now();
        f.sync_data().unwrap();
        took.push(ms(t.elapsed()));
        // About the pace of the latency loop: one durable record every few ms.
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    took.sort_by(f64::total_cmp);
    took
}

/// One warm `exec true` through the control API (connect, request, NDJSON stream to its end).
fn exec_true(hub: &Daemon) {
    let body = br#"{"selector":"host:h001","command":"true"}"#;
    let (status, text) = hub.request(
        "POST",
        "/v1/exec",
        &[("Content-Type", "application/json")],
        body,
    );
    assert!(
        status == 200 && text.contains("\"ok\":1"),
        "{status} {text}"
    );
}

/// `BENCH_TRACE=DIR`: `iters` more `exec true` requests with `perf trace` attached to the hub,
/// target h001 and this process (syscalls only: the control socket, the tunnel's UDP, audit
/// `fdatasync`s, the command's fork/exec/wait), written to `DIR/trace.txt` for
/// `scripts/exec-breakdown`. Each request is bracketed by a `getppid` (begin) and a `getsid`
/// (end) of this process, syscalls nothing else here makes, so the parser can find it.
fn trace_requests(hub: &Daemon, target: &Daemon, dir: &Path, iters: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let out = dir.join("trace.txt");
    let pids = format!("{},{},{}", hub.pid(), target.pid(), std::process::id());
    let mut perf = Command::new("perf")
        .args([
            "trace",
            "-T",
            "-e",
            "accept4,connect,fdatasync,fsync,sendto,sendmsg,sendmmsg,recvfrom,recvmsg,recvmmsg,clone,clone3,vfork,execve,wait4,waitid,exit_group,getppid,getsid",
            "-p",
            &pids,
            "-o",
        ])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("perf (linux-perf) for BENCH_TRACE");
    // Which thread belongs to whom (perf trace names threads, not processes): now and after.
    let tids = |out: &mut String| {
        for (who, pid) in [
            ("hub", hub.pid()),
            ("target", target.pid()),
            ("client", std::process::id()),
        ] {
            for t in std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
            {
                let t = t.unwrap().file_name();
                out.push_str(&format!("{who} {}\n", t.to_string_lossy()));
            }
        }
    };
    let mut map = String::new();
    tids(&mut map);
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..iters {
        let _ = nix::unistd::getppid();
        exec_true(hub);
        let _ = nix::unistd::getsid(None);
    }
    std::thread::sleep(Duration::from_millis(500));
    tids(&mut map);
    std::fs::write(dir.join("tids.txt"), map).unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(perf.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let status = perf.wait().unwrap();
    println!(
        "trace: {} ({status}); parse with scripts/exec-breakdown {}",
        out.display(),
        out.display()
    );
}

fn ensure_user() {
    if sh(&format!("id {USER}")).status.success() {
        return;
    }
    let out = sh(&format!(
        "useradd -m -s /bin/sh {USER} && usermod -p '*' {USER}"
    ));
    assert!(out.status.success(), "useradd: {out:?}");
}

fn invite(hub: &Daemon, name: &str) -> String {
    let out = hub.tether(&["vpn", "invite", name]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

fn enroll(config: &Path, token: &str) -> std::process::Output {
    let mut child = Command::new(bin("tetherd"))
        .args(["enroll", "-", "--config"])
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(token.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn online_count(hub: &Daemon) -> usize {
    let out = hub.tether(&["--json", "hosts", "list"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap_or_default();
    v["hosts"]
        .as_array()
        .map_or(0, |h| h.iter().filter(|h| h["online"] == true).count())
}

fn wait_online(hub: &Daemon, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while online_count(hub) < n {
        assert!(Instant::now() < deadline, "targets not online");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `tether exec` over all hosts; wall time (the CLI process included).
fn tether_fan_out(hub: &Daemon, concurrency: usize, cmd: &str) -> Duration {
    let c = concurrency.to_string();
    let t0 = Instant::now();
    let out = hub.tether(&["exec", "--concurrency", &c, "--", cmd]);
    let took = t0.elapsed();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    took
}

/// A local sshd on a loopback port for `USER`, authorizing `client_pub`.
struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: std::process::Child,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_sshd(client_pub: &Path) -> Sshd {
    let dir = tempfile::Builder::new()
        .prefix("tether-bench-sshd-")
        .tempdir()
        .unwrap();
    let p = dir.path();
    assert!(
        sh(&format!(
            "ssh-keygen -q -t ed25519 -N '' -f {}/host",
            p.display()
        ))
        .status
        .success()
    );
    std::fs::copy(client_pub, p.join("authorized_keys")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        p.join("sshd_config"),
        format!(
            "ListenAddress 127.0.0.1:{port}\nHostKey {d}/host\nPidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nAllowUsers {USER}\nMaxStartups 400\nMaxSessions 200\nLogLevel ERROR\n",
            d = p.display()
        ),
    )
    .unwrap();
    let _ = std::fs::create_dir_all("/run/sshd");
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(p.join("sshd_config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sshd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Sshd { dir, port, child }
}

/// Runs `cmd` through `sh -c`, timing it; panics on failure.
fn timed(cmd: &str) -> Duration {
    let t0 = Instant::now();
    let out = sh(cmd);
    let took = t0.elapsed();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// The OpenSSH side: a client key, a local sshd for `USER`, and an ssh config with one host
/// alias per target name (all to that sshd). Returns the key dir, the sshd and the `ssh -F ...`
/// command prefix.
fn openssh_setup(names: &[String]) -> (tempfile::TempDir, Sshd, String) {
    let keys = tempfile::tempdir().unwrap();
    let k = keys.path();
    assert!(
        sh(&format!(
            "ssh-keygen -q -t ed25519 -N '' -f {}/id",
            k.display()
        ))
        .status
        .success()
    );
    let sshd = start_sshd(&k.join("id.pub"));
    let host_pub = std::fs::read_to_string(sshd.dir.path().join("host.pub")).unwrap();
    std::fs::write(
        k.join("known_hosts"),
        format!("[127.0.0.1]:{} {}", sshd.port, host_pub.trim()),
    )
    .unwrap();
    let mut cfg = String::new();
    for name in names {
        cfg.push_str(&format!(
            "Host {name}\n  HostKeyAlias [127.0.0.1]:{}\n",
            sshd.port
        ));
    }
    cfg.push_str(&format!(
        "Host *\n  HostName 127.0.0.1\n  Port {}\n  User {USER}\n  IdentityFile {d}/id\n  IdentitiesOnly yes\n  UserKnownHostsFile {d}/known_hosts\n  StrictHostKeyChecking yes\n  BatchMode yes\n  ControlPath {d}/cm-%C\n",
        sshd.port,
        d = k.display()
    ));
    std::fs::write(k.join("config"), &cfg).unwrap();
    let ssh = format!("ssh -F {}/config", k.display());
    (keys, sshd, ssh)
}

/// `BENCH_TMPFS=1`: a hub and one target `h001` whose directories (state, audit logs, sockets)
/// are on tmpfs (`/dev/shm`). Not a durable configuration anyone should run: an fdatasync on
/// tmpfs returns at once, so the latency through this pair is the request path without the
/// disk.
struct TmpfsPair {
    hub: Daemon,
    _target: Daemon,
}

fn tmpfs_pair() -> TmpfsPair {
    let dir = || {
        tempfile::Builder::new()
            .prefix("tether-bench-tmpfs-")
            .tempdir_in("/dev/shm")
            .unwrap()
    };
    let hdir = dir();
    let config = hdir.path().join("tetherd.toml");
    std::fs::write(
        &config,
        config_text("hub", hdir.path(), "\n[ssh]\nidle_timeout = \"2s\"\n"),
    )
    .unwrap();
    let mut hub = Daemon::spawn_in(hdir, config, &[]);
    hub.wait_ready();
    let token = invite(&hub, "h001");
    let tdir = dir();
    let config = tdir.path().join("tetherd.toml");
    std::fs::write(
        &config,
        config_text(
            "target",
            tdir.path(),
            &format!("\n[ssh]\nrun_as = \"{USER}\"\n"),
        ),
    )
    .unwrap();
    let out = enroll(&config, &token);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mut target = Daemon::spawn_in(tdir, config, &[]);
    target.wait_ready();
    wait_online(&hub, 1);
    TmpfsPair {
        hub,
        _target: target,
    }
}

/// `perf stat -x , ARGS` attached to the hub and to the target while `n` warm `exec true`
/// requests run; its CSV output for each (empty if perf wrote none).
fn perf_during(hub: &Daemon, target: &Daemon, n: usize, args: &[&str]) -> [String; 2] {
    let dir = tempfile::tempdir().unwrap();
    let start = |who: &str, pid: u32| {
        let out = dir.path().join(format!("{who}.csv"));
        let child = Command::new("perf")
            .args(["stat", "-x", ","])
            .args(args)
            .arg("-p")
            .arg(pid.to_string())
            .arg("-o")
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("perf (linux-perf) for BENCH_PERF_STAT");
        (child, out)
    };
    let mut perfs = [start("hub", hub.pid()), start("target", target.pid())];
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..n {
        exec_true(hub);
    }
    for (p, _) in &mut perfs {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = p.wait();
    }
    perfs.map(|(_, out)| std::fs::read_to_string(out).unwrap_or_default())
}

/// `BENCH_PERF_STAT=N`: what the hub and target h001 spend on `n` warm `exec true` requests,
/// counted by `perf stat` attached to each daemon (threads it creates and the command's child
/// included), divided by `n`: CPU time (`task-clock`), context switches, page faults, and
/// instructions (user, kernel) where the machine exposes hardware counters (a VM often does
/// not: perf says `<not supported>`, printed as `n/a`).
fn perf_stat(hub: &Daemon, target: &Daemon, n: usize, row: &mut impl FnMut(&str, String)) {
    const EVENTS: [&str; 5] = [
        "task-clock",
        "context-switches",
        "page-faults",
        "instructions:u",
        "instructions:k",
    ];
    let texts = perf_during(hub, target, n, &["-e", &EVENTS.join(",")]);
    for (who, text) in ["hub", "target"].iter().zip(&texts) {
        let per = |ev: &str| {
            text.lines()
                .find(|l| l.split(',').nth(2) == Some(ev))
                .and_then(|l| l.split(',').next())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map_or_else(|| "n/a".to_owned(), |v| format!("{:.3}", v / n as f64))
        };
        row(
            &format!(
                "{who} per warm exec true ({n} requests): CPU ms, context switches, page faults, instructions user / kernel"
            ),
            format!(
                "{} ms, {}, {}, {} / {}",
                per("task-clock"),
                per("context-switches"),
                per("page-faults"),
                per("instructions:u"),
                per("instructions:k")
            ),
        );
    }
}

/// `BENCH_PERF_THREADS=1` (with `BENCH_PERF_STAT=N`): the same count per thread
/// (`perf stat --per-thread`) over `n` more requests — which of the daemon's threads switch and
/// burn CPU per exec. Threads under 0.05 switches per exec are left out. A thread that exited
/// during the run (a blocking-pool thread, a command's child) is not counted by perf.
fn perf_threads(hub: &Daemon, target: &Daemon, n: usize, row: &mut impl FnMut(&str, String)) {
    let texts = perf_during(
        hub,
        target,
        n,
        &["--per-thread", "-e", "task-clock,context-switches"],
    );
    for (who, text) in ["hub", "target"].iter().zip(&texts) {
        // Lines: `comm-tid,value,unit,event,...`.
        let mut threads: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
        for l in text.lines() {
            let f: Vec<&str> = l.split(',').collect();
            if f.len() < 4 {
                continue;
            }
            let Ok(v) = f[1].trim().parse::<f64>() else {
                continue;
            };
            let e = threads.entry(f[0].trim().to_owned()).or_default();
            match f[3] {
                "task-clock" => e.0 = v / n as f64,
                "context-switches" => e.1 = v / n as f64,
                _ => {}
            }
        }
        let mut list: Vec<_> = threads
            .into_iter()
            .filter(|(_, (_, cs))| *cs >= 0.05)
            .collect();
        list.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
        let text: Vec<String> = list
            .iter()
            .map(|(t, (cpu, cs))| format!("{t}: {cs:.1} cs, {cpu:.3} ms"))
            .collect();
        row(
            &format!("{who} per thread per warm exec true ({n} requests): context switches, CPU"),
            text.join("; "),
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench --no-run` / test harness probing
    }
    if !is_root() {
        eprintln!("bench-exec: needs root (a test account, sshd, apt); skipped");
        return;
    }
    let n = env_num("BENCH_N", 100);
    let iters = env_num("BENCH_ITER", 200);
    ensure_user();
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| {
        println!("{k}: {v}");
        rows.push((k.to_owned(), v));
    };

    // --- tether: a hub and N targets running commands as USER ---
    let t0 = Instant::now();
    // A short idle expiry lets the pool go cold again between measurements (the reaper closes
    // connections idle for 2 s); back-to-back runs keep it warm.
    let hub = Daemon::start("hub", "\n[ssh]\nidle_timeout = \"2s\"\n");
    let names: Vec<String> = (1..=n).map(|i| format!("h{i:03}")).collect();
    let extra = format!("\n[ssh]\nrun_as = \"{USER}\"\n");
    let mut targets: Vec<Daemon> = Vec::new();
    for name in &names {
        let token = invite(&hub, name);
        let dir = tempfile::Builder::new()
            .prefix("tether-bench-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("tetherd.toml");
        std::fs::write(&config, config_text("target", dir.path(), &extra)).unwrap();
        let mut out = enroll(&config, &token);
        while code(&out) != 0 && stderr(&out).contains("too many enrollment attempts") {
            std::thread::sleep(Duration::from_millis(250));
            out = enroll(&config, &token);
        }
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        targets.push(Daemon::spawn_in(dir, config, &[]));
    }
    for t in &mut targets {
        t.wait_ready();
    }
    wait_online(&hub, n);
    row(
        "targets",
        format!("{n} up in {:.1} s", t0.elapsed().as_secs_f64()),
    );
    std::thread::sleep(Duration::from_secs(2));
    let median = |f: fn(u32) -> f64| {
        let mut v: Vec<f64> = targets.iter().map(|t| f(t.pid())).collect();
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    row(
        "idle target, median",
        format!(
            "RSS {:.1} MiB (anon {:.1}, PSS {:.1})",
            median(rss_mib),
            median(anon_mib),
            median(pss_mib)
        ),
    );
    row("hub, no pooled connections", mem(hub.pid()));

    // Cold: no pooled SSH connection yet (tunnels up).
    let cold100 = tether_fan_out(&hub, 100, "uname -a");
    row(
        "tether cold fan-out, uname -a, concurrency 100",
        format!("{:.2} s", cold100.as_secs_f64()),
    );
    let mut warm20 = Vec::new();
    let mut warm100 = Vec::new();
    for _ in 0..5 {
        warm20.push(tether_fan_out(&hub, 20, "uname -a").as_secs_f64());
        warm100.push(tether_fan_out(&hub, 100, "uname -a").as_secs_f64());
    }
    warm20.sort_by(f64::total_cmp);
    warm100.sort_by(f64::total_cmp);
    row(
        "tether warm fan-out, concurrency 20 (median of 5)",
        format!("{:.3} s", percentile(&warm20, 0.5)),
    );
    row(
        "tether warm fan-out, concurrency 100 (median of 5)",
        format!("{:.3} s", percentile(&warm100, 0.5)),
    );
    row(
        &format!("hub holding {n} pooled connections"),
        mem(hub.pid()),
    );

    // OpenSSH to a local sshd, same account and shell: set up now so that the ControlMaster
    // latency is sampled interleaved with tether's (same moments of the machine).
    let (keys, sshd, ssh) = openssh_setup(&names);
    let k = keys.path();
    // BENCH_TMPFS=1: a second hub + one target whose state (audit logs) is on tmpfs, sampled
    // interleaved too. NOT a durable configuration: it only separates what the disk costs.
    let tmpfs = (std::env::var("BENCH_TMPFS").as_deref() == Ok("1")).then(tmpfs_pair);
    timed(&format!(
        "{ssh} -o ControlMaster=yes -o ControlPersist=120 -f -N h001"
    ));
    // Warm up every path, then one request per sample, rotating disk / tmpfs / ControlMaster.
    for _ in 0..10 {
        exec_true(&hub);
        if let Some(t) = &tmpfs {
            exec_true(&t.hub);
        }
    }
    let mut lat = Vec::with_capacity(iters);
    let mut tlat = Vec::with_capacity(iters);
    let mut cm = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        exec_true(&hub);
        lat.push(ms(t.elapsed()));
        if let Some(tp) = &tmpfs {
            let t = Instant::now();
            exec_true(&tp.hub);
            tlat.push(ms(t.elapsed()));
        }
        cm.push(ms(timed(&format!("{ssh} -o ControlMaster=no h001 true"))));
    }
    let _ = sh(&format!("{ssh} -O exit h001 2>/dev/null"));
    lat.sort_by(f64::total_cmp);
    tlat.sort_by(f64::total_cmp);
    cm.sort_by(f64::total_cmp);
    let (t50, t99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    row(
        "tether exec true via control API p50 / p99",
        format!("{t50:.2} / {t99:.2} ms"),
    );
    if tmpfs.is_some() {
        row(
            "tether exec true, daemons' state on tmpfs (NOT durable: bench only) p50 / p99",
            format!(
                "{:.2} / {:.2} ms",
                percentile(&tlat, 0.5),
                percentile(&tlat, 0.99)
            ),
        );
    }
    let (c50, c99) = (percentile(&cm, 0.5), percentile(&cm, 0.99));
    row(
        "OpenSSH ControlMaster ssh true p50 / p99",
        format!("{c50:.2} / {c99:.2} ms"),
    );
    row(
        "latency ratio (ControlMaster / tether) p50, p99",
        format!("{:.1}x, {:.1}x", c50 / t50, c99 / t99),
    );
    // The disk's own fdatasync right after, where the daemons keep their audit logs: each
    // request above waits for three of them in series (hub `exec.requested`, target
    // `exec.received`, hub `exec.result`).
    let sync = disk_fdatasync(&std::env::temp_dir(), iters);
    row(
        "disk fdatasync (500 B into a pre-zeroed file) p50 / p99",
        format!(
            "{:.2} / {:.2} ms",
            percentile(&sync, 0.5),
            percentile(&sync, 0.99)
        ),
    );
    if let Ok(n) = std::env::var("BENCH_PERF_STAT") {
        perf_stat(&hub, &targets[0], n.parse().unwrap_or(500), &mut row);
        if std::env::var("BENCH_PERF_THREADS").as_deref() == Ok("1") {
            perf_threads(&hub, &targets[0], n.parse().unwrap_or(500), &mut row);
        }
    }
    if let Ok(dir) = std::env::var("BENCH_TRACE") {
        trace_requests(
            &hub,
            &targets[0],
            Path::new(&dir),
            env_num("BENCH_TRACE_ITER", 100),
        );
    }
    drop(tmpfs);
    if std::env::var("BENCH_LATENCY_ONLY").as_deref() == Ok("1") {
        println!("\n| measurement | value |\n|---|---|");
        for (k, v) in &rows {
            println!("| {k} | {v} |");
        }
        return;
    }

    // Cold again, at the baselines' parallelism: wait until the reaper has closed every pooled
    // connection (tunnels stay up).
    std::thread::sleep(Duration::from_secs(5));
    let cold20 = tether_fan_out(&hub, 20, "uname -a");
    row(
        "tether cold fan-out, concurrency 20",
        format!("{:.2} s", cold20.as_secs_f64()),
    );

    let hosts_file = k.join("hosts");
    std::fs::write(&hosts_file, names.join("\n") + "\n").unwrap();
    let xargs = timed(&format!(
        "xargs -P 20 -I{{}} {ssh} -o ControlMaster=no {{}} uname -a < {} > /dev/null",
        hosts_file.display()
    ));
    row(
        "xargs -P 20 ssh, uname -a",
        format!("{:.2} s", xargs.as_secs_f64()),
    );
    row(
        "tether warm c20 vs xargs / cold c20 vs xargs",
        format!(
            "{:.1}x / {:.1}x",
            xargs.as_secs_f64() / percentile(&warm20, 0.5),
            xargs.as_secs_f64() / cold20.as_secs_f64()
        ),
    );

    let pssh = ["parallel-ssh", "pssh"]
        .into_iter()
        .find(|b| sh(&format!("command -v {b}")).status.success())
        .map(str::to_owned)
        .or_else(|| {
            let ok = sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pssh >/dev/null 2>&1")
                .status
                .success();
            ok.then(|| "parallel-ssh".to_owned())
        });
    match pssh {
        Some(p) => {
            let took = timed(&format!(
                "{p} -p 20 -h {} -x '-F {}/config -o ControlMaster=no' uname -a > /dev/null",
                hosts_file.display(),
                k.display()
            ));
            row(
                "parallel-ssh -p 20, uname -a",
                format!("{:.2} s", took.as_secs_f64()),
            );
        }
        None => row(
            "parallel-ssh -p 20",
            "skipped: pssh not installed and apt-get failed".to_owned(),
        ),
    }

    if std::env::var("BENCH_ANSIBLE").as_deref() != Ok("0") {
        ansible(&names, k, &sshd, &mut row, cold20, percentile(&warm20, 0.5));
    }

    println!("\n| measurement | value |\n|---|---|");
    for (k, v) in &rows {
        println!("| {k} | {v} |");
    }
    drop(targets);
}

fn ansible(
    names: &[String],
    k: &Path,
    sshd: &Sshd,
    row: &mut impl FnMut(&str, String),
    cold20: Duration,
    warm20: f64,
) {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_owned());
    let venv = PathBuf::from(home).join(".cache/tether-bench-ansible");
    let ansible = venv.join("bin/ansible");
    if !ansible.exists() {
        let ok = sh(&format!(
            "/usr/bin/python3 -m venv {v} && {v}/bin/pip install -q ansible-core >/dev/null 2>&1",
            v = venv.display()
        ))
        .status
        .success();
        if !ok || !ansible.exists() {
            row(
                "Ansible command module, forks 20",
                "skipped: pip could not install ansible-core (no network?)".to_owned(),
            );
            return;
        }
    }
    let mut inv = String::from("[all]\n");
    for name in names {
        inv.push_str(&format!("{name} ansible_host=127.0.0.1\n"));
    }
    inv.push_str(&format!(
        "[all:vars]\nansible_port={}\nansible_user={USER}\nansible_ssh_private_key_file={d}/id\nansible_python_interpreter=/usr/bin/python3\nansible_ssh_common_args='-o UserKnownHostsFile={d}/known_hosts -o HostKeyAlias=[127.0.0.1]:{} -o ControlMaster=no -o ControlPath=none'\n",
        sshd.port,
        sshd.port,
        d = k.display()
    ));
    std::fs::write(k.join("inventory"), inv).unwrap();
    let took = timed(&format!(
        "ANSIBLE_HOST_KEY_CHECKING=False ANSIBLE_SSH_ARGS='' {} all -i {}/inventory -m command -a 'uname -a' -f 20 > /dev/null",
        ansible.display(),
        k.display()
    ));
    row(
        "Ansible command module, forks 20",
        format!("{:.2} s", took.as_secs_f64()),
    );
    row(
        "tether cold c20 / warm c20 vs Ansible",
        format!(
            "{:.1}x / {:.1}x",
            took.as_secs_f64() / cold20.as_secs_f64(),
            took.as_secs_f64() / warm20
        ),
    );
}
