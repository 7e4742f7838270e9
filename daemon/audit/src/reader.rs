//! Reading the log for `tether audit tail [-f]` and `tether audit export`.
//!
//! Readers do not verify; run [`crate::verify`] for that. Reads of the audit log through the
//! control API must themselves be audited (`audit.read`) by the caller.

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use time::Date;

use crate::error::{AuditError, Result};
use crate::files::{list_day_files, read_logical};
use crate::record::{Record, ts_date};

/// Which records to return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Event types to keep; `enroll.*` matches every type starting with `enroll.`. Empty keeps all.
    pub types: Vec<String>,
    /// Keep only records about this host.
    pub host: Option<String>,
    /// Keep only records from this UTC date on (whole day files before it are skipped).
    pub from: Option<Date>,
}

impl Filter {
    /// Whether `r` passes the filter.
    pub fn matches(&self, r: &Record) -> bool {
        if !self.types.is_empty()
            && !self.types.iter().any(|t| match t.strip_suffix('*') {
                Some(prefix) => r.kind.starts_with(prefix),
                None => r.kind == *t,
            })
        {
            return false;
        }
        if let Some(h) = &self.host
            && r.host.as_deref() != Some(h.as_str())
        {
            return false;
        }
        if let Some(f) = self.from
            && ts_date(&r.ts).is_some_and(|d| d < f)
        {
            return false;
        }
        true
    }

    fn files(&self, dir: &Path) -> Result<Vec<(Date, PathBuf)>> {
        Ok(list_day_files(dir)?
            .into_iter()
            .filter(|(d, _)| self.from.is_none_or(|f| *d >= f))
            .collect())
    }
}

fn parse(path: &Path, line_no: u64, line: &[u8], after_seq: u64) -> Result<Record> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    serde_json::from_slice(line).map_err(|e| AuditError::Malformed {
        path: path.to_path_buf(),
        line: line_no,
        after_seq,
        reason: e.to_string(),
    })
}

