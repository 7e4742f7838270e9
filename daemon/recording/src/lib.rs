//! Session recordings: what an interactive session (or, with `ssh.record = "all"`, an exec)
//! showed and received, as an [asciicast v2](https://docs.asciinema.org/manual/asciicast/v2/)
//! file that `asciinema play` understands.
//!
//! Tamper evidence, like the audit log: the file is written in chunks, and after each chunk a
//! marker event `[t, "m", "tether:chain:N:HEX"]` carries `HEX = SHA-256(previous || chunk)`
//! (the first `previous` is `SHA-256("tether-recording-v1\n" || header line)`). The last line
//! is `[t, "m", "tether:end:EVENTS:HEX"]`. A recording cut short has no end marker; an edited
//! one breaks a link. The SHA-256 and size of the whole file go into the `session.close` audit
//! record, so the audit chain vouches for the recording as a whole.
//!
//! An exec session (`ssh.record = "all"`) records its stdin as `i`, its stdout as `o`, its
//! stderr as `e` (Tether's own code: asciicast v2 players skip codes they don't know) and its
//! end as a marker `[t, "m", "tether:exit:CODE"]` (or `tether:exit:signal:NAME`,
//! `tether:exit:error:KIND`); its header's `tether.via` is `exec`.
//!
//! Everything here is sans-IO and streaming: [`Recorder`] turns events into bytes to append
//! (the daemon writes and fsyncs each chunk before the session may run further ahead than one
//! chunk), [`Verifier`] checks a recording line by line, and [`Player`] yields its events with
//! their times, in constant memory whatever the recording's size.
#![forbid(unsafe_code)]

mod error;
mod file;
mod format;
mod recorder;
mod verify;

pub use error::RecordingError;
pub use file::{MAX_LAG_EVENTS, RecordingFile};
pub use format::{Event, EventKind, Header, TetherMeta, parse_event, valid_id};
pub use recorder::{CHUNK_BYTES, CHUNK_SECS, Chunk, Recorder, Summary};
pub use verify::{Player, Verdict, Verifier};
