//! `tether vpn rotate-invite-key`: a new invite key epoch on the hub.

use tether_api::{Empty, VpnRotateInviteKey};

use crate::error::CliError;
use crate::global::Global;
use crate::output;

/// Asks the hub to rotate its invite key and prints the new epoch and key id (never the key).
pub async fn run(global: &Global) -> Result<u8, CliError> {
    let out = global
        .client()
        .call::<VpnRotateInviteKey>(&Empty {})
        .await?;
    if global.json {
        output::json(&out);
    } else {
        println!(
            "invite key rotated: epoch {} (key id {}), stored as {}",
            out.epoch, out.key_id, out.vault_entry
        );
        println!(
            "new invites use epoch {}; invites of epoch {} and older stay valid until they expire",
            out.epoch, out.previous_epoch
        );
    }
    Ok(0)
}
