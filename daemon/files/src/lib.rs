//! File access confined below a target's `allowed_roots` (`[files]` in `tetherd.toml`).
//!
//! Every path goes through [`Confined`], which the target's SFTP server calls for each
//! operation:
//!
//! * **Resolution.** The path must be absolute and lexically below one of the roots; the part
//!   below the root is resolved by the kernel with `openat2(RESOLVE_BENEATH |
//!   RESOLVE_NO_MAGICLINKS)` relative to a directory descriptor of the root opened at start.
//!   `..` that would climb above the root, absolute symlinks, relative symlinks (or symlinked
//!   directories) that point outside, and magic links (`/proc/self/root`, `/proc/PID/fd/N`)
//!   all fail with [`FilesError::Escape`]. **Decision:** symlinks that stay inside the root
//!   are followed (`RESOLVE_NO_SYMLINKS` is not set): trees like `sites-enabled/x ->
//!   ../sites-available/x` keep working, and the kernel, not our code, proves that each step
//!   stays beneath the root.
//! * **deny_paths** (regexes, like the policy's) are matched against the path as asked *and*
//!   against the path the descriptor really has (read back from `/proc/self/fd`), so a symlink
//!   inside the root can't reach a denied file under another name.
//! * **Hard links.** A regular file with `st_nlink > 1` is refused for reading and for
//!   replacing ([`FilesError::HardLinked`]): `RESOLVE_BENEATH` can't tell a hard link to
//!   `/etc/shadow` from an ordinary file, so any file with several names is treated as
//!   possibly outside.
//! * **Uploads** ([`Upload`]) write a temp file `.tether-upload-RANDOM` (mode 0600, `O_EXCL`)
//!   in the destination's directory, enforce `max_file_size` on every write, then on
//!   [`Upload::commit`] fsync it, compare the SHA-256 the hub announced, set the requested
//!   mode, `renameat` it over the destination and fsync the directory. Dropping an [`Upload`]
//!   without committing (an error, an interrupted transfer, ENOSPC, a hash mismatch) removes
//!   the temp file; the old file is never opened for writing. Two racing uploads each rename
//!   their own complete temp file: the last rename wins and the file is always one of them,
//!   whole. A daemon killed mid-upload can leave a `.tether-upload-*` file behind (never the
//!   destination).
#![forbid(unsafe_code)]

mod error;

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat};
use sha2::{Digest, Sha256};

pub use error::FilesError;

/// Default `max_file_size`: 100 MiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 100 * 1024 * 1024;

/// Prefix of upload temp files.
pub const TEMP_PREFIX: &str = ".tether-upload-";

/// Longest path accepted (bytes).
pub const MAX_PATH_BYTES: usize = 4096;

/// The settings [`Confined`] is built from (`[files]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Directories file operations must stay below. Empty: file transfer is off.
    pub allowed_roots: Vec<String>,
    /// Regexes of paths refused even below a root (matched anywhere unless anchored).
    pub deny_paths: Vec<String>,
    /// Largest file accepted by an upload, bytes.
    pub max_file_size: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            allowed_roots: Vec::new(),
            deny_paths: Vec::new(),
            max_file_size: DEFAULT_MAX_FILE_SIZE,
        }
    }
}

/// One allowed root: its path as configured (normalized), as it really is, and a descriptor.
#[derive(Debug)]
struct Root {
    path: String,
    real: String,
    fd: OwnedFd,
}

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (only reported by listings, which don't follow links).
    Symlink,
    /// Anything else (device, FIFO, socket).
    Other,
}

impl Kind {
    fn of(st: &FileStat) -> Kind {
        match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFREG => Kind::File,
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        }
    }

    /// `file`, `dir`, `symlink` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Other => "other",
        }
    }

    fn article(self) -> &'static str {
        match self {
            Kind::File => "a regular file",
            Kind::Dir => "a directory",
            Kind::Symlink => "a symbolic link",
            Kind::Other => "a special file (device, FIFO or socket)",
        }
    }
}

