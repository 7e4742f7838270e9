//! `tetherd` configuration.
//!
//! Sources, lowest priority first: built-in defaults < the TOML file (`tetherd run --config FILE`,
//! default `/etc/tether/tetherd.toml` when it exists) < `TETHER_*` environment variables
//! (`TETHER_CONTROL__SOCKET` sets `control.socket`) < command-line flags. Unknown keys are errors.
//! [`check_file`] reports *every* problem in a file with its key path and line, not just the first.
#![forbid(unsafe_code)]

mod alerts;
mod approvals;
mod error;
mod file;
mod files;
mod load;
mod locate;
mod metrics;
mod paths;
mod principal;
mod redact;
mod relay;
mod schema;
mod ssh;
mod vault;

pub use alerts::{AlertRoute, AlertsSection};
pub use approvals::{ApprovalsSection, QuorumCondition};
pub use error::{ConfigError, Problem};
pub use file::{MAX_CONFIG_FILE_BYTES, read_config_file};
pub use files::FilesSection;
pub use load::{Overrides, PATH_KEYS, check_file, check_str, load, load_for_reload};
pub use metrics::MetricsConfig;
pub use paths::{
    default_socket_path, default_state_dir, default_vault_key_file, system_socket_path,
    user_socket_path,
};
pub use principal::{ParsePrincipalError, Principal};
pub use redact::redacted_json;
pub use relay::{RELAY_MAX_DATAGRAM, RelaySection};
pub use schema::{
    Config, ControlConfig, EnrollSection, LogConfig, PolicyFileError, PolicySource, RolesConfig,
    TunnelSection, parse_duration_secs, parse_subnet,
};
pub use ssh::{DEFAULT_ENV_ALLOW, RecordMode, SshMode, SshSection, SshTimes};
pub use vault::{BackendChoice, VaultConfig};

/// Where `tetherd` looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tether/tetherd.toml";
