//! The writer: one thread, group commit, rollback on failure, crash recovery; an append that
//! finds the writer idle is written by its caller (see [`Options::inline_when_idle`]).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::DirBuilderExt as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, TryLockError, mpsc};
use std::time::{Duration, Instant};

use prometheus::Registry;
use tether_model::{Alert, AlertSink, Severity};
use time::Date;
use tokio::sync::oneshot;

use crate::anchor::{Anchor, HeadAnchor};
use crate::chain::{LineFault, LineInfo, check_line, check_rotation, hash_body, mac};
use crate::checkpoint::{Checkpoint, read_head};
use crate::clock::{Clock, SystemClock};
use crate::error::{AuditError, Result};
use crate::files::{day_path, list_day_files, sync_dir};
use crate::head::HeadWriter;
use crate::keys::{ChainKeys, KeyRing, KeySource};
use crate::metrics::Metrics;
use crate::record::{Event, Prepared, finish_line, format_ts};

/// Tuning of the writer.
#[derive(Clone)]
pub struct Options {
    /// Time source for `ts` and the day file.
    pub clock: Arc<dyn Clock>,
    /// Most records per group-commit batch (one write + fdatasync). 1 turns group commit off.
    pub max_batch: usize,
    /// Least time between two rewrites of the signed `head` (3 fsyncs each, on a thread of its
    /// own so appends never wait for them). Zero rewrites it as often as the disk allows. The
    /// head lags the log by at most about this much; it is also written on
    /// [`AuditLog::checkpoint`] and on close.
    pub head_interval: Duration,
    /// Longest extra wait for more appends before a batch is written, when fewer arrived than
    /// the previous batch had (also capped at half the last fdatasync time). Zero (the default)
    /// disables it: with the zero tail an fdatasync is short, and keeping the disk busy beats
    /// waiting for fuller batches (0.86-0.95x with a 1 ms gather, see BENCHMARKS.md). It still
    /// pays on a disk whose fdatasync takes milliseconds.
    pub gather: Duration,
    /// Bytes of zeros kept written ahead of the last record in the day file being appended to
    /// (trimmed when the file is finished or the log closed). Overwriting already-allocated
    /// blocks lets `fdatasync` skip the journal commit an append needs for the new file size:
    /// on ext4 that makes each group commit several times cheaper (see BENCHMARKS.md). Skipped
    /// while the file system has less than 4 times this free. Zero turns it off.
    pub prealloc: u64,
    /// The head counter kept outside `state_dir`: raised after every signed head is written,
    /// and checked at open (a log behind it is refused with [`AuditError::RolledBack`]).
    pub anchor: Option<Arc<dyn HeadAnchor>>,
    /// An append that finds the writer idle (no batch being written) writes and fdatasyncs its
    /// record on the caller's own thread, instead of waking the writer thread and being woken
    /// back by it: two thread hand-offs fewer per append on a quiet log. The append still
    /// returns only once its record is durable, and records stay in one chain (the writer's
    /// state is behind one lock). While a batch is being written, appends queue for the writer
    /// thread as before, which commits everything queued as one group. The caller's thread is
    /// blocked for that one write + fdatasync (inside an async `append` too: a tokio worker).
    /// Off when `gather` is set (waiting for a fuller batch is then the point). Default on.
    pub inline_when_idle: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: Arc::new(SystemClock),
            max_batch: 4096,
            head_interval: Duration::from_millis(100),
            gather: Duration::ZERO,
            prealloc: 1 << 20,
            anchor: None,
            inline_when_idle: true,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("max_batch", &self.max_batch)
            .field("head_interval", &self.head_interval)
            .field("gather", &self.gather)
            .field("prealloc", &self.prealloc)
            .field("inline_when_idle", &self.inline_when_idle)
            .field("anchor", &self.anchor.as_ref().map(|a| a.location()))
            .finish_non_exhaustive()
    }
}

/// Proof that a record is durable: its seq and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The record's sequence number.
    pub seq: u64,
    /// The record's hash.
    pub hash: [u8; 32],
}

impl Receipt {
    /// The hash as lowercase hex (as it appears in the log).
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }
}

/// What [`AuditLog::rotate_keys`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The new key epoch.
    pub epoch: u32,
    /// Seq of the `key.rotated` record (MACed with the old key); later records use the new one.
    pub seq: u64,
    /// Hex id of the new HMAC key (SHA-256 over a domain tag and the key; not the key).
    pub hmac_key_id: String,
    /// Hex Ed25519 public key that verifies heads from now on.
    pub signing_key: String,
    /// Which keys are new: `hmac`, `signing` or both.
    pub rotated: Vec<String>,
}

struct RotateCmd {
    epoch: u32,
    keys: ChainKeys,
    record: Prepared,
    rotated: Vec<String>,
}

/// A partial tail that [`AuditLog::open`] cut off (left by a crash mid-write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The day file.
    pub file: PathBuf,
    /// Where the file now ends (the end of the last good record).
    pub offset: u64,
    /// How many bytes were dropped.
    pub bytes: u64,
}

