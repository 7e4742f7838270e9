//! [`SeqReader`]: reads the log forward from a sequence number, a bounded batch at a time, from
//! disk (for audit sinks that resume from an acknowledged cursor after a restart or an outage).

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::{AuditError, Result};
use crate::files::list_day_files;
use crate::record::Record;

/// Reads records with seq greater than a cursor, in order, at most `max` per call. It keeps only
/// its position (a day file and a byte offset) in memory, so a sink that is down for hours costs
/// disk reads when it comes back, not memory while it is away.
#[derive(Debug)]
pub struct SeqReader {
    dir: PathBuf,
    after: u64,
    pos: Option<(PathBuf, u64)>,
}

impl SeqReader {
    /// Reads records with seq greater than `after_seq` (0: from the first record).
    pub fn new(dir: &Path, after_seq: u64) -> SeqReader {
        SeqReader {
            dir: dir.to_path_buf(),
            after: after_seq,
            pos: None,
        }
    }

    /// The seq of the last record handed out (or the starting cursor).
    pub fn position(&self) -> u64 {
        self.after
    }

    /// Up to `max` complete records with seq in `(position, upto]`, oldest first; empty when
    /// there is none yet. `upto` is the last durable seq ([`crate::AuditLog::last_seq`]), so a
    /// record still being written (or rolled back after a failed write) is never handed out.
    pub fn next_batch(&mut self, max: usize, upto: u64) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        if self.after >= upto || max == 0 {
            return Ok(out);
        }
        if self.pos.is_none() {
            self.pos = self.locate()?;
        }
        while out.len() < max && self.after < upto {
            let Some((path, off)) = self.pos.clone() else {
                return Ok(out);
            };
            let at_end = self.read_file(&path, off, max, upto, &mut out)?;
            if !at_end {
                break;
            }
            // This file is exhausted: move on to the next day file, if one exists.
            let next = list_day_files(&self.dir)?
                .into_iter()
                .map(|(_, p)| p)
                .find(|p| *p > path);
            match next {
                Some(p) => self.pos = Some((p, 0)),
                None => break,
            }
        }
        Ok(out)
    }

    /// Reads from `path` at `off`; returns whether the end of its records was reached.
    fn read_file(
        &mut self,
        path: &Path,
        off: u64,
        max: usize,
        upto: u64,
        out: &mut Vec<Record>,
    ) -> Result<bool> {
        let err = |source| AuditError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut f = std::fs::File::open(path).map_err(err)?;
        f.seek(SeekFrom::Start(off)).map_err(err)?;
        let mut r = BufReader::with_capacity(64 << 10, f);
        let mut offset = off;
        let mut line = Vec::new();
        loop {
            if out.len() >= max || self.after >= upto {
                self.pos = Some((path.to_path_buf(), offset));
                return Ok(false);
            }
            line.clear();
            let n = r.read_until(b'\n', &mut line).map_err(err)?;
            // The end, the preallocated zero tail, or a line still being written.
            if n == 0 || line[0] == 0 || line.last() != Some(&b'\n') {
                self.pos = Some((path.to_path_buf(), offset));
                return Ok(true);
            }
            let rec = Record::parse_line(&line).map_err(|e| AuditError::Read {
                path: path.to_path_buf(),
                source: std::io::Error::other(format!("record at byte {offset}: {e}")),
            })?;
            if rec.seq > upto {
                self.pos = Some((path.to_path_buf(), offset));
                return Ok(false);
            }
            offset += n as u64;
            if rec.seq > self.after {
                self.after = rec.seq;
                out.push(rec);
            }
        }
    }

    /// The day file holding the record after the cursor: the newest file whose first record is
    /// at or before it (reads one line per file).
    fn locate(&self) -> Result<Option<(PathBuf, u64)>> {
        let files = list_day_files(&self.dir)?;
        let mut chosen = files.first().map(|(_, p)| p.clone());
        for (_, p) in &files {
            match first_seq(p)? {
                Some(s) if s <= self.after + 1 => chosen = Some(p.clone()),
                Some(_) => break,
                None => {}
            }
        }
        Ok(chosen.map(|p| (p, 0)))
    }
}

/// The seq of a day file's first record (`None`: no complete record yet).
fn first_seq(path: &Path) -> Result<Option<u64>> {
    let err = |source| AuditError::Read {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(err)?;
    let mut line = Vec::new();
    BufReader::new(f)
        .read_until(b'\n', &mut line)
        .map_err(err)?;
    if line.is_empty() || line[0] == 0 || line.last() != Some(&b'\n') {
        return Ok(None);
    }
    Ok(Some(Record::parse_line(&line)?.seq))
}
