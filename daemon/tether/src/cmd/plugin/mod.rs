//! `tether plugin ...`. `list` and `reload` ask the daemon; `keygen`, `sign`, `verify` and `new`
//! run locally (no daemon needed). Signing comes from `tether-plugin-sign`, so the CLI never
//! links wasmtime (a test checks `cargo tree`).

pub mod keygen;
pub mod list;
pub mod new;
pub mod reload;
pub mod sign;
pub mod verify;

use clap::Subcommand;
use tether_plugin_sign::SignError;

use crate::error::CliError;
use crate::global::Global;

/// `tether plugin ...`
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Loaded plugins: kind, hash, signer, calls, errors, latency, quarantine.
    List,
    /// Re-read the plugin manifest; a bad plugin keeps the old set.
    Reload,
    /// Create an Ed25519 plugin signing key pair (private 0600 + .pub); prints the trusted_keys line.
    Keygen(keygen::KeygenArgs),
    /// Sign a plugin component (.wasm) with a key from `keygen`: writes FILE.sig.
    Sign(sign::SignArgs),
    /// Check a component's signature (and that its signer is trusted). Exit 0 when valid, 1 when
    /// not (the reason is printed: no signature, modified after signing, bad signature, untrusted).
    Verify(verify::VerifyArgs),
    /// Create a new plugin crate from a template (policy, alert-sink, audit-sink, enrollment-hook).
    New(new::NewArgs),
}

pub async fn run(global: &Global, cmd: PluginCommand) -> Result<u8, CliError> {
    match cmd {
        PluginCommand::List => list::run(global).await,
        PluginCommand::Reload => reload::run(global).await,
        PluginCommand::Keygen(args) => keygen::run(global, args),
        PluginCommand::Sign(args) => sign::run(global, args),
        PluginCommand::Verify(args) => verify::run(global, args),
        PluginCommand::New(args) => new::run(global, args),
    }
}

/// A signing error of a local command: the caller's paths and keys are inputs, so these are usage
/// errors (exit 2). Verification failures are reported by `verify` itself (exit 1).
fn usage(e: SignError) -> CliError {
    CliError::Usage(e.to_string())
}