/// What [`AuditLog::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Seq of the last record in the log (0 when empty); the next append gets `last_seq + 1`.
    pub last_seq: u64,
    /// Number of day files.
    pub files: usize,
    /// A torn tail that was dropped, if any. These bytes were never acknowledged.
    pub torn: Option<TornTail>,
    /// The signed head found on disk (its signature verified), if any.
    pub head: Option<Checkpoint>,
}

enum Cmd {
    Append(Prepared, oneshot::Sender<Result<Receipt>>),
    Checkpoint(oneshot::Sender<Result<Checkpoint>>),
    Rotate(Box<RotateCmd>, oneshot::Sender<Result<Rotated>>),
    Close(oneshot::Sender<()>),
}

/// Handle to the audit log. Cheap to clone; the writer thread stops when the last handle is
/// dropped (after writing a pending head) or on [`AuditLog::close`].
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Cmd>,
    /// The writer's state: the writer thread holds it while it writes a batch; an append that
    /// finds it free writes itself ([`Options::inline_when_idle`]; `None` when off).
    writer: Option<Arc<Mutex<Writer>>>,
    dir: Arc<PathBuf>,
    last_seq: Arc<AtomicU64>,
    /// The key epoch new records are MACed with.
    epoch: Arc<AtomicU32>,
    /// `tether_audit_append_seconds`: what [`AuditLog::append`] waits.
    append_seconds: prometheus::Histogram,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.dir)
            .field("last_seq", &self.last_seq())
            .finish()
    }
}

impl AuditLog {
    /// Opens (creating if needed, mode 0700) the audit directory, recovers the tail after a
    /// crash, checks the signed head, and starts the writer thread. Default [`Options`].
    pub fn open(
        dir: impl Into<PathBuf>,
        keys: &dyn KeySource,
        registry: &Registry,
        alerts: Arc<dyn AlertSink>,
    ) -> Result<(AuditLog, Recovery)> {
        Self::open_with(dir, keys, registry, alerts, Options::default())
    }

