//! `GET /v1/ssh/config`: the hub's operator SSH host key and the active hosts, which
//! `tether ssh-config` turns into `Host` blocks and a `known_hosts` line.

use hyper::StatusCode;
use tether_api::{Empty, SshConfigInfo};
use tether_enroll::HostRecord;

use super::Ctx;
use super::vpn::hub;
use crate::http::Fail;

/// The `HostKeyAlias` every host's block uses: the hub terminates every session, so one key
/// answers for all of them; the hub's hostname keeps two hubs apart.
fn alias() -> String {
    let name = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
        .unwrap_or_else(|| "localhost".to_owned());
    format!("tether-hub.{name}")
}

/// `GET /v1/ssh/config`.
pub(crate) async fn handle(ctx: Ctx, _: Empty) -> Result<SshConfigInfo, Fail> {
    let hub = hub(&ctx)?;
    let Some(operator) = ctx.state.operator.clone() else {
        return Err(Fail::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "proxy_unavailable",
            "this hub runs without its operator SSH endpoint",
            "start tetherd normally (tetherd run --role hub)",
        ));
    };
    let hosts = hub
        .inventory()
        .list()
        .into_iter()
        .filter(HostRecord::is_active)
        .map(|h| h.name)
        .collect();
    Ok(SshConfigInfo {
        host_key: operator.host_key(),
        fingerprint: operator.fingerprint(),
        host_key_alias: alias(),
        hosts,
    })
}
