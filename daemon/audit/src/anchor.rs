//! The head counter kept outside `state_dir`: the highest seq (and its hash) the log ever
//! reached, so a rollback of log *and* signed head together (an older copy of both restored over
//! the directory) is still caught. Where it lives is the caller's business ([`HeadAnchor`], a
//! small trait like [`crate::KeySource`]); `tetherd` keeps it in the vault's keyring or beside the
//! file backend's key.

use serde::{Deserialize, Serialize};

use crate::chain::unhex32;
use crate::error::{AuditError, Result};

/// The highest record the log is known to have reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    /// Seq of that record.
    pub seq: u64,
    /// Its hash.
    pub hash: [u8; 32],
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnchorText {
    seq: u64,
    hash: String,
}

impl Anchor {
    /// The stored form: `{"seq":N,"hash":"HEX"}`.
    pub fn to_bytes(&self) -> Vec<u8> {
        format!(
            "{{\"seq\":{},\"hash\":\"{}\"}}",
            self.seq,
            hex::encode(self.hash)
        )
        .into_bytes()
    }

    /// Parses [`Anchor::to_bytes`]; `origin` names the store in the error.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Anchor> {
        let bad = |reason: String| AuditError::BadAnchor {
            origin: origin.to_owned(),
            reason,
        };
        let t: AnchorText =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a head counter: {e}")))?;
        let hash = unhex32(t.hash.as_bytes())
            .ok_or_else(|| bad("hash is not 64 lowercase hex digits".into()))?;
        Ok(Anchor { seq: t.seq, hash })
    }
}

/// A store for the head counter outside `state_dir`.
///
/// [`HeadAnchor::store`] is called with ever higher seqs (after the signed head was written);
/// an implementation must keep the highest one and never go back.
pub trait HeadAnchor: Send + Sync {
    /// Where the counter lives, for messages (e.g. `keyring entry tetherd.audit-anchor`).
    fn location(&self) -> String;
    /// The stored counter; `Ok(None)` when none was stored yet. An `Err` means the store cannot
    /// be read at all (verify then says `unanchored` and why).
    fn load(&self) -> Result<Option<Anchor>>;
    /// Raises the counter to `anchor` (a lower seq than the stored one must be ignored).
    fn store(&self, anchor: &Anchor) -> Result<()>;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_junk() {
        let a = Anchor {
            seq: 42,
            hash: [0xab; 32],
        };
        assert_eq!(Anchor::parse(&a.to_bytes(), "t").unwrap(), a);
        assert!(Anchor::parse(b"{\"seq\":1}", "t").is_err());
        assert!(Anchor::parse(b"{\"seq\":1,\"hash\":\"00\"}", "t").is_err());
    }
}

/// Fuzz harness: the counter is read from a store an attacker outside the daemon may have
/// written.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn cases() -> u32 {
        std::env::var("TETHER_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        #[test]
        fn fuzz_anchor(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Anchor::parse(&bytes, "fuzz");
        }
    }
}
