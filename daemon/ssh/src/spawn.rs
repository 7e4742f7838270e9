//! Starting a command's `/bin/sh` without forking the daemon.
//!
//! `std`/tokio start a child with `posix_spawn` (glibc: `clone(CLONE_VM | CLONE_VFORK)`, no copy
//! of the parent's address space) only when nothing has to happen in the child that
//! `posix_spawn` cannot express. A privilege drop (`ssh.run_as` while the daemon runs as root)
//! is such a thing: through `pre_exec` it makes std `fork` the whole multi-threaded daemon — its
//! page tables copied, and every page either side writes afterwards copied again — just to call
//! `setgroups`/`setgid`/`setuid` and `exec`. This module does what glibc's `posix_spawn` does,
//! plus the privilege drop:
//!
//! * everything that allocates or can fail softly is prepared in the parent: the `argv`/`envp`
//!   arrays, the working directory, the group list, the pipes, a child stack (`mmap`, with a
//!   guard page);
//! * `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)` runs the child on that stack in the parent's
//!   memory while the calling thread waits (the kernel resumes it when the child has called
//!   `execve` or exited); the other threads of the daemon keep running;
//! * the child only makes system calls: signal dispositions back to default and an empty signal
//!   mask (as std does), its own process group, stdio, working directory, then `setgroups`,
//!   `setresgid`, `setresuid` **as raw system calls** — glibc's wrappers of those broadcast the
//!   change to every thread of the process, which here would be the daemon's — and `execve`. A
//!   failing step stores its `errno` where the parent reads it and exits 127, and the parent
//!   reports it as the spawn's error;
//! * the parent gets a pidfd from the same `clone`, so waiting is `waitid(P_PIDFD)` when the
//!   pidfd turns readable (no `SIGCHLD` handling, no PID reuse race).
//!
//! [`spawn`] returns [`SpawnError::Unsupported`] when the kernel lacks `CLONE_PIDFD` (before
//! Linux 5.2); the caller then uses std's `Command`.
#![allow(unsafe_code)]

use std::ffi::{CString, c_void};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use crate::run_as::RunAs;

/// Size of the child's stack: it only runs the small function below (no allocation, no
/// formatting); glibc's `posix_spawn` uses 32 KiB plus the arguments.
const STACK: usize = 64 * 1024;

/// Why [`spawn`] did not start the command.
#[derive(Debug)]
pub enum SpawnError {
    /// The kernel cannot do it this way (no `CLONE_PIDFD`); use std's `Command`.
    Unsupported,
    /// Preparing or starting it failed (the command did not run).
    Io(io::Error),
}

/// What to run: `/bin/sh -c COMMAND` with exactly `env`, in `cwd`, as `run_as`.
pub struct ShellSpec<'a> {
    /// The command line given to `sh -c`.
    pub command: &'a str,
    /// The complete environment.
    pub env: &'a [(String, String)],
    /// The working directory.
    pub cwd: &'a std::path::Path,
    /// The user to switch to (when [`RunAs::drop`]).
    pub run_as: &'a RunAs,
}

/// A started command: its own process group (pgid = pid), stdin `/dev/null`, stdout and stderr
/// piped. Dropped before it was waited for, it is killed (`SIGKILL`) and reaped off the runtime.
pub struct Spawned {
    pid: i32,
    pidfd: Option<AsyncFd<OwnedFd>>,
    /// The read end of its stdout.
    pub stdout: Option<pipe::Receiver>,
    /// The read end of its stderr.
    pub stderr: Option<pipe::Receiver>,
}

/// Everything the child reads, built by the parent; the child only follows the pointers.
#[repr(C)]
struct ChildArgs {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    drop: bool,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: *const libc::gid_t,
    ngroups: usize,
    /// The errno of the step that failed (0: `execve` succeeded). Written by the child, read by
    /// the parent after `clone` returned (the child has exec'd or exited by then).
    errno: i32,
}

/// A string for the child: no interior NUL (the command came over SSH and may hold one).
fn cstring(s: &str, what: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the {what} contains a NUL byte"),
        )
    })
}