/// What `stat` and `list` report about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// The name (last component) or the full path for `stat`.
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`0o644`).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Hard link count.
    pub nlink: u64,
}

impl Meta {
    fn from_stat(name: String, st: &FileStat) -> Meta {
        Meta {
            name,
            kind: Kind::of(st),
            size: st.st_size.max(0) as u64,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: st.st_mtime,
            nlink: st.st_nlink,
        }
    }
}

/// File access confined below the allowed roots. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Confined {
    roots: Vec<Root>,
    /// The first configured root, as configured: where relative paths start.
    home: Option<String>,
    deny: Vec<regex::Regex>,
    deny_set: regex::RegexSet,
    max_file_size: u64,
}

/// Lexically normalizes an absolute path (`//`, `.`, trailing `/`); `..` is kept (the kernel
/// resolves it beneath the root). `None` if not absolute, too long or with a NUL.
fn clean(path: &str) -> Option<String> {
    if !path.starts_with('/') || path.len() > MAX_PATH_BYTES || path.contains('\0') {
        return None;
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    Some(format!("/{}", parts.join("/")))
}

fn io(what: &'static str, path: &str, e: Errno) -> FilesError {
    if matches!(e, Errno::EACCES | Errno::EPERM) {
        return FilesError::PermissionDenied {
            path: path.to_owned(),
            uid: nix::unistd::geteuid().as_raw(),
        };
    }
    FilesError::Io {
        what,
        path: path.to_owned(),
        source: std::io::Error::from(e),
    }
}

impl Confined {
    /// Opens every root (each must be an existing directory) and compiles `deny_paths`.
    pub fn new(settings: &Settings) -> Result<Self, FilesError> {
        let mut roots = Vec::new();
        for r in &settings.allowed_roots {
            let path = clean(r)
                .filter(|p| !p.split('/').any(|c| c == ".."))
                .ok_or_else(|| {
                    FilesError::Config(format!(
                        "allowed_roots entry {r:?} is not an absolute path without `..`"
                    ))
                })?;
            let real = std::fs::canonicalize(&path).map_err(|e| {
                FilesError::Config(format!(
                    "allowed_roots entry {path}: {e} (create the directory or remove the entry)"
                ))
            })?;
            let fd = nix::fcntl::open(
                &real,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| {
                FilesError::Config(format!(
                    "allowed_roots entry {path} is not a directory: {e}"
                ))
            })?;
            roots.push(Root {
                path,
                real: real.to_string_lossy().into_owned(),
                fd,
            });
        }
        let home = roots.first().map(|r: &Root| r.path.clone());
        // Longest root first, so the most specific one is chosen.
        roots.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
        let deny = settings
            .deny_paths
            .iter()
            .map(|p| {
                regex::Regex::new(p).map_err(|e| {
                    FilesError::Config(format!("deny_paths entry {p:?} is not a valid regex: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let deny_set = regex::RegexSet::new(&settings.deny_paths)
            .map_err(|e| FilesError::Config(format!("deny_paths: {e}")))?;
        if settings.max_file_size == 0 {
            return Err(FilesError::Config(
                "max_file_size must be more than 0".to_owned(),
            ));
        }
        Ok(Confined {
            roots,
            home,
            deny,
            deny_set,
            max_file_size: settings.max_file_size,
        })
    }

    /// Whether file transfer is on (some root is configured).
    pub fn enabled(&self) -> bool {
        !self.roots.is_empty()
    }

    /// The first configured root: the starting directory that stock SFTP clients are given for
    /// `.`, and what relative paths are taken against. `None` when file transfer is off.
    pub fn home(&self) -> Option<&str> {
        self.home.as_deref()
    }

    /// The upload size limit.
    pub fn max_file_size(&self) -> u64 {
        self.max_file_size
    }

    fn roots_list(&self) -> String {
        self.roots
            .iter()
            .map(|r| r.path.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn check_deny(&self, path: &str) -> Result<(), FilesError> {
        if let Some(i) = self.deny_set.matches(path).iter().next() {
            return Err(FilesError::Denied {
                path: path.to_owned(),
                rule: self
                    .deny
                    .get(i)
                    .map(|r| r.as_str().to_owned())
                    .unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// The root `path` is below and the relative rest (`.` for the root itself).
    fn locate<'a>(&'a self, path: &str) -> Result<(&'a Root, String, String), FilesError> {
        if self.roots.is_empty() {
            return Err(FilesError::Disabled);
        }
        let cleaned = clean(path).ok_or_else(|| FilesError::InvalidPath {
            path: path.to_owned(),
        })?;
        for root in &self.roots {
            let rest = if cleaned == root.path {
                Some("")
            } else if root.path == "/" {
                Some(&cleaned[1..])
            } else {
                cleaned
                    .strip_prefix(&root.path)
                    .and_then(|r| r.strip_prefix('/'))
            };
            if let Some(rest) = rest {
                self.check_deny(&cleaned)?;
                let rel = if rest.is_empty() {
                    ".".to_owned()
                } else {
                    rest.to_owned()
                };
                return Ok((root, rel, cleaned));
            }
        }
        Err(FilesError::OutsideRoots {
            path: cleaned,
            roots: self.roots_list(),
        })
    }

    /// `openat2` below `root` with the confinement flags; maps the kernel's refusals.
    fn open_beneath(
        &self,
        root: &Root,
        rel: &str,
        shown: &str,
        flags: OFlag,
    ) -> Result<OwnedFd, FilesError> {
        // openat2 refuses O_NOCTTY with O_PATH (only O_DIRECTORY/O_NOFOLLOW/O_CLOEXEC go with it).
        let extra = if flags.contains(OFlag::O_PATH) {
            OFlag::O_CLOEXEC
        } else {
            OFlag::O_CLOEXEC | OFlag::O_NOCTTY
        };
        let how = OpenHow::new()
            .flags(flags | extra)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = openat2(root.fd.as_fd(), rel, how).map_err(|e| match e {
            // EXDEV: a step would leave the root; ELOOP: a magic link (or a symlink loop).
            Errno::EXDEV | Errno::ELOOP => FilesError::Escape {
                path: shown.to_owned(),
                root: root.path.clone(),
            },
            Errno::ENOENT => FilesError::NotFound {
                path: shown.to_owned(),
            },
            Errno::ENOTDIR => FilesError::WrongType {
                path: shown.to_owned(),
                found: "below something that is not a directory",
                wanted: "a directory",
            },
            e => io("cannot open", shown, e),
        })?;
        self.check_real(root, &fd, shown)?;
        Ok(fd)
    }

    /// The path `fd` really has: checked to be below the root's real path and against
    /// `deny_paths` (so an in-root symlink can't reach a denied file by another name).
    fn check_real(&self, root: &Root, fd: &OwnedFd, shown: &str) -> Result<String, FilesError> {
        use std::os::fd::AsRawFd;
        let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let real: OsString = nix::fcntl::readlink(link.as_str())
            .map_err(|e| io("cannot tell where this resolves to:", shown, e))?;
        let real = String::from_utf8_lossy(real.as_bytes()).into_owned();
        let inside = real == root.real
            || root.real == "/"
            || real
                .strip_prefix(&root.real)
                .is_some_and(|r| r.starts_with('/'));
        if !inside {
            return Err(FilesError::Escape {
                path: shown.to_owned(),
                root: root.path.clone(),
            });
        }
        // Check the real path as if it were spelled under the configured root name too.
        self.check_deny(&real)?;
        if real != root.real {
            let spelled = format!(
                "{}{}",
                root.path.trim_end_matches('/'),
                &real[root.real.len()..]
            );
            self.check_deny(&spelled)?;
        }
        Ok(real)
    }

    fn fstat(fd: &OwnedFd, shown: &str) -> Result<FileStat, FilesError> {
        fstat(fd.as_fd()).map_err(|e| io("cannot stat", shown, e))
    }

    /// Metadata of `path` (following in-root symlinks).
    pub fn stat(&self, path: &str) -> Result<Meta, FilesError> {
        let (root, rel, shown) = self.locate(path)?;
        let fd = self.open_beneath(root, &rel, &shown, OFlag::O_PATH)?;
        let st = Self::fstat(&fd, &shown)?;
        Ok(Meta::from_stat(shown, &st))
    }

    /// Opens a regular file for reading. Refuses other kinds and files with several links.
    pub fn open_read(&self, path: &str) -> Result<(File, Meta), FilesError> {
        let (root, rel, shown) = self.locate(path)?;
        // Look first through an O_PATH descriptor, so a device or FIFO is never opened.
        let probe = self.open_beneath(root, &rel, &shown, OFlag::O_PATH)?;
        let before = Self::fstat(&probe, &shown)?;
        let kind = Kind::of(&before);
        if kind != Kind::File {
            return Err(FilesError::WrongType {
                path: shown,
                found: kind.article(),
                wanted: "a regular file",
            });
        }
        // O_NONBLOCK: should the path have been swapped for a FIFO meanwhile, the open must
        // not block; the identity check below refuses it.
        let fd = self.open_beneath(root, &rel, &shown, OFlag::O_RDONLY | OFlag::O_NONBLOCK)?;
        let st = Self::fstat(&fd, &shown)?;
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino) {
            return Err(FilesError::Io {
                what: "changed while it was opened:",
                path: shown,
                source: std::io::Error::other("retry"),
            });
        }
        let meta = Meta::from_stat(shown.clone(), &st);
        if meta.kind != Kind::File {
            return Err(FilesError::WrongType {
                path: shown,
                found: meta.kind.article(),
                wanted: "a regular file",
            });
        }
        if meta.nlink > 1 {
            return Err(FilesError::HardLinked {
                path: shown,
                links: meta.nlink,
            });
        }
        let file = File::from(fd);
        // Reads are blocking from here on.
        let _ = nix::fcntl::fcntl(file.as_fd(), nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()));
        Ok((file, meta))
    }

    /// The entries of directory `path` (not following symlinks; `.`/`..` and entries matching
    /// `deny_paths` are left out), sorted by name.
    pub fn list(&self, path: &str) -> Result<Vec<Meta>, FilesError> {
        let (root, rel, shown) = self.locate(path)?;
        let fd = self.open_beneath(root, &rel, &shown, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(|e| io("cannot list", &shown, e))?;
        let mut out = Vec::new();
        let names: Vec<Vec<u8>> = dir
            .iter()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_bytes().to_vec())
            .filter(|n| n.as_slice() != b"." && n.as_slice() != b"..")
            .collect();
        for name in names {
            let name_s = String::from_utf8_lossy(&name).into_owned();
            let full = format!("{}/{}", shown.trim_end_matches('/'), name_s);
            if self.deny_set.is_match(&full) {
                continue;
            }
            let Ok(st) = fstatat(
                dir.as_fd(),
                Path::new(std::ffi::OsStr::from_bytes(&name)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) else {
                continue;
            };
            out.push(Meta::from_stat(name_s, &st));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Starts an upload to `path` with permission bits `mode` (`None`: the old file's mode, or
    /// 0644 for a new file). The directory must exist below a root; an existing destination
    /// must be a regular file with one link.
    pub fn begin_upload(&self, path: &str, mode: Option<u32>) -> Result<Upload, FilesError> {
        let (root, rel, shown) = self.locate(path)?;
        let (dir_rel, name) = match rel.rsplit_once('/') {
            Some((d, n)) => (d.to_owned(), n.to_owned()),
            None => (".".to_owned(), rel.clone()),
        };
        if name == "." || name == ".." || name.is_empty() {
            return Err(FilesError::WrongType {
                path: shown,
                found: "a directory",
                wanted: "a regular file",
            });
        }
        let dir =
            self.open_beneath(root, &dir_rel, &shown, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let dir_real = self.check_real(root, &dir, &shown)?;
        self.check_deny(&format!("{}/{}", dir_real.trim_end_matches('/'), name))?;
        let old_mode = match fstatat(
            dir.as_fd(),
            name.as_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => {
                let kind = Kind::of(&st);
                if kind != Kind::File {
                    return Err(FilesError::WrongType {
                        path: shown,
                        found: kind.article(),
                        wanted: "a regular file (or nothing)",
                    });
                }
                if st.st_nlink > 1 {
                    return Err(FilesError::HardLinked {
                        path: shown,
                        links: st.st_nlink,
                    });
                }
                Some(st.st_mode & 0o7777)
            }
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(io("cannot stat", &shown, e)),
        };
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| FilesError::Io {
            what: "no randomness for a temp name next to",
            path: shown.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let tmp_name = format!("{TEMP_PREFIX}{}", hex::encode(random));
        let fd = nix::fcntl::openat(
            dir.as_fd(),
            tmp_name.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| io("cannot create a temp file next to", &shown, e))?;
        Ok(Upload {
            dir,
            tmp_name: Some(tmp_name),
            name,
            shown,
            file: File::from(fd),
            hasher: Sha256::new(),
            written: 0,
            max: self.max_file_size,
            mode: mode.or(old_mode).unwrap_or(0o644) & 0o7777,
            times: None,
        })
    }
}

impl Confined {
    /// The directory that will hold `path`'s last component (opened beneath its root, checked
    /// like any other path) and that component. Refuses the root itself and names ending in
    /// `.`/`..`, which would act on a directory above the entry named.
    fn parent(&self, path: &str) -> Result<(OwnedFd, String, String), FilesError> {
        let (root, rel, shown) = self.locate(path)?;
        let (dir_rel, name) = match rel.rsplit_once('/') {
            Some((d, n)) => (d.to_owned(), n.to_owned()),
            None => (".".to_owned(), rel.clone()),
        };
        if name == "." || name == ".." || name.is_empty() {
            return Err(FilesError::NotAnEntry { path: shown });
        }
        let dir =
            self.open_beneath(root, &dir_rel, &shown, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let dir_real = self.check_real(root, &dir, &shown)?;
        self.check_deny(&format!("{}/{}", dir_real.trim_end_matches('/'), name))?;
        Ok((dir, name, shown))
    }

    fn lstat_in(dir: &OwnedFd, name: &str, shown: &str) -> Result<FileStat, FilesError> {
        fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| match e {
            Errno::ENOENT => FilesError::NotFound {
                path: shown.to_owned(),
            },
            e => io("cannot stat", shown, e),
        })
    }

    /// Removes the file (or symbolic link: the link itself, never what it points to) at
    /// `path`. Directories are refused (use [`Confined::rmdir`]).
    pub fn remove(&self, path: &str) -> Result<(), FilesError> {
        let (dir, name, shown) = self.parent(path)?;
        let st = Self::lstat_in(&dir, &name, &shown)?;
        if Kind::of(&st) == Kind::Dir {
            return Err(FilesError::WrongType {
                path: shown,
                found: "a directory",
                wanted: "a file (remove directories with rmdir)",
            });
        }
        nix::unistd::unlinkat(
            dir.as_fd(),
            name.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )
        .map_err(|e| io("cannot remove", &shown, e))?;
        nix::unistd::fsync(dir.as_fd()).map_err(|e| io("cannot fsync the directory of", &shown, e))
    }

    /// Removes the empty directory at `path` (never an allowed root itself).
    pub fn rmdir(&self, path: &str) -> Result<(), FilesError> {
        let (dir, name, shown) = self.parent(path)?;
        let st = Self::lstat_in(&dir, &name, &shown)?;
        let kind = Kind::of(&st);
        if kind != Kind::Dir {
            return Err(FilesError::WrongType {
                path: shown,
                found: kind.article(),
                wanted: "a directory",
            });
        }
        nix::unistd::unlinkat(
            dir.as_fd(),
            name.as_str(),
            nix::unistd::UnlinkatFlags::RemoveDir,
        )
        .map_err(|e| match e {
            Errno::ENOTEMPTY | Errno::EEXIST => FilesError::NotEmpty {
                path: shown.clone(),
            },
            e => io("cannot remove the directory", &shown, e),
        })?;
        nix::unistd::fsync(dir.as_fd()).map_err(|e| io("cannot fsync the directory of", &shown, e))
    }

    /// Creates the directory `path` with permission bits `mode` (`None`: 0755, less the
    /// process umask); its parent must exist below a root.
    pub fn mkdir(&self, path: &str, mode: Option<u32>) -> Result<(), FilesError> {
        let (dir, name, shown) = self.parent(path)?;
        nix::sys::stat::mkdirat(
            dir.as_fd(),
            name.as_str(),
            Mode::from_bits_truncate(mode.unwrap_or(0o755) & 0o7777),
        )
        .map_err(|e| match e {
            Errno::EEXIST => FilesError::Exists {
                path: shown.clone(),
            },
            e => io("cannot create the directory", &shown, e),
        })?;
        nix::unistd::fsync(dir.as_fd()).map_err(|e| io("cannot fsync the directory of", &shown, e))
    }

    /// Renames `from` to `to`, both below the roots; an existing `to` is not replaced (SFTP v3
    /// semantics, and no file is ever lost to a typo). A symbolic link is renamed as a link.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), FilesError> {
        let (from_dir, from_name, from_shown) = self.parent(from)?;
        let (to_dir, to_name, to_shown) = self.parent(to)?;
        Self::lstat_in(&from_dir, &from_name, &from_shown)?;
        nix::fcntl::renameat2(
            from_dir.as_fd(),
            from_name.as_str(),
            to_dir.as_fd(),
            to_name.as_str(),
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(|e| match e {
            Errno::EEXIST => FilesError::Exists {
                path: to_shown.clone(),
            },
            e => io(
                "cannot rename to",
                &format!("{from_shown} -> {to_shown}"),
                e,
            ),
        })?;
        nix::unistd::fsync(to_dir.as_fd())
            .map_err(|e| io("cannot fsync the directory of", &to_shown, e))?;
        nix::unistd::fsync(from_dir.as_fd())
            .map_err(|e| io("cannot fsync the directory of", &from_shown, e))
    }

    /// Sets the permission bits and/or the access and modification times (seconds since the
    /// epoch) of `path` (following in-root symlinks). A regular file with several hard links
    /// is refused, as for reading: the other name may live outside the roots.
    pub fn set_attrs(
        &self,
        path: &str,
        mode: Option<u32>,
        times: Option<(i64, i64)>,
    ) -> Result<(), FilesError> {
        let (root, rel, shown) = self.locate(path)?;
        let fd = self.open_beneath(root, &rel, &shown, OFlag::O_PATH)?;
        let st = Self::fstat(&fd, &shown)?;
        if Kind::of(&st) == Kind::File && st.st_nlink > 1 {
            return Err(FilesError::HardLinked {
                path: shown,
                links: st.st_nlink,
            });
        }
        // The descriptor's /proc entry names exactly the inode opened beneath the root, so
        // nothing is resolved by name again.
        use std::os::fd::AsRawFd;
        let by_fd = format!("/proc/self/fd/{}", fd.as_raw_fd());
        if let Some(mode) = mode {
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                by_fd.as_str(),
                Mode::from_bits_truncate(mode & 0o7777),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| io("cannot change the mode of", &shown, e))?;
        }
        if let Some((atime, mtime)) = times {
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                by_fd.as_str(),
                &nix::sys::time::TimeSpec::new(atime, 0),
                &nix::sys::time::TimeSpec::new(mtime, 0),
                nix::sys::stat::UtimensatFlags::FollowSymlink,
            )
            .map_err(|e| io("cannot set the times of", &shown, e))?;
        }
        Ok(())
    }
}

/// An upload in progress: a temp file next to the destination. Dropped without
/// [`Upload::commit`], it removes its temp file and leaves the destination as it was.
#[derive(Debug)]
pub struct Upload {
    dir: OwnedFd,
    tmp_name: Option<String>,
    name: String,
    shown: String,
    file: File,
    hasher: Sha256,
    written: u64,
    max: u64,
    mode: u32,
    times: Option<(i64, i64)>,
}

/// A finished upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The destination.
    pub path: String,
    /// Bytes written.
    pub size: u64,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
}

impl Upload {
    /// The destination path.
    pub fn path(&self) -> &str {
        &self.shown
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Sets the permission bits the file gets when committed (SFTP `fsetstat`, `put -p`).
    pub fn set_mode(&mut self, mode: u32) {
        self.mode = mode & 0o7777;
    }

    /// Sets the access and modification times (seconds since the epoch) the file gets when
    /// committed.
    pub fn set_times(&mut self, atime: i64, mtime: i64) {
        self.times = Some((atime, mtime));
    }

    /// Appends `data`, which must start at `offset` (= bytes written so far). Refuses data that
    /// would take the file past `max_file_size` before writing any of it.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), FilesError> {
        if offset != self.written {
            return Err(FilesError::OutOfOrder {
                path: self.shown.clone(),
                offset,
                expected: self.written,
            });
        }
        let end = self.written.saturating_add(data.len() as u64);
        if end > self.max {
            return Err(FilesError::TooLarge {
                path: self.shown.clone(),
                limit: self.max,
            });
        }
        self.file.write_all(data).map_err(|source| FilesError::Io {
            what: "cannot write the upload of",
            path: self.shown.clone(),
            source,
        })?;
        self.hasher.update(data);
        self.written = end;
        Ok(())
    }

    /// Makes the upload the destination: fsync, check `expected_sha256` (hex) if given, set
    /// the mode, rename over the destination, fsync the directory.
    pub fn commit(mut self, expected_sha256: Option<&str>) -> Result<Committed, FilesError> {
        let shown = self.shown.clone();
        let ioe = |what: &'static str| {
            let shown = shown.clone();
            move |source: std::io::Error| FilesError::Io {
                what,
                path: shown,
                source,
            }
        };
        self.file
            .sync_all()
            .map_err(ioe("cannot fsync the upload of"))?;
        let actual = hex::encode(self.hasher.clone().finalize());
        if let Some(expected) = expected_sha256
            && !expected.eq_ignore_ascii_case(&actual)
        {
            return Err(FilesError::HashMismatch {
                path: shown,
                expected: expected.to_owned(),
                actual,
            });
        }
        fchmod(self.file.as_fd(), Mode::from_bits_truncate(self.mode))
            .map_err(|e| io("cannot set the mode of the upload of", &shown, e))?;
        if let Some((atime, mtime)) = self.times {
            nix::sys::stat::futimens(
                self.file.as_fd(),
                &nix::sys::time::TimeSpec::new(atime, 0),
                &nix::sys::time::TimeSpec::new(mtime, 0),
            )
            .map_err(|e| io("cannot set the times of the upload of", &shown, e))?;
        }
        let Some(tmp) = self.tmp_name.as_deref() else {
            return Err(io(
                "the upload was already finished:",
                &shown,
                Errno::EINVAL,
            ));
        };
        nix::fcntl::renameat(self.dir.as_fd(), tmp, self.dir.as_fd(), self.name.as_str())
            .map_err(|e| io("cannot move the upload into place at", &shown, e))?;
        self.tmp_name = None;
        nix::unistd::fsync(self.dir.as_fd())
            .map_err(|e| io("cannot fsync the directory of", &shown, e))?;
        Ok(Committed {
            path: shown,
            size: self.written,
            sha256: actual,
        })
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp_name.take() {
            let _ = nix::unistd::unlinkat(
                self.dir.as_fd(),
                tmp.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

#[cfg(test)]
mod tests;
