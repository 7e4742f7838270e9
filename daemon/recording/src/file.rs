//! The thin tokio driver: one recording file per session, chunks written and fsynced in order.
//!
//! [`RecordingFile::record`] waits while more than [`MAX_LAG_EVENTS`] events are queued behind
//! a slow disk, so a session can never run further ahead of its durable recording than that
//! plus one open chunk ([`crate::CHUNK_BYTES`] or [`crate::CHUNK_SECS`]).

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::{EventKind, Header, Recorder, Summary, valid_id};

/// Events queued between a session and its writer before the session waits.
pub const MAX_LAG_EVENTS: usize = 64;

/// A recording being written: `state_dir/recordings/ID.cast`, mode 0600.
#[derive(Debug)]
pub struct RecordingFile {
    path: PathBuf,
    started: Instant,
    tx: mpsc::Sender<(f64, EventKind, Vec<u8>)>,
    done: oneshot::Receiver<std::io::Result<Summary>>,
}

impl RecordingFile {
    /// Creates `dir/ID.cast` (never replacing a file; the directory is created 0700) with the
    /// header durably written, and starts its writer. `limit` bounds the file's size.
    pub async fn create(dir: &Path, header: Header, limit: u64) -> std::io::Result<RecordingFile> {
        let id = header
            .tether
            .as_ref()
            .map(|t| t.id.clone())
            .unwrap_or_default();
        valid_id(&id).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let path = dir.join(format!("{id}.cast"));
        let (recorder, first) = Recorder::new(&header, limit);
        let file = {
            let dir = dir.to_owned();
            let path = path.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                f.write_all(&first.bytes)?;
                f.sync_all()?;
                std::fs::File::open(&dir)?.sync_all()?;
                Ok(f)
            })
            .await
            .map_err(std::io::Error::other)??
        };
        let (tx, rx) = mpsc::channel(MAX_LAG_EVENTS);
        let (done_tx, done) = oneshot::channel();
        let started = Instant::now();
        tokio::spawn(async move {
            let r = write_loop(file, recorder, started, rx).await;
            let _ = done_tx.send(r);
        });
        Ok(RecordingFile {
            path,
            started,
            tx,
            done,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records an event now. Waits while the writer is behind; false when the writer has
    /// stopped (a write failed: the caller decides whether the session may go on unrecorded).
    pub async fn record(&self, kind: EventKind, data: &[u8]) -> bool {
        let t = self.started.elapsed().as_secs_f64();
        self.tx.send((t, kind, data.to_vec())).await.is_ok()
    }

    /// Ends the recording: the last chunk and the end marker written and fsynced; the summary
    /// for the `session.close` audit record.
    pub async fn finish(self) -> std::io::Result<Summary> {
        drop(self.tx);
        self.done
            .await
            .map_err(|_| std::io::Error::other("the recording writer stopped unexpectedly"))?
    }
}

async fn write_loop(
    file: std::fs::File,
    mut recorder: Recorder,
    started: Instant,
    mut rx: mpsc::Receiver<(f64, EventKind, Vec<u8>)>,
) -> std::io::Result<Summary> {
    let file = std::sync::Arc::new(file);
    let now = || started.elapsed().as_secs_f64();
    loop {
        let deadline = recorder.deadline();
        let msg = match deadline {
            Some(d) => {
                let wait = std::time::Duration::from_secs_f64((d - now()).max(0.0));
                match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(m) => m.map(Some),
                    Err(_) => Some(None),
                }
            }
            None => rx.recv().await.map(Some),
        };
        match msg {
            None => break,
            Some(Some((t, kind, data))) => {
                recorder.record(t, kind, &data);
            }
            Some(None) => {}
        }
        if recorder.due(now())
            && let Some(chunk) = recorder.take(now())
        {
            append(&file, chunk.bytes).await?;
        }
    }
    let (last, summary) = recorder.finish(now());
    append(&file, last.bytes).await?;
    Ok(summary)
}

/// Appends and fsyncs on a blocking thread; returns once the bytes are durable.
async fn append(file: &std::sync::Arc<std::fs::File>, bytes: Vec<u8>) -> std::io::Result<()> {
    let f = file.clone();
    tokio::task::spawn_blocking(move || {
        let mut w: &std::fs::File = &f;
        w.write_all(&bytes)?;
        f.sync_data()
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{TetherMeta, Verdict, Verifier};

    #[tokio::test]
    async fn a_session_recorded_to_disk_verifies_and_never_replaces_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let meta = TetherMeta {
            id: "s-1".into(),
            host: "web1".into(),
            user: "alice".into(),
            via: "cli".into(),
            command: None,
        };
        let rec = RecordingFile::create(dir.path(), Header::new(80, 24, 1, meta.clone()), 1 << 20)
            .await
            .unwrap();
        for i in 0..200 {
            assert!(
                rec.record(EventKind::Output, format!("{i}\r\n").as_bytes())
                    .await
            );
        }
        rec.record(EventKind::Resize, b"100x30").await;
        let path = rec.path().to_owned();
        let s = rec.finish().await.unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, s.size);
        let mut v = Verifier::new();
        for l in bytes.split_inclusive(|b| *b == b'\n') {
            v.push_line(l);
        }
        match v.finish() {
            Verdict::Complete { sha256, events, .. } => {
                assert_eq!(sha256, s.sha256);
                assert_eq!(events, 201);
            }
            other => panic!("{other:?}"),
        }
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // The same id again: refused, the first file untouched.
        let again = RecordingFile::create(dir.path(), Header::new(80, 24, 1, meta), 1 << 20).await;
        assert!(again.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }
}