    /// Like [`AuditLog::open`] with explicit options.
    pub fn open_with(
        dir: impl Into<PathBuf>,
        keys: &dyn KeySource,
        registry: &Registry,
        alerts: Arc<dyn AlertSink>,
        opts: Options,
    ) -> Result<(AuditLog, Recovery)> {
        let dir: PathBuf = dir.into();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| AuditError::Create {
                path: dir.clone(),
                source,
            })?;
        let ring = KeyRing::load(keys)?;
        let metrics = Metrics::register(registry)?;
        let append_seconds = metrics.append_seconds.clone();
        let (tail, recovery) = recover(&dir, &ring, opts.anchor.as_deref())?;
        let keys = ring
            .get(tail.epoch)
            .cloned()
            .ok_or_else(|| AuditError::KeyUnavailable {
                which: "hmac",
                reason: format!(
                    "the log is at key epoch {} but the key source has no keys for it; restore the vault entries of that epoch",
                    tail.epoch
                ),
            })?;
        let epoch = Arc::new(AtomicU32::new(tail.epoch));
        let last_seq = Arc::new(AtomicU64::new(tail.next_seq - 1));
        let head_dirty = recovery
            .head
            .as_ref()
            .is_none_or(|h| h.seq != tail.next_seq - 1);
        let (tx, rx) = mpsc::channel();
        let head = Arc::new(HeadWriter::new(
            dir.clone(),
            keys.clone(),
            opts.clock.clone(),
            metrics.clone(),
            alerts.clone(),
            opts.head_interval,
            opts.anchor.clone(),
        ));
        if head_dirty {
            // A fresh log gets its head at once; a stale one is brought up to date. A failure is
            // alerted and retried by the head thread.
            if head.write(tail.next_seq - 1, &tail.prev).is_err() {
                head.mark(tail.next_seq - 1, tail.prev);
            }
        }
        let spawn_err = |source| AuditError::Create {
            path: dir.clone(),
            source,
        };
        let head_thread = {
            let head = head.clone();
            std::thread::Builder::new()
                .name("tether-audit-head".into())
                .spawn(move || head.run())
                .map_err(spawn_err)?
        };
        let w = Writer {
            dir: dir.clone(),
            keys,
            clock: opts.clock,
            metrics,
            alerts,
            cur: tail.file,
            epoch: epoch.clone(),
            next_seq: tail.next_seq,
            prev: tail.prev,
            head,
            head_thread: Some(head_thread),
            max_batch: opts.max_batch.max(1),
            gather: opts.gather,
            last_batch: 1,
            last_fsync: Duration::ZERO,
            closed: false,
            pending_rollback: None,
            zeros: vec![0u8; usize::try_from(opts.prealloc).unwrap_or(1 << 20)],
            buf: Vec::with_capacity(1 << 20),
            last_seq: last_seq.clone(),
        };
        let inline = opts.inline_when_idle && opts.gather.is_zero();
        let shared = Arc::new(Mutex::new(w));
        {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("tether-audit-writer".into())
                .spawn(move || Writer::run(&shared, &rx))
                .map_err(spawn_err)?;
        }
        Ok((
            AuditLog {
                tx,
                writer: inline.then_some(shared),
                dir: Arc::new(dir),
                last_seq,
                epoch,
                append_seconds,
            },
            recovery,
        ))
    }

    /// Appends one event and returns once it is durable (written and fdatasync'd with its
    /// batch). On error the record is not in the log and the action must be refused.
    ///
    /// When the writer is idle the record is written and synced on this call's thread (see
    /// [`Options::inline_when_idle`]); otherwise it joins the writer thread's next batch.
    pub async fn append(&self, event: &Event) -> Result<Receipt> {
        let started = std::time::Instant::now();
        let p = Prepared::new(event)?;
        let r = match self.try_inline(p) {
            Ok(done) => done,
            Err(p) => {
                let rx = self.submit(p)?;
                rx.await.map_err(|_| AuditError::WriterStopped)?
            }
        };
        self.append_seconds.observe(started.elapsed().as_secs_f64());
        r
    }

    /// Blocking variant of [`AuditLog::append`] for synchronous callers (not inside a runtime).
    pub fn append_blocking(&self, event: &Event) -> Result<Receipt> {
        let p = Prepared::new(event)?;
        let p = match self.try_inline(p) {
            Ok(done) => return done,
            Err(p) => p,
        };
        let rx = self.submit(p)?;
        rx.blocking_recv().map_err(|_| AuditError::WriterStopped)?
    }

    /// Writes `p` as a batch of one on this thread if no batch is being written now; gives it
    /// back otherwise (then it goes to the writer thread).
    fn try_inline(&self, p: Prepared) -> std::result::Result<Result<Receipt>, Prepared> {
        let Some(shared) = &self.writer else {
            return Err(p);
        };
        let mut w = match shared.try_lock() {
            Ok(w) => w,
            // Busy (the writer thread or another caller is writing): the writer thread's queue.
            Err(TryLockError::WouldBlock) => return Err(p),
            // A panic mid-write: the writer has stopped (see `Writer::run`).
            Err(TryLockError::Poisoned(_)) => return Ok(Err(AuditError::WriterStopped)),
        };
        if w.closed {
            return Ok(Err(AuditError::WriterStopped));
        }
        let (tx, mut rx) = oneshot::channel();
        w.commit(vec![(p, tx)]);
        drop(w);
        Ok(match rx.try_recv() {
            Ok(result) => result,
            Err(_) => Err(AuditError::WriterStopped),
        })
    }

    fn submit(&self, p: Prepared) -> Result<oneshot::Receiver<Result<Receipt>>> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Append(p, tx))
            .map_err(|_| AuditError::WriterStopped)?;
        Ok(rx)
    }

    /// Writes a fresh signed head now and returns it (for `tether audit checkpoint --export`:
    /// print [`Checkpoint::to_text`]).
    pub async fn checkpoint(&self) -> Result<Checkpoint> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Checkpoint(tx))
            .map_err(|_| AuditError::WriterStopped)?;
        rx.await.map_err(|_| AuditError::WriterStopped)?
    }

    /// The key epoch new records are MACed with (0 until the first rotation).
    pub fn key_epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Rotates the audit keys: makes the next epoch's keys in `keys` (a fresh HMAC key if
    /// `hmac`, a fresh signing key if `signing`; the other one carried over), then appends a
    /// `key.rotated` record — MACed with the *old* key, naming the new epoch, the new HMAC key's
    /// id and the new head-verifying key — and MACs every later record with the new key.
    /// `verify` and recovery follow the epochs, so the chain stays verifiable; the old keys must
    /// be kept. Raises a `key_rotation` alert.
    pub async fn rotate_keys(
        &self,
        keys: Arc<dyn KeySource>,
        actor: crate::record::Actor,
        hmac: bool,
        signing: bool,
    ) -> Result<Rotated> {
        let (hmac, signing) = if hmac || signing {
            (hmac, signing)
        } else {
            (true, true)
        };
        let epoch = self.key_epoch() + 1;
        let material = tokio::task::spawn_blocking(move || {
            keys.create_epoch(epoch, hmac, signing)?;
            keys.epoch_keys(epoch)?
                .ok_or_else(|| AuditError::KeyUnavailable {
                    which: "rotation",
                    reason: format!("the key source made no keys for epoch {epoch}"),
                })
        })
        .await
        .map_err(|_| AuditError::WriterStopped)??;
        let new = ChainKeys::from_material(&material)?;
        let rotated: Vec<String> = [(hmac, "hmac"), (signing, "signing")]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| n.to_owned())
            .collect();
        let event = Event::new(crate::chain::KEY_ROTATED, actor).data(serde_json::json!({
            "epoch": epoch,
            "previous_epoch": epoch - 1,
            "hmac_key_id": hex::encode(new.hmac_id),
            "signing_key": hex::encode(new.verifying.to_bytes()),
            "rotated": rotated,
        }));
        let cmd = RotateCmd {
            epoch,
            keys: new,
            record: Prepared::new(&event)?,
            rotated,
        };
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Rotate(Box::new(cmd), tx))
            .map_err(|_| AuditError::WriterStopped)?;
        rx.await.map_err(|_| AuditError::WriterStopped)?
    }

    /// Alias of [`AuditLog::checkpoint`] returning the portable text form.
    pub async fn export_checkpoint(&self) -> Result<String> {
        Ok(self.checkpoint().await?.to_text())
    }

    /// Writes a pending head and stops the writer. Appends queued after this fail with
    /// [`AuditError::WriterStopped`].
    pub async fn close(self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Blocking variant of [`AuditLog::close`].
    pub fn close_blocking(self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close(tx)).is_ok() {
            let _ = rx.blocking_recv();
        }
    }

    /// The audit directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Seq of the last durable record (0 when empty).
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }
}