/// `fd` moved to a number above 2, so that `dup2` onto 0–2 never finds its source there.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own; the result is a new descriptor.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` was just created and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just created and nothing else owns them.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((above_stdio(r)?, above_stdio(w)?))
}

/// The child's stack: `STACK` bytes below a `PROT_NONE` guard page, unmapped on drop.
struct Stack {
    base: *mut c_void,
    len: usize,
}

impl Stack {
    fn new() -> io::Result<Stack> {
        let page = 4096;
        let len = STACK + page;
        // SAFETY: an anonymous private mapping at an address the kernel picks; nothing else
        // refers to it. The lowest page is made inaccessible so an overflow faults instead of
        // writing into other memory.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Stack { base, len };
        // SAFETY: the first page of the mapping just created.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The initial stack pointer (stacks grow down on every Linux target we build for).
    fn top(&self) -> *mut c_void {
        // SAFETY: one past the end of the mapping, the usual initial stack pointer; 16-byte
        // aligned because the mapping is page-aligned and its length a multiple of the page.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `Stack::new`; the child that used it has exec'd or
        // exited (CLONE_VFORK) before the parent gets here.
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

/// The child, on its own stack in the parent's memory, while the parent's thread is held by
/// `CLONE_VFORK`. System calls only: no allocation, no locks, no panics, nothing that touches
/// Rust or glibc state another thread might hold.
extern "C" fn child(arg: *mut c_void) -> libc::c_int {
    // SAFETY: `arg` points to the `ChildArgs` of the `spawn` call that is blocked in `clone`
    // until this function execs or exits, so it is valid and nothing else writes it.
    let a = unsafe { &mut *arg.cast::<ChildArgs>() };
    // SAFETY: each call below is a plain system call (or glibc's thin wrapper of one that
    // touches no shared state) on fds and strings the parent prepared and keeps alive.
    unsafe {
        // Signals: caught ones back to their default (a handler of the daemon must never run
        // here), SIGPIPE to its default as std does, then unblock everything (the parent
        // blocked all signals around clone).
        for sig in 1..65 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue; // glibc's internal signals: refused, and never sent to this child
            }
            if sig == libc::SIGPIPE
                || (old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN)
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        if libc::setpgid(0, 0) != 0
            || libc::dup2(a.stdin, 0) < 0
            || libc::dup2(a.stdout, 1) < 0
            || libc::dup2(a.stderr, 2) < 0
            || libc::chdir(a.cwd) != 0
        {
            return fail(a);
        }
        // Raw system calls: they change this process only (glibc's setgroups/setgid/setuid
        // would signal every thread of the daemon, whose memory this child shares).
        if a.drop
            && (libc::syscall(libc::SYS_setgroups, a.ngroups, a.groups) != 0
                || libc::syscall(libc::SYS_setresgid, a.gid, a.gid, a.gid) != 0
                || libc::syscall(libc::SYS_setresuid, a.uid, a.uid, a.uid) != 0)
        {
            return fail(a);
        }
        let empty: libc::sigset_t = {
            let mut s = std::mem::zeroed();
            libc::sigemptyset(&mut s);
            s
        };
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(a.path, a.argv, a.envp);
        fail(a)
    }
}

/// Records errno for the parent and exits the child (no atexit handlers, no flushing).
///
/// # Safety
/// Only from [`child`].
unsafe fn fail(a: &mut ChildArgs) -> libc::c_int {
    // SAFETY: errno of this task (its TLS is the parent thread's, which is suspended); the
    // write lands in `ChildArgs`, which the parent reads after clone returns.
    unsafe {
        a.errno = *libc::__errno_location();
        if a.errno == 0 {
            a.errno = libc::EIO;
        }
        libc::_exit(127)
    }
}

/// Starts `/bin/sh -c spec.command` (see the module doc).
pub fn spawn(spec: &ShellSpec<'_>) -> Result<Spawned, SpawnError> {
    let io = SpawnError::Io;
    let path = cstring("/bin/sh", "shell path").map_err(io)?;
    let argv_c = [
        cstring("sh", "argument").map_err(io)?,
        cstring("-c", "argument").map_err(io)?,
        cstring(spec.command, "command").map_err(io)?,
    ];
    let env_c = spec
        .env
        .iter()
        .map(|(k, v)| cstring(&format!("{k}={v}"), "environment"))
        .collect::<io::Result<Vec<_>>>()
        .map_err(io)?;
    let argv: Vec<*const libc::c_char> = argv_c
        .iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = env_c
        .iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let cwd = CString::new(spec.cwd.as_os_str().as_encoded_bytes()).map_err(|_| {
        io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the working directory contains a NUL byte",
        ))
    })?;
    let groups: Vec<libc::gid_t> = spec.run_as.groups.iter().map(|g| g.as_raw()).collect();
    let null = above_stdio(std::fs::File::open("/dev/null").map_err(io)?.into()).map_err(io)?;
    let (out_r, out_w) = pipe_cloexec().map_err(io)?;
    let (err_r, err_w) = pipe_cloexec().map_err(io)?;
    let stack = Stack::new().map_err(io)?;
    let mut args = ChildArgs {
        path: path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: cwd.as_ptr(),
        stdin: null.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        drop: spec.run_as.drop,
        uid: spec.run_as.uid.as_raw(),
        gid: spec.run_as.gid.as_raw(),
        groups: groups.as_ptr(),
        ngroups: groups.len(),
        errno: 0,
    };
    let mut pidfd: libc::c_int = -1;
    // SAFETY: all signals are blocked on this thread around clone so that no handler of the
    // daemon can run in the child before it reset them (the child unblocks them itself right
    // before execve); the old mask is restored right after. `child` runs on `stack` with
    // `args`, both alive until clone returns, which with CLONE_VFORK is after the child exec'd
    // or exited; the pidfd is written to `pidfd` (CLONE_PIDFD with the parent-tid argument).
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            (&raw mut args).cast(),
            &raw mut pidfd,
        );
        let clone_errno = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(match clone_errno.raw_os_error() {
                Some(libc::EINVAL | libc::ENOSYS) => SpawnError::Unsupported,
                _ => SpawnError::Io(clone_errno),
            });
        }
        pid
    };
    drop(stack);
    // SAFETY: clone succeeded with CLONE_PIDFD, so `pidfd` is a new descriptor owned by us.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // SAFETY: `args` is alive; the child that may have written it has exec'd or exited.
    let errno = unsafe { std::ptr::read_volatile(&raw const args.errno) };
    if errno != 0 {
        // The child exited 127 without running anything; reap it, report why.
        let _ = wait_blocking(pidfd.as_raw_fd());
        return Err(SpawnError::Io(io::Error::from_raw_os_error(errno)));
    }
    drop((null, out_w, err_w));
    // SAFETY: an `OwnedFd` always returns the same open descriptor from `as_raw_fd` and keeps
    // it open until the `AsyncFd` gives it back or drops it.
    let registered =
        unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) };
    let pidfd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            let (fd, e) = e.into_parts();
            kill_and_reap(fd);
            return Err(SpawnError::Io(e));
        }
    };
    // From here a failure drops `spawned`, which kills and reaps the child.
    let mut spawned = Spawned {
        pid,
        pidfd: Some(pidfd),
        stdout: None,
        stderr: None,
    };
    spawned.stdout = Some(pipe::Receiver::from_owned_fd(out_r).map_err(io)?);
    spawned.stderr = Some(pipe::Receiver::from_owned_fd(err_r).map_err(io)?);
    Ok(spawned)
}

