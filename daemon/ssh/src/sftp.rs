//! SFTP inside the tunnel: the target's `sftp` subsystem, confined by [`tether_files`], and the
//! hub's client for it.
//!
//! * **Target** ([`SftpService`]): every SFTP request goes to the [`Confined`] core, after the
//!   [`FileGate`] (the target's own policy and audit) admitted it. Served: `open` (read, or
//!   write as an atomic upload: a temp file renamed over the destination on `close`),
//!   `read`, `write`, `close`, `stat`/`lstat`/`fstat`, `opendir`/`readdir`, `realpath` (a
//!   relative path, such as the `.` stock clients ask for, is taken against the first allowed
//!   root), `remove`, `rename` (never over an existing entry), `mkdir`, `rmdir`, `setstat`
//!   (mode and times; a change of owner or size is refused), `fsetstat` on an upload (mode and
//!   times applied when it is committed, as `put -p` asks), and the extension [`SHA256_EXT`].
//!   Everything else (symlink, readlink, other extensions) is refused with
//!   `SSH_FX_OP_UNSUPPORTED`. Every path of every operation goes through the same
//!   confinement and the gate (a rename asks it for both paths). A connection that ends mid-upload drops the upload:
//!   its temp file is removed and the old file stays.
//! * **[`SHA256_EXT`]** (`sha256@tether.dev`): on a read handle, the target answers the SHA-256
//!   of the whole open file (the hub compares it with the bytes it received); on a write handle,
//!   with data `HANDLE\nHEX`, it sets the digest the upload must have, checked before the rename.
//! * **Refusals** travel as SFTP status messages `CODE: MESSAGE` ([`tether_files::FilesError::code`]
//!   or `policy`), which the hub turns back into [`SshError::File`].
//! * **Hub** ([`SftpClient`]): `stat`, `list`, `get` (streamed, verified against the target's
//!   digest) and `put` (streamed, digest announced before close) over a channel from
//!   [`crate::pool::Pool::subsystem`].

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, FileAttributes, Handle, Name, OpenFlags, Packet, Status,
    StatusCode, Version,
};
use russh_sftp::server::StatusReply;
use sha2::{Digest, Sha256};
use tether_files::{Confined, FilesError, Kind, Meta, Upload};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::SshError;

/// The extension that carries SHA-256 digests (see the module docs).
pub const SHA256_EXT: &str = "sha256@tether.dev";

/// Bytes per SFTP read or write request.
pub const CHUNK: usize = 32 * 1024;

/// Write requests an upload keeps outstanding (8 × [`CHUNK`] = 256 KiB, one overlay TCP window).
const WRITES_IN_FLIGHT: usize = 8;

/// A boxed future, for the gate's methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A file operation, as the target's gate sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    /// Download (open for reading).
    Get,
    /// Upload (open for writing).
    Put,
    /// List a directory.
    List,
    /// Stat a path.
    Stat,
    /// Remove a file or symbolic link.
    Remove,
    /// Rename (asked for the old and the new path).
    Rename,
    /// Create a directory.
    Mkdir,
    /// Remove an empty directory.
    Rmdir,
    /// Change the mode or times of a path.
    SetStat,
}

impl FileOp {
    /// `get`, `put`, `ls`, `stat`, `rm`, `rename`, `mkdir`, `rmdir`, `setstat` (the audit
    /// record names `fs.<op>`).
    pub fn as_str(self) -> &'static str {
        match self {
            FileOp::Get => "get",
            FileOp::Put => "put",
            FileOp::List => "ls",
            FileOp::Stat => "stat",
            FileOp::Remove => "rm",
            FileOp::Rename => "rename",
            FileOp::Mkdir => "mkdir",
            FileOp::Rmdir => "rmdir",
            FileOp::SetStat => "setstat",
        }
    }

    /// The operation named by [`FileOp::as_str`].
    pub fn parse(s: &str) -> Option<FileOp> {
        Some(match s {
            "get" => FileOp::Get,
            "put" => FileOp::Put,
            "ls" => FileOp::List,
            "stat" => FileOp::Stat,
            "rm" => FileOp::Remove,
            "rename" => FileOp::Rename,
            "mkdir" => FileOp::Mkdir,
            "rmdir" => FileOp::Rmdir,
            "setstat" => FileOp::SetStat,
            _ => return None,
        })
    }

    /// Whether the operation changes the target's files (the policy sees a write).
    pub fn writes(self) -> bool {
        !matches!(self, FileOp::Get | FileOp::List | FileOp::Stat)
    }
}