struct DayFile {
    date: Date,
    path: PathBuf,
    file: File,
    /// End of the last durable record: where the next batch is written.
    len: u64,
    /// Size of the file: `len` plus the preallocated zero tail.
    alloc: u64,
}

impl DayFile {
    /// Cuts the preallocated zero tail, so a finished day file ends with its last record.
    fn trim(&mut self) {
        if self.alloc <= self.len {
            return;
        }
        match self
            .file
            .set_len(self.len)
            .and_then(|()| self.file.sync_all())
        {
            Ok(()) => self.alloc = self.len,
            // Harmless: readers stop at the first NUL, and recovery keeps the zero tail.
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "could not trim the audit file's zero tail")
            }
        }
    }
}

struct Tail {
    file: Option<DayFile>,
    next_seq: u64,
    prev: [u8; 32],
    /// The key epoch the next record carries.
    epoch: u32,
}

struct Writer {
    dir: PathBuf,
    keys: ChainKeys,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    alerts: Arc<dyn AlertSink>,
    cur: Option<DayFile>,
    /// The key epoch of `keys`, shared with the handles.
    epoch: Arc<AtomicU32>,
    next_seq: u64,
    prev: [u8; 32],
    /// Writes the signed head off the append path.
    head: Arc<HeadWriter>,
    head_thread: Option<std::thread::JoinHandle<()>>,
    max_batch: usize,
    gather: Duration,
    last_batch: usize,
    last_fsync: Duration,
    /// Set once the writer has finished (close, or every handle dropped): no more writes.
    closed: bool,
    /// A rollback that failed; retried before the next write.
    pending_rollback: Option<u64>,
    /// `prealloc` zero bytes, written ahead of the records.
    zeros: Vec<u8>,
    buf: Vec<u8>,
    last_seq: Arc<AtomicU64>,
}

type Waiter = oneshot::Sender<Result<Receipt>>;

impl Writer {
    /// The writer thread: waits for commands without holding the writer's lock (so an idle
    /// writer's lock is free for inline appends), then takes it for the batch. A lock poisoned
    /// by a panic mid-write stops the writer for good (fail closed, as a panic on this thread
    /// always did): every later append gets [`AuditError::WriterStopped`].
    fn run(shared: &Mutex<Writer>, rx: &mpsc::Receiver<Cmd>) {
        loop {
            let Ok(first) = rx.recv() else { break };
            let Ok(mut w) = shared.lock() else { return };
            // Closed (by an earlier `Close`): dropping `first` answers it with WriterStopped.
            if w.closed || w.step(first, rx) {
                return;
            }
        }
        if let Ok(mut w) = shared.lock()
            && !w.closed
        {
            w.finish();
        }
    }

