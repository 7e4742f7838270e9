use std::path::PathBuf;

/// Everything that can go wrong in the audit chain.
///
/// Messages say what failed, with what, and what to do next. They never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// Writing or syncing a record to the audit log failed (e.g. ENOSPC, EIO). The log was rolled
    /// back to the last good record, so the chain is intact, but the records of this batch were
    /// not written and the actions they describe must not run.
    #[error(
        "cannot write the audit log in {}: {source}; the action was refused; free space / fix permissions, then retry",
        dir.display()
    )]
    WriteFailed {
        /// The audit directory.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A write failed and rolling the file back to the last good record failed too; the writer
    /// refuses appends until a later rollback succeeds.
    #[error(
        "cannot roll back {} to its last good record ({good_len} bytes): {source}; the action was refused; fix the file system, then retry (the daemon retries the rollback before each write)",
        file.display()
    )]
    RollbackFailed {
        /// The day file that could not be truncated.
        file: PathBuf,
        /// The length it should have been truncated to.
        good_len: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// Reading an audit file or directory failed.
    #[error("cannot read {}: {source}; check that the path exists and tetherd may read it", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A line of a day file is not an audit record (reading for tail/export; run verify for details).
    #[error("{}:{line} (the line after seq {after_seq}) is not an audit record: {reason}; the log is damaged: run `tether audit verify` to find out what happened", path.display())]
    Malformed {
        /// The day file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The seq of the last good record read before it (0: none).
        after_seq: u64,
        /// What is wrong.
        reason: String,
    },

    /// Creating the audit directory or a file in it failed.
    #[error("cannot create {}: {source}; check the permissions of its parent directory and free space", path.display())]
    Create {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The event is not acceptable for the audit log (bad type name, float in data, too large...).
    #[error(
        "invalid audit event: {reason}; fix the caller (this is a bug in the code that raised the event)"
    )]
    InvalidEvent {
        /// What is wrong with it.
        reason: String,
    },

    /// The writer thread is gone (the log was closed or the writer panicked).
    #[error("the audit writer has stopped; the action was refused; restart tetherd")]
    WriterStopped,

    /// The last record of the log on disk does not verify (its hash or HMAC is wrong), so the
    /// chain cannot be resumed safely.
    #[error(
        "the last audit record (seq {seq}) in {} does not verify: {reason}; run `tether audit verify` and investigate before restarting",
        file.display()
    )]
    CorruptTail {
        /// The day file holding the record.
        file: PathBuf,
        /// The record's sequence number, as far as it could be read.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },

    /// The log on disk is damaged in a way that is not a torn write (an edited or forged
    /// record, a break in the chain, data hidden behind NUL bytes, a damaged older day file,
    /// missing records). The writer refuses to continue it and changed nothing on disk.
    #[error(
        "the audit log is damaged at seq {seq} in {}: {reason}; tetherd changed nothing on disk; run `tether audit verify` (or `tetherd` with the log moved aside) and investigate before restarting",
        file.display()
    )]
    Damaged {
        /// The day file holding the damage.
        file: PathBuf,
        /// The seq of the damaged record, or of the record expected where the damage starts.
        seq: u64,
        /// What is wrong, with the byte offset.
        reason: String,
    },

    /// The signed head checkpoint is ahead of the log or disagrees with it: records the head
    /// vouches for are missing or were replaced. The writer refuses to continue such a log.
    #[error(
        "the audit log in {} ends at seq {log_seq}{} but its signed head is at seq {head_seq}{}; the log was truncated or rolled back; tetherd changed nothing on disk; run `tether audit verify`, investigate, then move the damaged log aside",
        dir.display(),
        file.as_ref().map(|f| format!(" (in {})", f.display())).unwrap_or_default(),
        if *hash_mismatch { " with a different hash" } else { "" }
    )]
    HeadMismatch {
        /// The audit directory.
        dir: PathBuf,
        /// The day file holding the log's last record, if any.
        file: Option<PathBuf>,
        /// The seq of the last record in the log.
        log_seq: u64,
        /// The seq the head vouches for.
        head_seq: u64,
        /// True when the seqs agree but the hashes do not.
        hash_mismatch: bool,
    },

    /// A checkpoint (the `head` file or an exported one) could not be parsed or its signature
    /// does not verify with this installation's key.
    #[error(
        "invalid audit checkpoint {origin}: {reason}; re-export it with `tether audit checkpoint --export` or check which key signed it"
    )]
    BadCheckpoint {
        /// Where it came from (a path or "argument").
        origin: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A checkpoint's fields are malformed or its Ed25519 signature does not verify with the
    /// given public key ([`crate::Checkpoint::verify_signature`]).
    #[error(
        "audit checkpoint signature check failed: {reason}; check that the checkpoint comes from this installation (`tether audit checkpoint --export`) and was not edited, and that the audit signing key was not replaced"
    )]
    CheckpointSignature {
        /// Which check failed: a field format or the signature itself.
        reason: &'static str,
    },

    /// There is no head counter outside `state_dir` to read or raise (the vault backend has no
    /// place for it).
    #[error("the audit head counter outside state_dir is unavailable: {reason}")]
    AnchorUnavailable {
        /// Why, and what to do.
        reason: String,
    },

    /// The head counter outside `state_dir` could not be parsed.
    #[error(
        "invalid audit head counter in {origin}: {reason}; it is written by tetherd only: find out who changed it"
    )]
    BadAnchor {
        /// Where it was read.
        origin: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The head counter kept outside `state_dir` is ahead of the log, or names a different record
    /// at its seq: log and head were rolled back together (or records removed). The writer
    /// refuses to continue such a log and changed nothing on disk.
    #[error(
        "the audit log in {} ends at seq {log_seq} but the head counter kept outside state_dir ({location}) records seq {anchor_seq}{}; the log was rolled back or records were removed; tetherd changed nothing on disk; run `tether audit verify`, investigate, then move the damaged log aside",
        dir.display(),
        if *hash_mismatch { " with a different hash" } else { "" }
    )]
    RolledBack {
        /// The audit directory.
        dir: PathBuf,
        /// Where the counter lives.
        location: String,
        /// The seq of the last record in the log.
        log_seq: u64,
        /// The seq the counter records.
        anchor_seq: u64,
        /// True when the log holds that seq but with another hash.
        hash_mismatch: bool,
    },

    /// The key file has permissions looser than 0600.
    #[error(
        "audit key file {} has mode {mode:04o}, readable or writable by group/others; run `chmod 600 {}` (and check who could have copied it)",
        path.display(), path.display()
    )]
    KeyFilePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// The key file is inside the audit directory, where anyone who can read the log could forge it.
    #[error(
        "audit key file {} is inside the audit directory {}; keys must never sit beside the log: choose a path outside it",
        path.display(), audit_dir.display()
    )]
    KeyFileInsideAuditDir {
        /// The key file.
        path: PathBuf,
        /// The audit directory.
        audit_dir: PathBuf,
    },

    /// The key file exists but does not have the expected format.
    #[error("audit key file {} is malformed: {reason}; restore it from backup (a new key cannot verify the existing log)", path.display())]
    KeyFileMalformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong (never includes key bytes).
        reason: String,
    },

    /// The key source could not provide a key (e.g. the vault is locked).
    #[error("cannot obtain the audit {which} key: {reason}")]
    KeyUnavailable {
        /// `hmac` or `signing`.
        which: &'static str,
        /// Why, and what to do.
        reason: String,
    },

    /// The system random number generator failed while generating keys.
    #[error(
        "cannot generate audit keys: the system random generator failed ({0}); check /dev/urandom / getrandom(2)"
    )]
    Random(String),

    /// Registering the audit metrics failed (usually: registered twice in the same registry).
    #[error("cannot register audit metrics: {0}; open the audit log once per registry")]
    Metrics(#[from] prometheus::Error),
}

impl AuditError {
    /// What is wrong with a checkpoint, for a report that already names the checkpoint (the
    /// verifier's break detail, [`AuditError::BadCheckpoint`]'s reason): the bare reason of a
    /// [`AuditError::CheckpointSignature`], the whole message of any other error.
    pub(crate) fn checkpoint_fault(&self) -> String {
        match self {
            AuditError::CheckpointSignature { reason } => (*reason).to_string(),
            other => other.to_string(),
        }
    }

    /// The OS error number behind this error, if any (e.g. `28` for ENOSPC).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            AuditError::WriteFailed { source, .. }
            | AuditError::RollbackFailed { source, .. }
            | AuditError::Read { source, .. }
            | AuditError::Create { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = AuditError> = std::result::Result<T, E>;