/// How a file operation ended on the target, for its audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// The operation.
    pub op: FileOp,
    /// The path as asked.
    pub path: String,
    /// A rename's new path.
    pub to: Option<String>,
    /// Bytes read or written.
    pub size: u64,
    /// SHA-256 of the bytes (uploads: always; downloads: when read from start to end), hex.
    pub sha256: Option<String>,
    /// `None` on success, else `CODE: MESSAGE`.
    pub error: Option<String>,
}

/// The target's policy and audit for file operations. Implemented by `tetherd`.
pub trait FileGate: Send + Sync + 'static {
    /// Whether `op` on `path` may go ahead; `Err(reason)` refuses it. Audits its decision.
    fn admit<'a>(&'a self, op: FileOp, path: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// An operation ended (or was refused by the confinement).
    fn finished(&self, report: FileReport) -> BoxFuture<'_, ()>;
}

/// The target's SFTP service: the confinement core and the gate.
#[derive(Clone)]
pub struct SftpService {
    confined: Arc<Confined>,
    gate: Arc<dyn FileGate>,
    /// Set when file operations run as `ssh.run_as` in a helper process.
    helper: Option<Arc<crate::sftp_helper::Helper>>,
}

impl std::fmt::Debug for SftpService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpService")
            .field("confined", &self.confined)
            .finish_non_exhaustive()
    }
}

impl SftpService {
    /// A service over `confined`, asking `gate`.
    pub fn new(confined: Arc<Confined>, gate: Arc<dyn FileGate>) -> Self {
        SftpService {
            confined,
            gate,
            helper: None,
        }
    }

    /// A service whose sessions each run in a helper process as another user (see
    /// [`crate::sftp_helper`]); `confined` is the daemon's own copy (checked at startup).
    pub fn with_helper(
        confined: Arc<Confined>,
        gate: Arc<dyn FileGate>,
        helper: crate::sftp_helper::Helper,
    ) -> Self {
        SftpService {
            confined,
            gate,
            helper: Some(Arc::new(helper)),
        }
    }

    /// Serves one `sftp` subsystem channel until it closes.
    pub fn serve<S>(&self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let stream = decoupled(stream);
        if let Some(helper) = &self.helper {
            let (helper, gate) = (Arc::clone(helper), Arc::clone(&self.gate));
            tokio::spawn(async move { helper.serve(stream, gate).await });
            return;
        }
        let session = Session {
            service: self.clone(),
            handles: HashMap::new(),
            next: 0,
        };
        let config = russh_sftp::server::Config {
            // A write request of CHUNK bytes plus headers fits; anything far larger is refused.
            max_client_packet_len: 256 * 1024,
        };
        tokio::spawn(russh_sftp::server::run_with_config(stream, session, config));
    }
}

/// Client requests buffered on the target while the server waits to send its replies: far
/// more than any SFTP client keeps in flight (a read request is about 40 bytes; `sftp -R 512`
/// is 20 KB of them), so a client's requests never wait for its own replies.
const REQUEST_BUFFER: usize = 1 << 20;

/// Joins the subsystem channel `stream` to the SFTP server through an in-memory pipe that keeps
/// taking the client's requests while a reply waits for the client's SSH window, and returns
/// the server's end.
///
/// **Why:** russh hands a channel's incoming data to its reader through a bounded queue and
/// waits, inside the connection's one reader loop, while that queue is full. The SFTP server
/// answers one request at a time; when a reply waits for window (a client that paused reading,
/// then resumed with hundreds of reads in flight), the requests behind it filled the queue, the
/// reader loop stopped — and with it the window adjustments the reply was waiting for. The
/// connection then sat deadlocked until the hub's keepalives gave up and closed it mid-transfer.
/// Reading the channel independently of writing it breaks that cycle; both directions stay
/// bounded ([`REQUEST_BUFFER`] each way).
fn decoupled<S>(stream: S) -> tokio::io::DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::AsyncWriteExt;
    let (server, pump) = tokio::io::duplex(REQUEST_BUFFER);
    tokio::spawn(async move {
        let (mut from_client, mut to_client) = tokio::io::split(stream);
        let (mut from_server, mut to_server) = tokio::io::split(pump);
        let requests = async {
            let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
            // The client's end of file (or a broken channel) ends the server's loop.
            let _ = to_server.shutdown().await;
        };
        let replies = async {
            if tokio::io::copy(&mut from_server, &mut to_client)
                .await
                .is_ok()
            {
                let _ = to_client.shutdown().await;
            } else {
                // The channel broke: drop what the server still says until it sees the end
                // of the requests, so it never waits on a full pipe.
                let _ = tokio::io::copy(&mut from_server, &mut tokio::io::sink()).await;
            }
        };
        tokio::join!(requests, replies);
    });
    server
}

