//! `tether plugin keygen`: an Ed25519 key pair for signing plugins. The private key is written
//! 0600 and never printed; the public key and its `trusted_keys` line are.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;
use tether_plugin_sign::{KeyInfo, Overwrite};

use crate::error::CliError;
use crate::global::Global;
use crate::output;

/// Creates a missing parent directory of the key (0700: only its owner may list it).
fn create_parent(key: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::DirBuilderExt;
    match key.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.exists() => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                CliError::Usage(format!(
                    "cannot create the key's directory {}: {e}",
                    dir.display()
                ))
            }),
        _ => Ok(()),
    }
}

/// Arguments of `tether plugin keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The private key file to create (0600; a missing directory is created 0700); the public
    /// key goes to PATH.pub.
    #[arg(long, value_name = "PATH", default_value = "tether-plugin.key")]
    out: PathBuf,
    /// Replace existing key files (the old key is lost: re-sign its plugins, update trusted_keys).
    #[arg(long)]
    force: bool,
}

#[derive(Serialize)]
struct Out<'a> {
    key_id: &'a str,
    public_key: &'a str,
    private_key_file: &'a Path,
    public_key_file: &'a Path,
    trusted_keys_line: String,
    replaced: bool,
}

pub fn run(global: &Global, args: KeygenArgs) -> Result<u8, CliError> {
    let overwrite = if args.force {
        Overwrite::Replace
    } else {
        Overwrite::Refuse
    };
    create_parent(&args.out)?;
    let replaced = args.force && args.out.exists();
    let info: KeyInfo =
        tether_plugin_sign::keygen_with(&args.out, overwrite).map_err(super::usage)?;
    let line = format!("trusted_keys = [\"{}\"]", info.public_key);
    if global.json {
        output::json(&Out {
            key_id: &info.key_id,
            public_key: &info.public_key,
            private_key_file: &info.private_key,
            public_key_file: &info.public_key_file,
            trusted_keys_line: line,
            replaced,
        });
        return Ok(0);
    }
    if replaced {
        println!(
            "replaced the key at {}: plugins signed with the old key must be re-signed",
            info.private_key.display()
        );
    }
    println!(
        "private key: {} (mode 0600; keep it off the hubs, back it up offline)",
        info.private_key.display()
    );
    println!("public key:  {}", info.public_key_file.display());
    println!("key id:      {}", info.key_id);
    println!("public key:  {}", info.public_key);
    println!();
    println!("Add to the daemon's plugins.toml (keep keys already listed there):");
    println!("{line}");
    println!();
    println!(
        "Sign a plugin: tether plugin sign PLUGIN.wasm --key {}",
        info.private_key.display()
    );
    Ok(0)
}