    /// Handles `first` and whatever else is queued as one batch; true once closed.
    fn step(&mut self, first: Cmd, rx: &mpsc::Receiver<Cmd>) -> bool {
        let mut appends: Vec<(Prepared, Waiter)> = Vec::new();
        let mut others = Vec::new();
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Append(p, w) => appends.push((p, w)),
                other => others.push(other),
            }
            if appends.len() < self.max_batch {
                next = rx.try_recv().ok();
            }
        }
        // Gather: the callers acknowledged by the last batch are likely to come back at
        // once; wait a little (bounded by a fraction of the last fsync) for them, so one
        // fdatasync serves them all instead of a short batch followed by a long one.
        let target = self.last_batch.min(self.max_batch);
        if !appends.is_empty() && appends.len() < target && !self.gather.is_zero() {
            let until = Instant::now() + self.gather.min(self.last_fsync / 2);
            while appends.len() < target {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match rx.recv_timeout(left) {
                    Ok(Cmd::Append(p, w)) => appends.push((p, w)),
                    Ok(other) => others.push(other),
                    Err(_) => break,
                }
            }
        }
        if !appends.is_empty() {
            self.commit(appends);
        }
        for o in others {
            match o {
                Cmd::Checkpoint(tx) => {
                    let _ = tx.send(self.head.write(self.next_seq - 1, &self.prev));
                }
                Cmd::Rotate(cmd, tx) => {
                    let _ = tx.send(self.rotate(*cmd));
                }
                Cmd::Close(tx) => {
                    self.finish();
                    let _ = tx.send(());
                    return true;
                }
                Cmd::Append(..) => {}
            }
        }
        false
    }

    /// On close: the pending head written, and the zero tail cut off the current day file.
    fn finish(&mut self) {
        self.closed = true;
        self.head.close();
        if let Some(t) = self.head_thread.take() {
            let _ = t.join();
        }
        if self.pending_rollback.is_none()
            && let Some(cur) = self.cur.as_mut()
        {
            cur.trim();
        }
    }

    fn write_failed(&self, source: &std::io::Error) -> AuditError {
        AuditError::WriteFailed {
            dir: self.dir.clone(),
            source: clone_io(source),
        }
    }

    fn commit(&mut self, batch: Vec<(Prepared, Waiter)>) {
        let n = batch.len();
        let now = self.clock.now().to_offset(time::UtcOffset::UTC);
        if let Err(e) = self.prepare_file(now.date()) {
            self.fail(batch, &e);
            return;
        }
        let ts = format_ts(now);
        self.buf.clear();
        let mut seq = self.next_seq;
        let mut prev = self.prev;
        let mut receipts = Vec::with_capacity(n);
        for (p, _) in &batch {
            let start = self.buf.len();
            p.write_body(
                &mut self.buf,
                &prev,
                seq,
                &ts,
                self.epoch.load(Ordering::Acquire),
            );
            let hash = hash_body(&prev, &self.buf[start..], false);
            let m = mac(&self.keys, &hash);
            finish_line(&mut self.buf, &hash, &m);
            receipts.push(Receipt { seq, hash });
            prev = hash;
            seq += 1;
        }
        let Some(cur) = self.cur.as_mut() else {
            let e = std::io::Error::other("no day file open");
            self.fail(batch, &e);
            return;
        };
        let end = cur.len + self.buf.len() as u64;
        let written = Instant::now();
        let res = cur.file.write_all_at(&self.buf, cur.len).and_then(|()| {
            if end > cur.alloc && !self.zeros.is_empty() && room_for(&cur.file, self.zeros.len()) {
                // Keep a zero tail ahead of the records (see `Options::prealloc`). Not having
                // one only costs speed, so a failure here is undone and otherwise ignored.
                let pad = (end + self.zeros.len() as u64).next_multiple_of(4096) - end;
                let pad = usize::try_from(pad).unwrap_or(0).min(self.zeros.len());
                match cur.file.write_all_at(&self.zeros[..pad], end) {
                    Ok(()) => cur.alloc = end + pad as u64,
                    Err(_) => cur.file.set_len(end.max(cur.alloc))?,
                }
            }
            let t = Instant::now();
            self.metrics
                .write_seconds
                .observe(t.duration_since(written).as_secs_f64());
            let r = cur.file.sync_data();
            self.last_fsync = t.elapsed();
            self.metrics
                .fsync_seconds
                .observe(self.last_fsync.as_secs_f64());
            r
        });
        match res {
            Ok(()) => {
                cur.len = end;
                cur.alloc = cur.alloc.max(end);
                self.next_seq = seq;
                self.prev = prev;
                self.last_seq.store(seq - 1, Ordering::Release);
                self.last_batch = n;
                self.metrics.records.inc_by(n as u64);
                self.metrics.batch_size.observe(n as f64);
                self.head.mark(seq - 1, prev);
                for ((p, w), r) in batch.into_iter().zip(receipts) {
                    self.metrics
                        .durable_seconds
                        .observe(p.queued.elapsed().as_secs_f64());
                    let _ = w.send(Ok(r));
                }
            }
            Err(e) => {
                let good = cur.len;
                self.pending_rollback = Some(good);
                let _ = self.retry_rollback();
                self.fail(batch, &e);
            }
        }
    }

    /// Appends the `key.rotated` record under the current keys, then switches to the new ones
    /// (and signs a head with them at once).
    fn rotate(&mut self, cmd: RotateCmd) -> Result<Rotated> {
        let current = self.epoch.load(Ordering::Acquire);
        if cmd.epoch != current + 1 {
            return Err(AuditError::KeyUnavailable {
                which: "rotation",
                reason: format!(
                    "another rotation moved the log to epoch {current} meanwhile; run it again"
                ),
            });
        }
        let (tx, mut rx) = oneshot::channel();
        self.commit(vec![(cmd.record, tx)]);
        let receipt = match rx.try_recv() {
            Ok(r) => r?,
            Err(_) => return Err(AuditError::WriterStopped),
        };
        let signing_key = hex::encode(cmd.keys.verifying.to_bytes());
        let hmac_key_id = hex::encode(cmd.keys.hmac_id);
        self.keys = cmd.keys.clone();
        self.epoch.store(cmd.epoch, Ordering::Release);
        self.head.set_keys(cmd.keys);
        // A failure is alerted and retried by the head thread.
        if self.head.write(receipt.seq, &receipt.hash).is_err() {
            self.head.mark(receipt.seq, receipt.hash);
        }
        let msg = format!(
            "audit keys rotated ({}): records after seq {} are MACed with key epoch {}",
            cmd.rotated.join(" and "),
            receipt.seq,
            cmd.epoch
        );
        tracing::info!("{msg}");
        self.alerts
            .raise(Alert::new("key_rotation", Severity::Info, msg));
        Ok(Rotated {
            epoch: cmd.epoch,
            seq: receipt.seq,
            hmac_key_id,
            signing_key,
            rotated: cmd.rotated,
        })
    }

    /// Makes sure the right day file is open and any earlier failed rollback is done.
    fn prepare_file(&mut self, today: Date) -> std::io::Result<()> {
        self.retry_rollback()?;
        let date = match &self.cur {
            Some(c) if c.date >= today => return Ok(()),
            _ => today,
        };
        // The finished day file ends with its last record.
        if let Some(old) = self.cur.as_mut() {
            old.trim();
        }
        let path = day_path(&self.dir, date);
        let existed = path.exists();
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)?;
        let alloc = file.metadata()?.len();
        let len = if alloc == 0 {
            0
        } else {
            let mut data = Vec::new();
            crate::files::read_logical(&file, 0, &mut data)? as u64
        };
        if !existed {
            sync_dir(&self.dir)?;
        }
        self.cur = Some(DayFile {
            date,
            path,
            file,
            len,
            alloc,
        });
        Ok(())
    }

    fn retry_rollback(&mut self) -> std::io::Result<()> {
        let (Some(good), Some(cur)) = (self.pending_rollback, self.cur.as_mut()) else {
            return Ok(());
        };
        let r = cur.file.set_len(good).and_then(|()| cur.file.sync_all());
        match r {
            Ok(()) => {
                cur.len = good;
                cur.alloc = good;
                self.pending_rollback = None;
                Ok(())
            }
            Err(e) => {
                tracing::error!(file = %cur.path.display(), error = %e, "audit rollback failed");
                Err(std::io::Error::new(
                    e.kind(),
                    format!(
                        "rolling {} back to {good} bytes after an earlier failed write failed: {e}",
                        cur.path.display()
                    ),
                ))
            }
        }
    }

    fn fail(&mut self, batch: Vec<(Prepared, Waiter)>, e: &std::io::Error) {
        self.metrics.write_failures.inc();
        let msg = format!(
            "audit write failed in {}: {e}; {} action(s) refused",
            self.dir.display(),
            batch.len()
        );
        tracing::error!("{msg}");
        self.alerts
            .raise(Alert::new("audit_write_failed", Severity::Critical, msg));
        for (_, w) in batch {
            let _ = w.send(Err(self.write_failed(e)));
        }
    }
}