/// An open handle.
enum Open {
    Read {
        file: Arc<File>,
        path: String,
        hasher: Sha256,
        /// Bytes served in order from offset 0 (the digest covers them).
        served: u64,
        in_order: bool,
    },
    Write {
        upload: Upload,
        expected: Option<String>,
    },
    Dir {
        entries: Option<Vec<Meta>>,
    },
}

/// One SFTP session's state.
struct Session {
    service: SftpService,
    handles: HashMap<String, Open>,
    next: u64,
}

fn refused(e: &FilesError) -> StatusReply {
    let code = match e {
        FilesError::NotFound { .. } => StatusCode::NoSuchFile,
        FilesError::PermissionDenied { .. }
        | FilesError::Disabled
        | FilesError::OutsideRoots { .. }
        | FilesError::Escape { .. }
        | FilesError::Denied { .. }
        | FilesError::HardLinked { .. } => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    };
    StatusReply::new(code).with_message(format!("{}: {e}", e.code()))
}

fn bad_handle() -> StatusReply {
    StatusReply::new(StatusCode::Failure).with_message("bad_handle: no such open handle")
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".to_owned(),
        language_tag: "en-US".to_owned(),
    }
}

fn attrs(m: &Meta) -> FileAttributes {
    let kind = match m.kind {
        Kind::File => 0o100000,
        Kind::Dir => 0o040000,
        Kind::Symlink => 0o120000,
        Kind::Other => 0,
    };
    FileAttributes {
        size: Some(m.size),
        uid: Some(m.uid),
        user: None,
        gid: Some(m.gid),
        group: None,
        permissions: Some(kind | m.mode),
        atime: None,
        mtime: Some(u32::try_from(m.mtime.max(0)).unwrap_or(u32::MAX)),
    }
}

impl Session {
    fn handle(&mut self, open: Open) -> String {
        self.next += 1;
        let h = format!("h{}", self.next);
        self.handles.insert(h.clone(), open);
        h
    }

    async fn admit(&self, op: FileOp, path: &str) -> Result<(), StatusReply> {
        self.service.gate.admit(op, path).await.map_err(|reason| {
            StatusReply::new(StatusCode::PermissionDenied)
                .with_message(format!("policy: refused by the target's policy: {reason}"))
        })
    }

    async fn report_refusal(&self, op: FileOp, path: &str, e: &FilesError) {
        self.service
            .gate
            .finished(FileReport {
                op,
                path: path.to_owned(),
                to: None,
                size: 0,
                sha256: None,
                error: Some(format!("{}: {e}", e.code())),
            })
            .await;
    }

    async fn stat_path(&mut self, id: u32, path: String) -> Result<Attrs, StatusReply> {
        self.admit(FileOp::Stat, &path).await?;
        let confined = Arc::clone(&self.service.confined);
        let p = path.clone();
        let r = tokio::task::spawn_blocking(move || confined.stat(&p))
            .await
            .map_err(|_| StatusReply::new(StatusCode::Failure))?;
        match r {
            Ok(m) => {
                self.service
                    .gate
                    .finished(FileReport {
                        op: FileOp::Stat,
                        path,
                        to: None,
                        size: m.size,
                        sha256: None,
                        error: None,
                    })
                    .await;
                Ok(Attrs {
                    id,
                    attrs: attrs(&m),
                })
            }
            Err(e) => {
                self.report_refusal(FileOp::Stat, &path, &e).await;
                Err(refused(&e))
            }
        }
    }
}

impl Session {
    /// Runs a changing operation `f` on the confinement core after the gate admitted every
    /// path in `paths`, and reports it (success or refusal) to the gate.
    async fn change<F>(
        &self,
        id: u32,
        op: FileOp,
        path: String,
        to: Option<String>,
        f: F,
    ) -> Result<Status, StatusReply>
    where
        F: FnOnce(&Confined) -> Result<(), FilesError> + Send + 'static,
    {
        self.admit(op, &path).await?;
        if let Some(to) = &to {
            self.admit(op, to).await?;
        }
        let confined = Arc::clone(&self.service.confined);
        let r = tokio::task::spawn_blocking(move || f(&confined))
            .await
            .map_err(|_| StatusReply::new(StatusCode::Failure))?;
        let error = r.as_ref().err().map(|e| format!("{}: {e}", e.code()));
        self.service
            .gate
            .finished(FileReport {
                op,
                path,
                to,
                size: 0,
                sha256: None,
                error,
            })
            .await;
        match r {
            Ok(()) => Ok(ok(id)),
            Err(e) => Err(refused(&e)),
        }
    }
}

