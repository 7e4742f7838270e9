//! The options every command accepts, and what follows from them (socket, client). Commands
//! depend on this module, never on the command tree in `cli`.

use std::path::PathBuf;

use clap::Args;

/// Options every subcommand accepts.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Control socket of the tetherd to talk to. Default: $TETHER_SOCKET, else
    /// /run/tether/tetherd.sock if it exists, else the per-user socket of `tether demo`.
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Global {
    /// The socket to use, following the documented precedence.
    pub fn socket_path(&self) -> PathBuf {
        if let Some(s) = &self.socket {
            return s.clone();
        }
        if let Some(s) = std::env::var_os("TETHER_SOCKET").filter(|s| !s.is_empty()) {
            return PathBuf::from(s);
        }
        let system = tether_config::system_socket_path();
        if system.exists() {
            return system;
        }
        tether_config::user_socket_path()
    }

    /// A control API client for [`Global::socket_path`].
    pub fn client(&self) -> tether_api::Client {
        tether_api::Client::new(self.socket_path())
    }
}
