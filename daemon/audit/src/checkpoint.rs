//! Signed head checkpoints.

use std::path::Path;

use ed25519_dalek::{Signature, Signer as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::chain::unhex32;
use crate::error::{AuditError, Result};
use crate::files::HEAD_FILE;
use crate::keys::ChainKeys;

const DOMAIN: &[u8] = b"tether-audit-checkpoint-v1\n";

/// A signed statement "the log contained record `seq` with hash `hash` at `ts`".
///
/// Its text form (one JSON line, see [`Checkpoint::to_text`]) is what the `head` file holds and
/// what `tether audit checkpoint --export` prints for off-box storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Seq of the last record covered (0 for an empty log).
    pub seq: u64,
    /// Hex hash of that record (64 zeros for an empty log).
    pub hash: String,
    /// When the checkpoint was made (RFC 3339 UTC).
    pub ts: String,
    /// Hex Ed25519 signature over the domain tag and `{"hash":..,"seq":..,"ts":..}`.
    pub sig: String,
}

impl Checkpoint {
    fn message(seq: u64, hash: &str, ts: &str) -> Vec<u8> {
        let mut m = DOMAIN.to_vec();
        m.extend_from_slice(format!(r#"{{"hash":"{hash}","seq":{seq},"ts":"{ts}"}}"#).as_bytes());
        m
    }

    pub(crate) fn sign(keys: &ChainKeys, seq: u64, hash: &[u8; 32], ts: String) -> Checkpoint {
        let hash = hex::encode(hash);
        let sig: Signature = keys.signing.sign(&Self::message(seq, &hash, &ts));
        Checkpoint {
            seq,
            hash,
            ts,
            sig: hex::encode(sig.to_bytes()),
        }
    }

    /// Checks the signature with `key` (and the field formats). A fault is
    /// [`AuditError::CheckpointSignature`], whose `reason` says which check failed.
    pub fn verify_signature(&self, key: &[u8; 32]) -> Result<()> {
        let fault = |reason| AuditError::CheckpointSignature { reason };
        let vk = VerifyingKey::from_bytes(key).map_err(|_| fault("invalid public key"))?;
        if unhex32(self.hash.as_bytes()).is_none() {
            return Err(fault("hash is not 64 lowercase hex digits"));
        }
        let mut sig = [0u8; 64];
        hex::decode_to_slice(&self.sig, &mut sig)
            .map_err(|_| fault("sig is not 128 hex digits"))?;
        vk.verify_strict(
            &Self::message(self.seq, &self.hash, &self.ts),
            &Signature::from_bytes(&sig),
        )
        .map_err(|_| fault("signature does not verify with this installation's audit key"))
    }

    /// Like [`Checkpoint::verify_signature`], accepting a signature by any of `keys` (one per
    /// key epoch: a head is signed with the epoch current when it was written). The error is
    /// the one for the newest key.
    pub(crate) fn verify_any(&self, keys: &[[u8; 32]]) -> Result<()> {
        let mut last = Err(AuditError::CheckpointSignature {
            reason: "no key to check the signature with",
        });
        for k in keys.iter().rev() {
            last = self.verify_signature(k);
            if last.is_ok() {
                return last;
            }
        }
        last
    }

    /// The raw hash.
    pub fn hash_bytes(&self) -> Option<[u8; 32]> {
        unhex32(self.hash.as_bytes())
    }

    /// One JSON line with a trailing newline: `{"hash":..,"seq":..,"sig":..,"ts":..}`.
    pub fn to_text(&self) -> String {
        format!(
            "{{\"hash\":\"{}\",\"seq\":{},\"sig\":\"{}\",\"ts\":{}}}\n",
            self.hash,
            self.seq,
            self.sig,
            serde_json::Value::String(self.ts.clone())
        )
    }

    /// Parses [`Checkpoint::to_text`] output (surrounding whitespace allowed). `origin` names
    /// the source in errors. Does not check the signature.
    pub fn parse(text: &str, origin: &str) -> Result<Checkpoint> {
        serde_json::from_str(text.trim()).map_err(|e| AuditError::BadCheckpoint {
            origin: origin.into(),
            reason: format!("not a checkpoint: {e}"),
        })
    }
}

/// Reads `dir/head`; `Ok(None)` when there is none. Does not check the signature.
pub fn read_head(dir: &Path) -> Result<Option<Checkpoint>> {
    let path = dir.join(HEAD_FILE);
    match std::fs::read(&path) {
        Ok(b) => {
            let origin = path.display().to_string();
            let t = String::from_utf8(b).map_err(|_| AuditError::BadCheckpoint {
                origin: origin.clone(),
                reason: "not UTF-8 text".into(),
            })?;
            Checkpoint::parse(&t, &origin).map(Some)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AuditError::Read { path, source }),
    }
}

/// Atomically replaces `dir/head`: write `head.tmp`, fsync, rename, fsync the directory.
pub(crate) fn write_head(dir: &Path, cp: &Checkpoint) -> std::io::Result<()> {
    tether_durable::write_atomic(&dir.join(HEAD_FILE), cp.to_text().as_bytes(), 0o600)
        .map_err(|e| std::io::Error::new(e.source.kind(), e.to_string()))
}

/// Fuzz harness for exported checkpoints (`audit verify --against FILE` reads them).
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
        fn fuzz_checkpoint(text in "(.|\n){0,600}") {
            let _ = Checkpoint::parse(&text, "fuzz");
        }
    }
}