impl Session {
    /// Audits a refused attribute change (owner, size) and hands the refusal back.
    async fn report_unsettable(&self, path: &str, e: StatusReply) -> StatusReply {
        self.service
            .gate
            .finished(FileReport {
                op: FileOp::SetStat,
                path: path.to_owned(),
                to: None,
                size: 0,
                sha256: None,
                error: e.error_message.clone(),
            })
            .await;
        e
    }
}

/// What a setstat may change: permission bits and (access, modification) times.
type Settable = (Option<u32>, Option<(i64, i64)>);

/// Mode and times from SFTP attributes; a change of owner or size is refused.
fn settable(a: &FileAttributes) -> Result<Settable, StatusReply> {
    if a.uid.is_some() || a.gid.is_some() || a.user.is_some() || a.group.is_some() {
        return Err(StatusReply::new(StatusCode::PermissionDenied).with_message(
            "unsupported: changing the owner (chown/chgrp) is refused; files belong to the target's ssh.run_as user",
        ));
    }
    if a.size.is_some() {
        return Err(StatusReply::new(StatusCode::OpUnsupported).with_message(
            "unsupported: truncating through setstat is refused; upload the whole file instead",
        ));
    }
    let times = match (a.atime, a.mtime) {
        (None, None) => None,
        (at, mt) => {
            let mt = mt.or(at).unwrap_or(0);
            Some((i64::from(at.unwrap_or(mt)), i64::from(mt)))
        }
    };
    Ok((a.permissions.map(|p| p & 0o7777), times))
}

