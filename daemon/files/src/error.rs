//! The crate's one error type.

/// What went wrong with a confined file operation. Every message names the path and says what
/// to do; none carries file contents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FilesError {
    /// The `[files]` configuration is unusable.
    #[error("invalid [files] configuration: {0}")]
    Config(String),
    /// File transfer is off on this target (no `allowed_roots`).
    #[error(
        "file transfer is off on this target: [files] allowed_roots is empty (add a directory on the target to enable it)"
    )]
    Disabled,
    /// The path is not absolute or contains a NUL byte.
    #[error("{path:?} is not an absolute path (give the full path on the target, e.g. /srv/app/x)")]
    InvalidPath {
        /// The path as asked.
        path: String,
    },
    /// The path is not below any allowed root.
    #[error("{path} is outside the allowed roots ({roots}); nothing was read or written")]
    OutsideRoots {
        /// The path as asked.
        path: String,
        /// The configured roots, comma separated.
        roots: String,
    },
    /// Resolving the path would leave its root: `..`, an absolute or escaping symlink, a
    /// symlinked directory pointing elsewhere, or a magic link such as `/proc/self/root`.
    #[error(
        "{path} escapes its allowed root {root} (through `..`, a symlink pointing outside, or a /proc magic link); refused"
    )]
    Escape {
        /// The path as asked.
        path: String,
        /// The root it was resolved under.
        root: String,
    },
    /// The path (as asked, or as resolved on disk) matches a `deny_paths` rule.
    #[error("{path} is denied on this target by the deny_paths rule {rule:?}; refused")]
    Denied {
        /// The path (as asked or resolved).
        path: String,
        /// The matching pattern.
        rule: String,
    },
    /// A regular file with more than one hard link: it may be a link to a file outside the
    /// roots, so it is neither read nor replaced.
    #[error(
        "{path} has {links} hard links; files with several links are refused because one may live outside the allowed roots (copy the file instead of linking it)"
    )]
    HardLinked {
        /// The path.
        path: String,
        /// Its link count.
        links: u64,
    },
    /// The path names something other than what the operation needs.
    #[error("{path} is {found}, not {wanted}")]
    WrongType {
        /// The path.
        path: String,
        /// What it is (`a directory`, `a device`, ...).
        found: &'static str,
        /// What the operation needs (`a regular file`, `a directory`).
        wanted: &'static str,
    },
    /// Nothing exists at the path.
    #[error("{path} does not exist")]
    NotFound {
        /// The path.
        path: String,
    },
    /// An upload grew past `max_file_size`; it was stopped and the old file left as it was.
    #[error(
        "{path}: the upload passed the {limit}-byte limit (max_file_size) and was stopped; the old file is unchanged"
    )]
    TooLarge {
        /// The destination.
        path: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The uploaded bytes do not have the SHA-256 the sender announced.
    #[error(
        "{path}: the received bytes have SHA-256 {actual}, but {expected} was expected; the upload was discarded and the old file is unchanged"
    )]
    HashMismatch {
        /// The destination.
        path: String,
        /// The announced digest (hex).
        expected: String,
        /// The digest of what arrived (hex).
        actual: String,
    },
    /// Upload data arrived out of order (uploads are written sequentially).
    #[error(
        "{path}: upload data at offset {offset} arrived, but {expected} was expected (uploads are sequential)"
    )]
    OutOfOrder {
        /// The destination.
        path: String,
        /// The offset received.
        offset: u64,
        /// The offset expected.
        expected: u64,
    },
    /// The path names an allowed root itself or ends in `.`/`..`, where an entry is needed
    /// (remove, rename, mkdir, rmdir).
    #[error(
        "{path} names an allowed root itself or ends in `.` or `..`; give the path of an entry inside a root"
    )]
    NotAnEntry {
        /// The path as asked.
        path: String,
    },
    /// Something already exists where a rename or mkdir would create an entry.
    #[error("{path} already exists; nothing was changed (remove it first to replace it)")]
    Exists {
        /// The path.
        path: String,
    },
    /// `rmdir` of a directory that still has entries.
    #[error("{path} is not empty; remove its entries first")]
    NotEmpty {
        /// The directory.
        path: String,
    },
    /// The user file operations run as (`ssh.run_as`) may not do this.
    #[error(
        "{path}: permission denied to uid {uid}, the user file operations run as on this target (ssh.run_as); nothing was read or written (give that user access, or change ssh.run_as)"
    )]
    PermissionDenied {
        /// The path.
        path: String,
        /// The effective uid that was refused.
        uid: u32,
    },
    /// A system call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done (`cannot open`, `cannot write`).
        what: &'static str,
        /// The path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl FilesError {
    /// A short machine-readable code for the error (used on the wire and in audit records).
    pub fn code(&self) -> &'static str {
        match self {
            FilesError::Config(_) => "config",
            FilesError::Disabled => "disabled",
            FilesError::InvalidPath { .. } => "invalid_path",
            FilesError::OutsideRoots { .. } => "outside_roots",
            FilesError::Escape { .. } => "escape",
            FilesError::Denied { .. } => "denied",
            FilesError::HardLinked { .. } => "hard_link",
            FilesError::WrongType { .. } => "wrong_type",
            FilesError::NotFound { .. } => "not_found",
            FilesError::TooLarge { .. } => "too_large",
            FilesError::HashMismatch { .. } => "hash_mismatch",
            FilesError::OutOfOrder { .. } => "out_of_order",
            FilesError::NotAnEntry { .. } => "not_an_entry",
            FilesError::Exists { .. } => "exists",
            FilesError::NotEmpty { .. } => "not_empty",
            FilesError::PermissionDenied { .. } => "permission_denied",
            FilesError::Io { source, .. } if source.raw_os_error() == Some(libc_enospc()) => {
                "no_space"
            }
            FilesError::Io { .. } => "io",
        }
    }
}

fn libc_enospc() -> i32 {
    nix::errno::Errno::ENOSPC as i32
}