fn clone_io(e: &std::io::Error) -> std::io::Error {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::new(e.kind(), e.to_string()),
    }
}

/// What walking one day file found: the verified, chained prefix and where it stops.
struct Walk {
    /// End of the verified prefix (just past its last newline).
    good_end: usize,
    /// Where the non-zero bytes end: beyond this the file is all zeros.
    content_end: usize,
    first: Option<LineInfo>,
    last: Option<LineInfo>,
    /// The seq at the first break (the record there, or the one expected there) and why.
    fault: Option<(u64, String)>,
}

/// Walks the records of one day file, checking each line and the links between them.
fn walk(keys: &KeyRing, data: &[u8]) -> Walk {
    // The records end at the first NUL: after it comes the writer's zero tail, if any.
    let records_end = crate::files::logical_len(data);
    let content_end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let mut w = Walk {
        good_end: 0,
        content_end,
        first: None,
        last: None,
        fault: None,
    };
    let mut pos = 0usize;
    while let Some(off) = data[pos..records_end].iter().position(|&b| b == b'\n') {
        let end = pos + off;
        let expected = w.last.map(|l| l.seq + 1);
        match check_line(keys, &data[pos..end]) {
            Ok(info) if check_rotation(keys, &info).is_err() => {
                let why = check_rotation(keys, &info).err().unwrap_or_default();
                w.fault = Some((info.seq, format!("{why} (at byte {pos})")));
                return w;
            }
            Ok(info) => match &w.last {
                Some(l) if info.seq != l.seq + 1 || info.prev != l.hash => {
                    w.fault = Some((
                        l.seq + 1,
                        format!(
                            "record {} does not chain onto record {} at byte {pos}",
                            info.seq, l.seq
                        ),
                    ));
                    return w;
                }
                Some(l) if info.epoch != l.next_epoch() => {
                    w.fault = Some((
                        info.seq,
                        format!(
                            "record {} at byte {pos} is MACed with the key of epoch {} but the chain is at key epoch {}: forged with a retired key, or a key.rotated record was removed",
                            info.seq,
                            info.epoch,
                            l.next_epoch()
                        ),
                    ));
                    return w;
                }
                _ => {
                    w.first.get_or_insert(info);
                    w.last = Some(info);
                }
            },
            Err((seq, fault)) => {
                let why = match fault {
                    LineFault::Malformed(m) => m,
                    LineFault::HashMismatch => "its content does not match its hash".into(),
                    LineFault::BadHmac => {
                        "its HMAC is wrong (edited, forged, or read with another key)".into()
                    }
                    LineFault::UnknownEpoch(k) => format!(
                        "it names key epoch {k}, for which the key source holds no key (forged, or that epoch's vault entries are missing)"
                    ),
                };
                w.fault = Some((
                    expected.or(seq).unwrap_or(1),
                    format!("the complete record at byte {pos} does not verify: {why}"),
                ));
                return w;
            }
        }
        pos = end + 1;
        w.good_end = pos;
    }
    if w.good_end < content_end {
        let next = w.last.map_or(1, |l| l.seq + 1);
        let rest = &data[w.good_end..content_end];
        if rest.contains(&0) || rest.contains(&b'\n') || content_end > records_end {
            w.fault = Some((
                next,
                format!(
                    "bytes {}..{content_end} are not one incomplete final line: they hold NUL bytes or line breaks with data after them (records may be hidden there)",
                    w.good_end
                ),
            ));
        }
    }
    w
}

