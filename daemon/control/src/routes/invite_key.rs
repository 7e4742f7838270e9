//! `POST /v1/vpn/rotate-invite-key` (admin, hub): a new invite key epoch. The new key is stored
//! in the vault as `tetherd.invite-key.eN` (older epochs are never removed), new invites are MACed
//! with it, and invites signed by a retired key keep enrolling until they expire. The
//! `invite_key.rotated` record (epoch and key id, never the key) is written before anything
//! changes; a `key_rotation` alert follows.

use std::sync::LazyLock;

use hyper::StatusCode;
use serde_json::json;
use tether_api::{Empty, RotateInviteKeyResponse};
use tether_enroll::invite_keys::{INVITE_KEY_LEN, epoch_name, key_id};
use tether_model::{Alert, Severity};
use tether_vault::SecretBox;

use super::Ctx;
use super::vpn::{enroll_error, hub};
use crate::http::Fail;

/// One rotation at a time: two racing ones must not both pick the same epoch.
static ROTATING: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(|| tokio::sync::Mutex::new(()));

fn vault_failed(what: String) -> Fail {
    Fail::new(
        StatusCode::CONFLICT,
        "rotation_unsupported",
        what,
        "the invite key can rotate only in a writable vault (keyring or file backend); with systemd credentials, provision the next epoch's key as a credential",
    )
}

/// Makes invite key epoch N+1, stores it, and starts signing new invites with it.
pub(crate) async fn rotate(ctx: Ctx, _req: Empty) -> Result<RotateInviteKeyResponse, Fail> {
    let hub = hub(&ctx)?;
    let Some(vault) = ctx.state.vault.clone() else {
        return Err(Fail::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "vault_unavailable",
            "this tetherd runs without a vault",
            "start tetherd normally (tetherd run)",
        ));
    };
    let _one = ROTATING.lock().await;
    let (previous, _) = hub.invite_key_epochs();
    let epoch = previous.checked_add(1).ok_or_else(|| {
        Fail::new(
            StatusCode::CONFLICT,
            "epochs_exhausted",
            "the invite key has no epoch left",
            "",
        )
    })?;
    let name = epoch_name(epoch);
    let key = SecretBox::random(INVITE_KEY_LEN).map_err(|e| {
        Fail::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot make a new invite key: {e}"),
            "",
        )
    })?;
    let id = key_id(&key);
    ctx.state
        .audit_or_refuse(
            "invite_key.rotated",
            ctx.actor(),
            None,
            json!({"epoch": epoch, "key_id": id, "previous_epoch": previous, "vault_entry": name}),
        )
        .await?;
    let stored = key.try_clone().map_err(|e| {
        Fail::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot copy the new invite key: {e}"),
            "",
        )
    })?;
    let (v, n) = (vault.clone(), name.clone());
    super::blocking("store the invite key", move || {
        // A leftover entry of this epoch (restored from another machine's backup, say) would be
        // replaced by `set`: refuse instead, so no key an invite may name is ever overwritten.
        match v.get(&n) {
            Ok(Some(_)) => Err(format!(
                "the vault already holds {n}, which this hub did not load; restart tetherd to load it, or remove it if it is not yours"
            )),
            Ok(None) => v.set(&n, stored).map(|_| ()).map_err(|e| {
                format!("cannot store the new invite key {n}: {e}; the invite key did not change")
            }),
            Err(e) => Err(format!("cannot read the vault entry {n}: {e}")),
        }
    })
    .await?
    .map_err(vault_failed)?;
    let rotated = hub
        .add_invite_key(epoch, key)
        .map_err(|e| enroll_error(&e))?;
    let (_, epochs) = hub.invite_key_epochs();
    ctx.state.alerts.raise(Alert::new(
        "key_rotation",
        Severity::Info,
        format!(
            "the hub's invite key rotated to epoch {} (key id {}); invites of epoch {} stay valid until they expire",
            rotated.epoch, rotated.key_id, rotated.previous_epoch
        ),
    ));
    Ok(RotateInviteKeyResponse {
        epoch: rotated.epoch,
        key_id: rotated.key_id,
        previous_epoch: rotated.previous_epoch,
        epochs,
        vault_entry: name,
    })
}