/// `waitid(P_PIDFD, fd, WEXITED)`: the exit status of the child behind `fd`, reaping it.
fn wait_blocking(fd: RawFd) -> io::Result<ExitStatus> {
    // SAFETY: `siginfo_t` is plain data the kernel fills; `fd` is a pidfd we own.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        loop {
            if libc::waitid(libc::P_PIDFD, fd as libc::id_t, &mut info, libc::WEXITED) == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let status = info.si_status();
        Ok(match info.si_code {
            libc::CLD_EXITED => ExitStatus::from_raw((status & 0xff) << 8),
            libc::CLD_DUMPED => ExitStatus::from_raw((status & 0x7f) | 0x80),
            _ => ExitStatus::from_raw(status & 0x7f),
        })
    }
}

impl Spawned {
    /// Its pid, which is also its process group.
    pub fn id(&self) -> i32 {
        self.pid
    }

    /// Waits for it to end and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        let Some(fd) = self.pidfd.as_ref() else {
            return Err(io::Error::other("the command was already waited for"));
        };
        // A pidfd turns readable when its process has exited.
        drop(fd.readable().await?);
        let fd = self.pidfd.take().map(AsyncFd::into_inner);
        match fd {
            Some(fd) => wait_blocking(fd.as_raw_fd()),
            None => Err(io::Error::other("the command was already waited for")),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(fd) = self.pidfd.take().map(AsyncFd::into_inner) {
            kill_and_reap(fd);
        }
    }
}

