//! `tetherd relay metrics-token`: prints the relay's `/metrics` bearer token (the vault secret
//! named by `relay.metrics_token_secret`, generated on first use) and nothing else, for a
//! Prometheus `bearer_token_file` or `curl -H "Authorization: Bearer $(...)"`.

use std::io::Write as _;

use super::identity;
use crate::cli::RelayTokenArgs;
use crate::error::DaemonError;

pub fn main(args: RelayTokenArgs) -> Result<(), DaemonError> {
    let opened = super::open(args.config, args.state_dir)?;
    let Some(name) = opened.config.relay.metrics_token_secret.clone() else {
        return Err(DaemonError::Usage(
            "relay.metrics_token_secret is not set, so /metrics is refused; set it in [relay] (e.g. metrics_token_secret = \"relay-metrics-token\") and restart the relay".to_owned(),
        ));
    };
    let token = identity::metrics_token(&opened.vault, &name, opened.mode)?;
    token.expose(|b| {
        let mut out = std::io::stdout().lock();
        out.write_all(b)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
            .map_err(|e| DaemonError::Relay(format!("cannot write the token: {e}")))
    })
}