impl russh_sftp::server::Handler for Session {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusReply::new(StatusCode::OpUnsupported)
            .with_message("unsupported: tether's SFTP does not serve this request (symlinks, readlink and other extensions are refused)")
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        let mut v = Version::new();
        v.extensions.insert(SHA256_EXT.to_owned(), "1".to_owned());
        Ok(v)
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let confined = Arc::clone(&self.service.confined);
        if pflags.contains(OpenFlags::WRITE) {
            if pflags.contains(OpenFlags::APPEND) {
                return Err(StatusReply::new(StatusCode::OpUnsupported)
                    .with_message("unsupported: appending; uploads replace the whole file"));
            }
            self.admit(FileOp::Put, &filename).await?;
            let mode = attrs.permissions.map(|p| p & 0o7777);
            let p = filename.clone();
            let r = tokio::task::spawn_blocking(move || confined.begin_upload(&p, mode))
                .await
                .map_err(|_| StatusReply::new(StatusCode::Failure))?;
            match r {
                Ok(upload) => Ok(Handle {
                    id,
                    handle: self.handle(Open::Write {
                        upload,
                        expected: None,
                    }),
                }),
                Err(e) => {
                    self.report_refusal(FileOp::Put, &filename, &e).await;
                    Err(refused(&e))
                }
            }
        } else {
            self.admit(FileOp::Get, &filename).await?;
            let p = filename.clone();
            let r = tokio::task::spawn_blocking(move || confined.open_read(&p))
                .await
                .map_err(|_| StatusReply::new(StatusCode::Failure))?;
            match r {
                Ok((file, _meta)) => Ok(Handle {
                    id,
                    handle: self.handle(Open::Read {
                        file: Arc::new(file),
                        path: filename,
                        hasher: Sha256::new(),
                        served: 0,
                        in_order: true,
                    }),
                }),
                Err(e) => {
                    self.report_refusal(FileOp::Get, &filename, &e).await;
                    Err(refused(&e))
                }
            }
        }
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let Some(Open::Read {
            file,
            hasher,
            served,
            in_order,
            ..
        }) = self.handles.get_mut(&handle)
        else {
            return Err(bad_handle());
        };
        let f = Arc::clone(file);
        let len = (len as usize).min(CHUNK * 8);
        let data = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            let n = f.read_at(&mut buf, offset)?;
            buf.truncate(n);
            Ok::<_, std::io::Error>(buf)
        })
        .await
        .map_err(|_| StatusReply::new(StatusCode::Failure))?
        .map_err(|e| StatusReply::new(StatusCode::Failure).with_message(format!("io: {e}")))?;
        if data.is_empty() {
            return Err(StatusReply::new(StatusCode::Eof));
        }
        if *in_order && offset == *served {
            hasher.update(&data);
            *served += data.len() as u64;
        } else {
            *in_order = false;
        }
        Ok(Data { id, data })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        let Some(Open::Write { upload, .. }) = self.handles.get_mut(&handle) else {
            return Err(bad_handle());
        };
        match upload.write_at(offset, &data) {
            Ok(()) => Ok(ok(id)),
            Err(e) => {
                // The upload is over: its temp file goes, the old file stays.
                let path = upload.path().to_owned();
                self.handles.remove(&handle);
                self.report_refusal(FileOp::Put, &path, &e).await;
                Err(refused(&e))
            }
        }
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            None => Err(bad_handle()),
            Some(Open::Dir { .. }) => Ok(ok(id)),
            Some(Open::Read {
                path,
                hasher,
                served,
                in_order,
                ..
            }) => {
                self.service
                    .gate
                    .finished(FileReport {
                        op: FileOp::Get,
                        path,
                        to: None,
                        size: served,
                        sha256: in_order.then(|| hex::encode(hasher.finalize())),
                        error: None,
                    })
                    .await;
                Ok(ok(id))
            }
            Some(Open::Write { upload, expected }) => {
                let path = upload.path().to_owned();
                let r = tokio::task::spawn_blocking(move || upload.commit(expected.as_deref()))
                    .await
                    .map_err(|_| StatusReply::new(StatusCode::Failure))?;
                match r {
                    Ok(done) => {
                        self.service
                            .gate
                            .finished(FileReport {
                                op: FileOp::Put,
                                path,
                                to: None,
                                size: done.size,
                                sha256: Some(done.sha256),
                                error: None,
                            })
                            .await;
                        Ok(ok(id))
                    }
                    Err(e) => {
                        self.report_refusal(FileOp::Put, &path, &e).await;
                        Err(refused(&e))
                    }
                }
            }
        }
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let Some(Open::Read { file, path, .. }) = self.handles.get(&handle) else {
            return Err(bad_handle());
        };
        let md = file
            .metadata()
            .map_err(|e| StatusReply::new(StatusCode::Failure).with_message(format!("io: {e}")))?;
        use std::os::unix::fs::MetadataExt;
        let m = Meta {
            name: path.clone(),
            kind: Kind::File,
            size: md.len(),
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime(),
            nlink: md.nlink(),
        };
        Ok(Attrs {
            id,
            attrs: attrs(&m),
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        self.stat_path(id, path).await
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        self.stat_path(id, path).await
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        let p = filename.clone();
        self.change(id, FileOp::Remove, filename, None, move |c| c.remove(&p))
            .await
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        let p = path.clone();
        self.change(id, FileOp::Rmdir, path, None, move |c| c.rmdir(&p))
            .await
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let p = path.clone();
        let mode = attrs.permissions.map(|m| m & 0o7777);
        self.change(id, FileOp::Mkdir, path, None, move |c| c.mkdir(&p, mode))
            .await
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        let (from, to) = (oldpath.clone(), newpath.clone());
        self.change(id, FileOp::Rename, oldpath, Some(newpath), move |c| {
            c.rename(&from, &to)
        })
        .await
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let (mode, times) = match settable(&attrs) {
            Ok(s) => s,
            Err(e) => return Err(self.report_unsettable(&path, e).await),
        };
        let p = path.clone();
        self.change(id, FileOp::SetStat, path, None, move |c| {
            c.set_attrs(&p, mode, times)
        })
        .await
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let (mode, times) = match settable(&attrs) {
            Ok(s) => s,
            Err(e) => {
                let path = match self.handles.get(&handle) {
                    Some(Open::Write { upload, .. }) => upload.path().to_owned(),
                    Some(Open::Read { path, .. }) => path.clone(),
                    _ => handle.clone(),
                };
                return Err(self.report_unsettable(&path, e).await);
            }
        };
        match self.handles.get_mut(&handle) {
            // An upload takes them when it is committed (the temp file is not the file yet).
            Some(Open::Write { upload, .. }) => {
                if let Some(m) = mode {
                    upload.set_mode(m);
                }
                if let Some((a, m)) = times {
                    upload.set_times(a, m);
                }
                Ok(ok(id))
            }
            Some(Open::Read { path, .. }) => {
                let path = path.clone();
                self.setstat(id, path, attrs).await
            }
            _ => Err(bad_handle()),
        }
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        self.admit(FileOp::List, &path).await?;
        let confined = Arc::clone(&self.service.confined);
        let p = path.clone();
        let r = tokio::task::spawn_blocking(move || confined.list(&p))
            .await
            .map_err(|_| StatusReply::new(StatusCode::Failure))?;
        match r {
            Ok(entries) => {
                self.service
                    .gate
                    .finished(FileReport {
                        op: FileOp::List,
                        path,
                        to: None,
                        size: entries.len() as u64,
                        sha256: None,
                        error: None,
                    })
                    .await;
                Ok(Handle {
                    id,
                    handle: self.handle(Open::Dir {
                        entries: Some(entries),
                    }),
                })
            }
            Err(e) => {
                self.report_refusal(FileOp::List, &path, &e).await;
                Err(refused(&e))
            }
        }
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let Some(Open::Dir { entries }) = self.handles.get_mut(&handle) else {
            return Err(bad_handle());
        };
        match entries.take() {
            Some(list) => Ok(Name {
                id,
                files: list
                    .iter()
                    .map(|m| russh_sftp::protocol::File::new(m.name.clone(), attrs(m)))
                    .collect(),
            }),
            None => Err(StatusReply::new(StatusCode::Eof)),
        }
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        // Absolute paths are answered as given; the confinement resolves them on use. Stock
        // clients ask for `.` to learn where they start: relative paths are taken against the
        // first allowed root.
        let path = if path.starts_with('/') {
            path
        } else {
            let Some(home) = self.service.confined.home() else {
                return Err(StatusReply::new(StatusCode::NoSuchFile)
                    .with_message("disabled: this target has no [files] allowed_roots"));
            };
            let rest = path.trim_start_matches("./");
            if rest.is_empty() || rest == "." {
                home.to_owned()
            } else {
                format!("{}/{rest}", home.trim_end_matches('/'))
            }
        };
        Ok(Name {
            id,
            files: vec![russh_sftp::protocol::File::dummy(path)],
        })
    }

    async fn extended(
        &mut self,
        id: u32,
        request: String,
        data: Vec<u8>,
    ) -> Result<Packet, Self::Error> {
        if request != SHA256_EXT {
            return Err(self.unimplemented());
        }
        let text = String::from_utf8_lossy(&data).into_owned();
        let (handle, hex) = match text.split_once('\n') {
            Some((h, x)) => (h.to_owned(), Some(x.trim().to_owned())),
            None => (text.trim().to_owned(), None),
        };
        match (self.handles.get_mut(&handle), hex) {
            (Some(Open::Write { expected, .. }), Some(hex)) => {
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(StatusReply::new(StatusCode::BadMessage)
                        .with_message("invalid_hash: a SHA-256 is 64 hex digits"));
                }
                *expected = Some(hex);
                Ok(Packet::Status(ok(id)))
            }
            (Some(Open::Read { file, .. }), None) => {
                let f = Arc::clone(file);
                let digest = tokio::task::spawn_blocking(move || {
                    let mut h = Sha256::new();
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut off = 0u64;
                    loop {
                        let n = f.read_at(&mut buf, off)?;
                        if n == 0 {
                            break;
                        }
                        h.update(&buf[..n]);
                        off += n as u64;
                    }
                    Ok::<_, std::io::Error>(hex::encode(h.finalize()))
                })
                .await
                .map_err(|_| StatusReply::new(StatusCode::Failure))?
                .map_err(|e| {
                    StatusReply::new(StatusCode::Failure).with_message(format!("io: {e}"))
                })?;
                Ok(Packet::ExtendedReply(ExtendedReply {
                    id,
                    data: digest.into_bytes(),
                }))
            }
            _ => Err(bad_handle()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hub side.

/// What `stat`/`ls` tell the hub about a remote path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMeta {
    /// The name (ls) or path (stat).
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: &'static str,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
}

fn meta_of(name: String, a: &FileAttributes) -> RemoteMeta {
    let p = a.permissions.unwrap_or(0);
    let kind = match p & 0o170000 {
        0o100000 => "file",
        0o040000 => "dir",
        0o120000 => "symlink",
        _ => "other",
    };
    RemoteMeta {
        name,
        kind,
        size: a.size.unwrap_or(0),
        mode: p & 0o7777,
        uid: a.uid.unwrap_or(0),
        gid: a.gid.unwrap_or(0),
        mtime: u64::from(a.mtime.unwrap_or(0)),
    }
}

/// What a finished transfer came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transferred {
    /// Bytes moved.
    pub size: u64,
    /// Their SHA-256, hex (checked against the target's).
    pub sha256: String,
}

/// The hub's SFTP client on one subsystem channel.
pub struct SftpClient {
    raw: RawSftpSession,
    host: String,
}

impl std::fmt::Debug for SftpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpClient")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl SftpClient {
    /// Starts an SFTP session with `host` on `stream` (a subsystem channel).
    pub async fn new<S>(host: &str, stream: S) -> Result<Self, SshError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let raw = RawSftpSession::new(stream);
        // Commits fsync; a slow disk may take a while.
        raw.set_timeout(120);
        let client = SftpClient {
            raw,
            host: host.to_owned(),
        };
        let version = client.raw.init().await.map_err(|e| client.err(e))?;
        if !version.extensions.contains_key(SHA256_EXT) {
            return Err(SshError::Protocol {
                host: host.to_owned(),
                reason: "its SFTP server does not verify digests (is it a tether target?)"
                    .to_owned(),
            });
        }
        Ok(client)
    }

    fn err(&self, e: russh_sftp::client::error::Error) -> SshError {
        use russh_sftp::client::error::Error as E;
        match e {
            E::Status(s) => {
                let (code, message) = match s.error_message.split_once(": ") {
                    Some((c, m))
                        if !c.is_empty()
                            && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') =>
                    {
                        (c.to_owned(), m.to_owned())
                    }
                    _ => ("sftp".to_owned(), s.error_message.clone()),
                };
                SshError::File {
                    host: self.host.clone(),
                    code,
                    message,
                }
            }
            other => SshError::Protocol {
                host: self.host.clone(),
                reason: format!("SFTP: {other}"),
            },
        }
    }

    /// Metadata of `path`.
    pub async fn stat(&self, path: &str) -> Result<RemoteMeta, SshError> {
        let a = self.raw.stat(path).await.map_err(|e| self.err(e))?;
        Ok(meta_of(path.to_owned(), &a.attrs))
    }

    /// The entries of directory `path`, sorted by name.
    pub async fn list(&self, path: &str) -> Result<Vec<RemoteMeta>, SshError> {
        let h = self
            .raw
            .opendir(path)
            .await
            .map_err(|e| self.err(e))?
            .handle;
        let mut out = Vec::new();
        loop {
            match self.raw.readdir(h.as_str()).await {
                Ok(names) => out.extend(
                    names
                        .files
                        .iter()
                        .map(|f| meta_of(f.filename.clone(), &f.attrs)),
                ),
                Err(russh_sftp::client::error::Error::Status(s))
                    if s.status_code == StatusCode::Eof =>
                {
                    break;
                }
                Err(e) => return Err(self.err(e)),
            }
        }
        let _ = self.raw.close(h).await;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Downloads `path`: its size when opened goes to `opened`, then its bytes to `out`; the
    /// target's digest of the file must match the bytes received. Stops (and fails) when
    /// `out` is closed.
    pub async fn get(
        &self,
        path: &str,
        opened: tokio::sync::oneshot::Sender<u64>,
        out: mpsc::Sender<Bytes>,
    ) -> Result<Transferred, SshError> {
        let h = self
            .raw
            .open(path, OpenFlags::READ, FileAttributes::empty())
            .await
            .map_err(|e| self.err(e))?
            .handle;
        let size = match self.raw.fstat(h.as_str()).await {
            Ok(a) => a.attrs.size.unwrap_or(0),
            Err(e) => {
                let _ = self.raw.close(h).await;
                return Err(self.err(e));
            }
        };
        let _ = opened.send(size);
        let mut hasher = Sha256::new();
        let mut offset = 0u64;
        let result = async {
            loop {
                match self.raw.read(h.as_str(), offset, CHUNK as u32).await {
                    Ok(d) if d.data.is_empty() => break,
                    Ok(d) => {
                        hasher.update(&d.data);
                        offset += d.data.len() as u64;
                        if out.send(Bytes::from(d.data)).await.is_err() {
                            return Err(SshError::Cancelled);
                        }
                    }
                    Err(russh_sftp::client::error::Error::Status(s))
                        if s.status_code == StatusCode::Eof =>
                    {
                        break;
                    }
                    Err(e) => return Err(self.err(e)),
                }
            }
            let theirs = match self
                .raw
                .extended(SHA256_EXT, h.clone().into_bytes())
                .await
                .map_err(|e| self.err(e))?
            {
                Packet::ExtendedReply(r) => String::from_utf8_lossy(&r.data).into_owned(),
                _ => {
                    return Err(SshError::Protocol {
                        host: self.host.clone(),
                        reason: "no digest for the download".to_owned(),
                    });
                }
            };
            let ours = hex::encode(hasher.clone().finalize());
            if theirs != ours {
                return Err(SshError::File {
                    host: self.host.clone(),
                    code: "hash_mismatch".to_owned(),
                    message: format!(
                        "{path}: the target's file has SHA-256 {theirs} but the {offset} bytes received have {ours} (it changed during the download?)"
                    ),
                });
            }
            Ok(Transferred {
                size: offset,
                sha256: ours,
            })
        }
        .await;
        let _ = self.raw.close(h).await;
        result
    }

    /// Uploads the chunks from `data` to `path` (mode `mode`, or the old file's), announcing
    /// `expected_sha256` (or the digest of what was sent) before the target renames it into
    /// place. The sender closing `data` ends the file; `abort` firing first discards it.
    pub async fn put(
        &self,
        path: &str,
        mode: Option<u32>,
        mut data: mpsc::Receiver<Bytes>,
        expected_sha256: Option<String>,
        abort: tokio_util::sync::CancellationToken,
    ) -> Result<Transferred, SshError> {
        let attrs = FileAttributes {
            permissions: mode,
            ..FileAttributes::empty()
        };
        let h = self
            .raw
            .open(
                path,
                OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
                attrs,
            )
            .await
            .map_err(|e| self.err(e))?
            .handle;
        // With a digest from the caller (the CLI hashed the file) the target checks the bytes
        // against it; hashing them here again would only burn CPU on the hub.
        let mut hasher = expected_sha256.is_none().then(Sha256::new);
        let mut offset = 0u64;
        // Up to WRITES_IN_FLIGHT write requests outstanding: the target's server handles them in
        // order on one channel, so pipelining keeps the tunnel busy instead of one round trip per
        // CHUNK.
        let mut inflight: std::collections::VecDeque<BoxFuture<'_, Result<(), SshError>>> =
            std::collections::VecDeque::new();
        loop {
            let chunk = tokio::select! {
                c = data.recv() => c,
                () = abort.cancelled() => {
                    // Closing the channel (not the handle) drops the upload on the target.
                    let _ = self.raw.close_session();
                    return Err(SshError::Cancelled);
                }
            };
            let Some(chunk) = chunk else { break };
            for piece in chunk.chunks(CHUNK) {
                if inflight.len() >= WRITES_IN_FLIGHT
                    && let Some(oldest) = inflight.pop_front()
                    && let Err(e) = oldest.await
                {
                    let _ = self.raw.close_session();
                    return Err(e);
                }
                let mut w: BoxFuture<'_, Result<(), SshError>> = {
                    let req = self.raw.write(h.as_str(), offset, piece.to_vec());
                    Box::pin(async move { req.await.map(|_| ()).map_err(|e| self.err(e)) })
                };
                // Poll once so the request goes out now, in order; keep it only while pending
                // (a finished future must not be polled again).
                match std::future::poll_fn(|cx| std::task::Poll::Ready(w.as_mut().poll(cx))).await {
                    std::task::Poll::Pending => inflight.push_back(w),
                    std::task::Poll::Ready(Ok(())) => {}
                    std::task::Poll::Ready(Err(e)) => {
                        let _ = self.raw.close_session();
                        return Err(e);
                    }
                }
                if let Some(hs) = hasher.as_mut() {
                    hs.update(piece);
                }
                offset += piece.len() as u64;
            }
        }
        while let Some(w) = inflight.pop_front() {
            if let Err(e) = w.await {
                let _ = self.raw.close_session();
                return Err(e);
            }
        }
        drop(inflight);
        if abort.is_cancelled() {
            let _ = self.raw.close_session();
            return Err(SshError::Cancelled);
        }
        let announce = match expected_sha256 {
            Some(e) => e,
            None => hex::encode(hasher.unwrap_or_default().finalize()),
        };
        let ours = announce.clone();
        self.raw
            .extended(SHA256_EXT, format!("{h}\n{announce}").into_bytes())
            .await
            .map_err(|e| self.err(e))?;
        self.raw.close(h).await.map_err(|e| self.err(e))?;
        Ok(Transferred {
            size: offset,
            sha256: ours,
        })
    }
}