/// A child not waited for: kill it (through its pidfd, so it cannot be another process) and
/// reap it on a thread of its own, as tokio's `kill_on_drop` does, off the caller's path.
fn kill_and_reap(fd: OwnedFd) {
    // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
    std::thread::spawn(move || {
        let _ = wait_blocking(fd.as_raw_fd());
    });
}

/// One end of a command's output.
pub type Output = std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>;

/// A command's `/bin/sh`, started by [`spawn`] or, where the kernel cannot, by std's `Command`.
pub enum Shell {
    /// Started by [`spawn`].
    Cloned(Spawned),
    /// Started by tokio's `Command` (fork when a privilege drop is needed).
    Forked(tokio::process::Child),
}

impl Shell {
    /// Starts `spec`: [`spawn`], or std's `Command` when the kernel lacks `CLONE_PIDFD`.
    pub fn start(spec: &ShellSpec<'_>) -> io::Result<Shell> {
        match spawn(spec) {
            Ok(s) => return Ok(Shell::Cloned(s)),
            Err(SpawnError::Io(e)) => return Err(e),
            Err(SpawnError::Unsupported) => {}
        }
        Shell::forked(spec)
    }

    /// Starts `spec` with tokio's `Command` (a fork of the daemon when [`RunAs::drop`]): the
    /// fallback of [`Shell::start`], and the baseline of the `spawn` bench.
    pub fn forked(spec: &ShellSpec<'_>) -> io::Result<Shell> {
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(spec.command)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(spec.cwd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        spec.run_as.apply(&mut cmd);
        cmd.spawn().map(Shell::Forked)
    }

    /// Its pid (= its process group), if it has not been reaped.
    pub fn id(&self) -> Option<u32> {
        match self {
            Shell::Cloned(s) => u32::try_from(s.id()).ok(),
            Shell::Forked(c) => c.id(),
        }
    }

    /// Takes its stdout and stderr.
    pub fn take_output(&mut self) -> (Option<Output>, Option<Output>) {
        fn boxed<R: tokio::io::AsyncRead + Send + 'static>(r: Option<R>) -> Option<Output> {
            r.map(|r| Box::pin(r) as Output)
        }
        match self {
            Shell::Cloned(s) => (boxed(s.stdout.take()), boxed(s.stderr.take())),
            Shell::Forked(c) => (boxed(c.stdout.take()), boxed(c.stderr.take())),
        }
    }

    /// Waits for it to end and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            Shell::Cloned(s) => s.wait().await,
            Shell::Forked(c) => c.wait().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    fn me() -> RunAs {
        RunAs::resolve(None).expect("own user")
    }

    async fn read_all(r: Option<Output>) -> String {
        let mut s = String::new();
        if let Some(mut r) = r {
            r.read_to_string(&mut s).await.expect("read");
        }
        s
    }