/// Iterator over the records in the log that pass a filter, oldest first. An incomplete last
/// line (a write in progress) is not returned.
pub struct Records {
    filter: Filter,
    files: VecDeque<(Date, PathBuf)>,
    cur: Option<(PathBuf, BufReader<std::fs::File>, u64)>,
    buf: Vec<u8>,
    last_seq: u64,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

/// Reads the records of `dir` that pass `filter`, oldest first.
pub fn read_records(dir: &Path, filter: &Filter) -> Result<Records> {
    Ok(Records {
        filter: filter.clone(),
        files: filter.files(dir)?.into(),
        cur: None,
        buf: Vec::new(),
        last_seq: 0,
    })
}

impl Records {
    /// The next raw line (with its newline) and parsed record that pass the filter.
    fn next_raw(&mut self) -> Option<Result<(Vec<u8>, Record)>> {
        loop {
            if self.cur.is_none() {
                let (_, path) = self.files.pop_front()?;
                match std::fs::File::open(&path) {
                    Ok(f) => self.cur = Some((path, BufReader::with_capacity(1 << 20, f), 0)),
                    Err(source) => return Some(Err(AuditError::Read { path, source })),
                }
            }
            let (path, r, line_no) = self.cur.as_mut()?;
            self.buf.clear();
            match r.read_until(b'\n', &mut self.buf) {
                Err(source) => {
                    return Some(Err(AuditError::Read {
                        path: path.clone(),
                        source,
                    }));
                }
                Ok(0) => {
                    self.cur = None;
                    continue;
                }
                // A last line without its newline (being written, or torn), or the
                // preallocated zero tail of the file being appended to: the end of this file.
                Ok(_) if self.buf.last() != Some(&b'\n') || self.buf.contains(&0) => {
                    self.cur = None;
                    continue;
                }
                Ok(_) => {
                    *line_no += 1;
                    match parse(path, *line_no, &self.buf, self.last_seq) {
                        Err(e) => return Some(Err(e)),
                        Ok(rec)
                            if {
                                self.last_seq = rec.seq;
                                self.filter.matches(&rec)
                            } =>
                        {
                            return Some(Ok((self.buf.clone(), rec)));
                        }
                        Ok(_) => continue,
                    }
                }
            }
        }
    }
}

impl Iterator for Records {
    type Item = Result<Record>;
    fn next(&mut self) -> Option<Result<Record>> {
        self.next_raw().map(|r| r.map(|(_, rec)| rec))
    }
}

/// The last `n` records that pass `filter` (for `tether audit tail`), oldest first.
pub fn tail_records(dir: &Path, filter: &Filter, n: usize) -> Result<Vec<Record>> {
    let mut q = VecDeque::with_capacity(n.min(4096));
    for r in read_records(dir, filter)? {
        let r = r?;
        if q.len() == n {
            q.pop_front();
        }
        if n > 0 {
            q.push_back(r);
        }
    }
    Ok(q.into())
}

/// Streams the last `n` records that pass `filter`, oldest first, to `emit`, with memory
/// bounded by one record whatever `n` is: a first pass counts the matches, a second skips all
/// but the last `n` of them. Records appended between the passes are not included (the
/// answer is the log as of the first pass). Errors (a damaged line, naming file, line and the
/// seq before it) come from the first pass, before anything is emitted, or from the second
/// if the log changed under it. Returns how many records were emitted.
pub fn tail_records_with(
    dir: &Path,
    filter: &Filter,
    n: usize,
    emit: &mut dyn FnMut(&Record) -> std::io::Result<()>,
) -> Result<u64> {
    let total = count_records(dir, filter)?;
    let skip = total.saturating_sub(n as u64);
    let mut seen = 0u64;
    let mut emitted = 0u64;
    let mut recs = read_records(dir, filter)?;
    while emitted < total - skip {
        let Some(r) = recs.next_raw() else { break };
        let (_, rec) = r?;
        seen += 1;
        if seen <= skip {
            continue;
        }
        emit(&rec).map_err(|source| AuditError::Read {
            path: PathBuf::from("<tail output>"),
            source,
        })?;
        emitted += 1;
    }
    Ok(emitted)
}

/// How many records pass `filter` (reading every line once, keeping none).
pub fn count_records(dir: &Path, filter: &Filter) -> Result<u64> {
    let mut recs = read_records(dir, filter)?;
    let mut n = 0;
    while let Some(r) = recs.next_raw() {
        r?;
        n += 1;
    }
    Ok(n)
}

/// What [`export_jsonl`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportStats {
    /// Records written.
    pub records: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Writes the records that pass `filter` to `out` as JSONL, byte-identical to the log lines (so
/// a SIEM can re-check hashes against the chain).
pub fn export_jsonl(dir: &Path, filter: &Filter, out: &mut dyn Write) -> Result<ExportStats> {
    let mut st = ExportStats::default();
    let mut recs = read_records(dir, filter)?;
    while let Some(r) = recs.next_raw() {
        let (line, _) = r?;
        out.write_all(&line).map_err(|source| AuditError::Read {
            path: PathBuf::from("<export output>"),
            source,
        })?;
        st.records += 1;
        st.bytes += line.len() as u64;
    }
    out.flush().map_err(|source| AuditError::Read {
        path: PathBuf::from("<export output>"),
        source,
    })?;
    Ok(st)
}

/// Follows the log as it grows (for `tether audit tail -f`): call [`Follower::poll`] repeatedly
/// or await [`Follower::next_batch`]. Moves on to a new day file when one appears.
#[derive(Debug)]
pub struct Follower {
    dir: PathBuf,
    filter: Filter,
    after_seq: u64,
    cur: Option<(Date, PathBuf, u64)>,
    partial: Vec<u8>,
    line_no: u64,
    last_read: u64,
}

impl Follower {
    /// Follows records with seq greater than `after_seq` (0 = everything), starting with the
    /// two newest day files (use [`tail_records`] first for older history).
    pub fn new(dir: &Path, filter: Filter, after_seq: u64) -> Result<Follower> {
        let files = filter.files(dir)?;
        let start = if after_seq == 0 {
            files.first()
        } else {
            files.iter().rev().nth(1).or(files.last())
        };
        Ok(Follower {
            dir: dir.to_path_buf(),
            filter,
            after_seq,
            cur: start.map(|(d, p)| (*d, p.clone(), 0)),
            partial: Vec::new(),
            line_no: 0,
            last_read: 0,
        })
    }

    /// Follows only records appended from now on.
    pub fn from_end(dir: &Path, filter: Filter) -> Result<Follower> {
        let files = filter.files(dir)?;
        let cur = match files.last() {
            Some((d, p)) => Some((*d, p.clone(), file_len(p)?)),
            None => None,
        };
        Ok(Follower {
            dir: dir.to_path_buf(),
            filter,
            after_seq: 0,
            cur,
            partial: Vec::new(),
            line_no: 0,
            last_read: 0,
        })
    }

    /// Returns the complete new records that pass the filter (possibly none). Never blocks.
    pub fn poll(&mut self) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        loop {
            if self.cur.is_none() {
                match self.filter.files(&self.dir)?.into_iter().next() {
                    Some((d, p)) => self.cur = Some((d, p, 0)),
                    None => return Ok(out),
                }
            }
            let Some((date, path, off)) = self.cur.as_mut() else {
                return Ok(out);
            };
            let f = std::fs::File::open(&*path).map_err(|source| AuditError::Read {
                path: path.clone(),
                source,
            })?;
            read_logical(&f, *off, &mut self.partial).map_err(|source| AuditError::Read {
                path: path.clone(),
                source,
            })?;
            let mut consumed = 0;
            while let Some(i) = self.partial[consumed..].iter().position(|&b| b == b'\n') {
                let line = &self.partial[consumed..consumed + i + 1];
                self.line_no += 1;
                let rec = parse(path, self.line_no, line, self.last_read)?;
                self.last_read = rec.seq;
                consumed += i + 1;
                if rec.seq > self.after_seq && self.filter.matches(&rec) {
                    out.push(rec);
                }
            }
            *off += consumed as u64;
            self.partial.clear();
            // A newer day file means this one is complete.
            let next = self
                .filter
                .files(&self.dir)?
                .into_iter()
                .find(|(d, _)| *d > *date);
            match next {
                Some((d, p)) if *off >= file_len(path)? => {
                    self.cur = Some((d, p, 0));
                    self.line_no = 0;
                }
                _ => return Ok(out),
            }
        }
    }

    /// Waits (polling every `interval`) until at least one new record passes the filter.
    pub async fn next_batch(&mut self, interval: Duration) -> Result<Vec<Record>> {
        loop {
            let v = self.poll()?;
            if !v.is_empty() {
                return Ok(v);
            }
            tokio::time::sleep(interval).await;
        }
    }
}

/// Where the records of a day file end (its preallocated zero tail is not counted).
fn file_len(p: &Path) -> Result<u64> {
    let err = |source| AuditError::Read {
        path: p.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(p).map_err(err)?;
    let size = f.metadata().map_err(err)?.len();
    logical_end(&f, size).map_err(err)
}

/// The first NUL byte of a file of `size` bytes, by bisection: records hold no NUL and the
/// zero tail runs to the end, so "byte is NUL" flips once.
fn logical_end(f: &std::fs::File, size: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt as _;
    let is_nul = |at: u64| -> std::io::Result<bool> {
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at)?;
        Ok(b[0] == 0)
    };
    if size == 0 || !is_nul(size - 1)? {
        return Ok(size);
    }
    // Invariant: byte `hi` is NUL; every byte before `lo` is not.
    let (mut lo, mut hi) = (0u64, size - 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if is_nul(mid)? {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
}
