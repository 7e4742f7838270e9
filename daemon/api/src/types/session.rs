//! Interactive access to one host through the hub: `/v1/proxy/{host}` (the stock OpenSSH client
//! via `tether proxy`), `/v1/session/{host}` (`tether ssh`, framed by [`crate::frame`]) and
//! `/v1/ssh/config` (what `tether ssh-config` prints).
//!
//! Both upgrade routes answer `101 Switching Protocols` and then carry another protocol on the
//! control socket, so the caller is the one the socket's peer credentials name and the role
//! check is the control API's: operators need no SSH keys of their own.

use serde::{Deserialize, Serialize};

/// The `Upgrade` token of `POST /v1/proxy/{host}`: SSH (RFC 4253) follows the `101`.
pub const PROXY_PROTOCOL: &str = "ssh";

/// The `Upgrade` token of `POST /v1/session/{host}`: [`crate::frame`] frames follow the `101`.
pub const SESSION_PROTOCOL: &str = "tether-session/1";

/// Path of `POST /v1/proxy/{host}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyRequest {
    /// The enrolled, active host the SSH session is for.
    pub host: String,
}

/// A terminal the client asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PtySpec {
    /// `TERM` for the remote side (e.g. `xterm-256color`); at most 64 bytes.
    pub term: String,
    /// Columns (1–1000).
    pub cols: u16,
    /// Rows (1–1000).
    pub rows: u16,
}

/// `POST /v1/session/{host}`: an interactive session (a shell, or one command) on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// The enrolled, active host.
    pub host: String,
    /// Run this command instead of the login shell (at most 8192 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// A pseudo-terminal of this size (the CLI asks for one when its stdin is a terminal);
    /// without it stdout and stderr stay apart and nothing is echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtySpec>,
}

/// `GET /v1/ssh/config`: what `tether ssh-config` needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SshConfigInfo {
    /// The hub's operator-facing SSH host key (OpenSSH public key line).
    pub host_key: String,
    /// Its SHA-256 fingerprint, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// The name the key is filed under in `known_hosts` (`HostKeyAlias`), the same for every
    /// host because the hub terminates every session.
    pub host_key_alias: String,
    /// The enrolled, active hosts.
    pub hosts: Vec<String>,
}

endpoint! {
    /// join an SSH client to the hub's operator endpoint for one host; 101 Switching Protocols to SSH
    Proxy: Post "/v1/proxy/{host}", ProxyRequest => crate::Empty, response = Upgrade("ssh");
}

endpoint! {
    /// open an interactive session (pty shell or command) on one host; 101 Switching Protocols to tether-session/1 frames
    Session: Post "/v1/session/{host}", SessionRequest => crate::Empty, response = Upgrade("tether-session/1");
}

endpoint! {
    /// the hub's operator SSH host key and the hosts, for `tether ssh-config`
    SshConfig: Get "/v1/ssh/config", crate::Empty => SshConfigInfo;
}

#[cfg(test)]
mod tests {
    use crate::{Encoding, Endpoint};

    #[test]
    fn upgrade_tokens_match_the_endpoints() {
        assert_eq!(
            super::Proxy::RESPONSE,
            Encoding::Upgrade(super::PROXY_PROTOCOL)
        );
        assert_eq!(
            super::Session::RESPONSE,
            Encoding::Upgrade(super::SESSION_PROTOCOL)
        );
    }
}
