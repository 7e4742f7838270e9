//! Tamper-evident audit chain: append-only JSONL, SHA-256 chain + HMAC, group commit, signed checkpoints, verifier.
#![forbid(unsafe_code)]