    #[tokio::test]
    async fn runs_with_exactly_the_environment_stdio_and_process_group_given() {
        let run_as = me();
        let env = vec![
            ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
            ("ONLY".to_owned(), "this".to_owned()),
        ];
        let spec = ShellSpec {
            command: "echo out=$ONLY; env | wc -l; echo err >&2; \
                      echo pg=$(cut -d' ' -f5 /proc/$$/stat) pid=$$; \
                      echo in=$(readlink /proc/$$/fd/0); pwd; \
                      while read -r k v; do case $k in SigBlk:) echo \"$k $v\";; esac; \
                      done < /proc/$$/status; exit 3",
            env: &env,
            cwd: std::path::Path::new("/tmp"),
            run_as: &run_as,
        };
        let mut s = spawn(&spec).map_err(|e| format!("{e:?}")).expect("spawn");
        let pid = s.id();
        let (out, err) = (s.stdout.take(), s.stderr.take());
        let (out, err) = tokio::join!(
            read_all(out.map(|r| Box::pin(r) as Output)),
            read_all(err.map(|r| Box::pin(r) as Output))
        );
        let status = s.wait().await.expect("wait");
        assert_eq!(status.code(), Some(3));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "out=this");
        // PATH, ONLY and the shell's own PWD (and nothing of the test's environment).
        assert!(lines[1].trim().parse::<u32>().expect("count") <= 4, "{out}");
        assert_eq!(lines[2], format!("pg={pid} pid={pid}"));
        assert_eq!(lines[3], "in=/dev/null");
        assert_eq!(lines[4], "/tmp");
        // Read by the shell's builtins, not by a forked `grep`: dash blocks every signal
        // around its own vfork of a child, so another process reading the shell's status
        // then can see that transient mask (a race this test once lost).
        assert_eq!(lines[5].split_whitespace().nth(1), Some("0000000000000000"));
        assert_eq!(err, "err\n");
    }

    #[tokio::test]
    async fn a_step_that_fails_before_exec_is_the_spawn_error_and_nothing_runs() {
        let run_as = me();
        let marks = tempfile::tempdir().expect("tempdir");
        let mark = marks.path().join("ran");
        let command = format!("touch {}", mark.display());
        let spec = ShellSpec {
            command: &command,
            env: &[],
            cwd: std::path::Path::new("/no/such/dir/tether"),
            run_as: &run_as,
        };
        match spawn(&spec) {
            Err(SpawnError::Io(e)) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}"),
            Err(SpawnError::Unsupported) => panic!("CLONE_PIDFD unsupported here"),
            Ok(_) => panic!("spawned in a directory that does not exist"),
        }
        assert!(!mark.exists());
        let nul = ShellSpec {
            command: "true\0false",
            ..spec
        };
        assert!(matches!(spawn(&nul), Err(SpawnError::Io(_))));
    }

    #[tokio::test]
    async fn a_signal_ends_it_and_dropping_it_kills_it() {
        let run_as = me();
        let spec = ShellSpec {
            command: "exec sleep 30",
            env: &[],
            cwd: std::path::Path::new("/"),
            run_as: &run_as,
        };
        let mut s = spawn(&spec).map_err(|e| format!("{e:?}")).expect("spawn");
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(s.id()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("killpg");
        let status = s.wait().await.expect("wait");
        assert_eq!(status.signal(), Some(libc::SIGTERM));

        let s = spawn(&spec).map_err(|e| format!("{e:?}")).expect("spawn");
        let pid = s.id();
        drop(s);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        // Killed and reaped: the pid no longer exists (not even as a zombie).
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(std::time::Instant::now() < deadline, "still there");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn as_root_it_drops_to_the_user_and_its_groups() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: the privilege drop needs root");
            return;
        }
        let nobody = RunAs::resolve(Some("nobody")).expect("nobody");
        let spec = ShellSpec {
            command: "echo $(id -u) $(id -g) $(id -G)",
            env: &[("PATH".to_owned(), "/usr/bin:/bin".to_owned())],
            cwd: std::path::Path::new("/"),
            run_as: &nobody,
        };
        let mut s = spawn(&spec).map_err(|e| format!("{e:?}")).expect("spawn");
        let out = read_all(s.stdout.take().map(|r| Box::pin(r) as Output)).await;
        assert!(s.wait().await.expect("wait").success());
        let groups: Vec<String> = nobody.groups.iter().map(|g| g.to_string()).collect();
        assert_eq!(
            out.trim(),
            format!("{} {} {}", nobody.uid, nobody.gid, groups.join(" "))
        );
        // The daemon (this test process) kept its own credentials.
        assert!(nix::unistd::geteuid().is_root());
        assert!(nix::unistd::getegid().as_raw() == 0);
    }
}
