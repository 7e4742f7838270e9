//! WireGuard public keys as the protocol carries them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::error::{AgentError, Result};

/// Checks that `text` is a WireGuard public key: standard base64 of 32 bytes.
pub fn check_public_key(text: &str) -> Result<[u8; 32]> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|_| AgentError::InvalidKey { what: "not base64" })?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| AgentError::InvalidKey {
        what: "not 32 bytes",
    })
}