/// Finds the tail of the log and checks it, changing nothing on disk until every check passed.
///
/// Only an incomplete final line of the newest non-empty day file (bytes after its last
/// newline, no NULs among them, only zeros after them) is a torn write: it was never
/// acknowledged, and it is dropped. A complete record that fails its hash or HMAC, a break in
/// the chain, data hidden behind NUL bytes, a damaged or unlinked older day file, or a head
/// that disagrees with the log all refuse the start ([`AuditError::Damaged`],
/// [`AuditError::HeadMismatch`]) with the file and seq named, and nothing is changed.
fn recover(
    dir: &Path,
    keys: &KeyRing,
    anchor: Option<&dyn HeadAnchor>,
) -> Result<(Tail, Recovery)> {
    let counter: Option<(Anchor, String)> = match anchor.map(|a| (a.load(), a.location())) {
        Some((Ok(Some(a)), location)) => Some((a, location)),
        Some((Ok(None), _)) | None => None,
        Some((Err(e), location)) => {
            tracing::warn!(%location, error = %e, "cannot read the audit head counter kept outside state_dir; a rollback of log and head together cannot be detected at this start");
            None
        }
    };
    let head = read_head(dir)?;
    if let Some(h) = &head {
        h.verify_any(&keys.verifying_keys())
            .map_err(|e| AuditError::BadCheckpoint {
                origin: dir.join(crate::files::HEAD_FILE).display().to_string(),
                reason: e.checkpoint_fault(),
            })?;
    }
    let files = list_day_files(dir)?;
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| AuditError::Read {
            path: path.clone(),
            source,
        })
    };
    let damaged = |path: &Path, seq: u64, reason: String| AuditError::Damaged {
        file: path.to_path_buf(),
        seq,
        reason,
    };
    // The torn tail to drop once every check passed: (file, offset, bytes).
    let mut torn: Option<TornTail> = None;
    let mut found: Option<(Date, PathBuf, u64, u64, LineInfo)> = None;
    let mut head_hash_seen = None;
    let mut counter_hash_seen = None;
    // The first record of the newer file already walked, which the older file must chain to.
    let mut successor: Option<(PathBuf, LineInfo)> = None;
    let mut newest = true;
    let mut linked = false;
    for (date, path) in files.iter().rev() {
        let data = read(path)?;
        let w = walk(keys, &data);
        if w.content_end == 0 {
            continue;
        }
        if let Some((seq, reason)) = w.fault {
            // Every complete record in this file verified so far; what follows is damage,
            // unless it is the incomplete final line of the newest file (then no fault is set).
            return Err(damaged(path, seq, reason));
        }
        if w.good_end < w.content_end {
            if !newest {
                return Err(damaged(
                    path,
                    w.last.map_or(1, |l| l.seq + 1),
                    format!(
                        "the file ends in an incomplete record at byte {} but a later day file follows; only the newest file can hold a torn write",
                        w.good_end
                    ),
                ));
            }
            torn = Some(TornTail {
                file: path.clone(),
                offset: w.good_end as u64,
                bytes: (w.content_end - w.good_end) as u64,
            });
        }
        newest = false;
        if let (Some(h), Some(last)) = (&head, w.last)
            && h.seq <= last.seq
            && w.first.is_some_and(|f| f.seq <= h.seq)
        {
            // The head's record is in this file: find its hash.
            head_hash_seen = head_hash_of(keys, &data, h.seq).or(head_hash_seen);
        }
        if let (Some((a, _)), Some(last)) = (&counter, w.last)
            && a.seq <= last.seq
            && w.first.is_some_and(|f| f.seq <= a.seq)
        {
            counter_hash_seen = head_hash_of(keys, &data, a.seq).or(counter_hash_seen);
        }
        if let Some((newer, first)) = &successor {
            let Some(last) = w.last else {
                return Err(damaged(
                    path,
                    first.seq.saturating_sub(1),
                    format!(
                        "it holds no record, but {} continues the chain",
                        newer.display()
                    ),
                ));
            };
            if first.seq != last.seq + 1
                || first.prev != last.hash
                || first.epoch != last.next_epoch()
            {
                return Err(damaged(
                    path,
                    last.seq + 1,
                    format!(
                        "its last record is seq {} but {} starts with seq {} that does not chain onto it; records were removed or replaced",
                        last.seq,
                        newer.display(),
                        first.seq
                    ),
                ));
            }
            // The older file ends cleanly and links on: the chain's tail is checked.
            linked = true;
            break;
        }
        if let Some(l) = w.last {
            // A torn tail in this file is cut below: the file then ends at the good records.
            let alloc = if torn.as_ref().is_some_and(|t| &t.file == path) {
                w.good_end
            } else {
                data.len()
            };
            found = Some((*date, path.clone(), w.good_end as u64, alloc as u64, l));
            match w.first {
                Some(f) if f.seq > 1 => successor = Some((path.clone(), f)),
                _ => break,
            }
        }
    }
    if let (false, Some((path, first))) = (linked, &successor) {
        return Err(damaged(
            path,
            first.seq - 1,
            format!(
                "the log starts at seq {} but no older day file holds records 1..{}; they were removed",
                first.seq,
                first.seq - 1
            ),
        ));
    }
    let epoch = found.as_ref().map_or(0, |f| f.4.next_epoch());
    let (last_seq, prev, file) = match found {
        Some((date, path, len, alloc, info)) => {
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|source| AuditError::Read {
                    path: path.clone(),
                    source,
                })?;
            (
                info.seq,
                info.hash,
                Some(DayFile {
                    date,
                    path,
                    file,
                    len,
                    alloc,
                }),
            )
        }
        None => (0, [0u8; 32], None),
    };
    if let Some(h) = &head {
        let mismatch = |hash_mismatch| AuditError::HeadMismatch {
            dir: dir.to_path_buf(),
            file: file.as_ref().map(|f| f.path.clone()),
            log_seq: last_seq,
            head_seq: h.seq,
            hash_mismatch,
        };
        if h.seq > last_seq {
            return Err(mismatch(false));
        }
        let want = h.hash_bytes();
        if h.seq == last_seq && want != Some(prev) && !(h.seq == 0 && want == Some([0; 32])) {
            return Err(mismatch(true));
        }
        if let Some(seen) = head_hash_seen
            && want != Some(seen)
        {
            return Err(mismatch(true));
        }
    }
    if let Some((a, location)) = &counter {
        let rolled_back = |hash_mismatch| AuditError::RolledBack {
            dir: dir.to_path_buf(),
            location: location.clone(),
            log_seq: last_seq,
            anchor_seq: a.seq,
            hash_mismatch,
        };
        if a.seq > last_seq {
            return Err(rolled_back(false));
        }
        if a.seq == last_seq && a.seq > 0 && a.hash != prev {
            return Err(rolled_back(true));
        }
        if let Some(seen) = counter_hash_seen
            && seen != a.hash
        {
            return Err(rolled_back(true));
        }
    }
    if let Some(t) = &torn {
        let f = OpenOptions::new()
            .write(true)
            .open(&t.file)
            .map_err(|source| AuditError::WriteFailed {
                dir: dir.to_path_buf(),
                source,
            })?;
        f.set_len(t.offset)
            .and_then(|()| f.sync_all())
            .map_err(|source| AuditError::WriteFailed {
                dir: dir.to_path_buf(),
                source,
            })?;
        tracing::warn!(file = %t.file.display(), bytes = t.bytes, "dropped a torn audit tail (an incomplete final line, never acknowledged)");
    }
    Ok((
        Tail {
            file,
            next_seq: last_seq + 1,
            prev,
            epoch,
        },
        Recovery {
            last_seq,
            files: files.len(),
            torn,
            head,
        },
    ))
}

/// The hash of record `seq` in `data`, if a verified line holds it.
fn head_hash_of(keys: &KeyRing, data: &[u8], seq: u64) -> Option<[u8; 32]> {
    let end = crate::files::logical_len(data);
    data[..end]
        .split(|&b| b == b'\n')
        .filter_map(|l| check_line(keys, l).ok())
        .find(|i| i.seq == seq)
        .map(|i| i.hash)
}

/// Whether the file system holding `file` has room for a zero tail of `bytes` (4 times over, so
/// that preallocation never takes the last free space from the records themselves).
fn room_for(file: &File, bytes: usize) -> bool {
    nix::sys::statvfs::fstatvfs(file).is_ok_and(|st| {
        let free = st.blocks_available().saturating_mul(st.fragment_size());
        free / 4 >= bytes as u64
    })
}
