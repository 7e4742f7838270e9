//! `tether plugin sign FILE --key K`: writes FILE.sig (Ed25519 over the component's SHA-256).

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use crate::error::CliError;
use crate::global::Global;
use crate::output;

/// Arguments of `tether plugin sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The plugin component (`target/wasm32-wasip2/release/NAME.wasm`).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The private key from `tether plugin keygen`.
    #[arg(long, value_name = "KEY", env = "TETHER_PLUGIN_KEY")]
    key: PathBuf,
    /// Where to write the signature. Default: FILE.sig (where the daemon looks for it).
    #[arg(long, value_name = "SIG")]
    out: Option<PathBuf>,
}

#[derive(Serialize)]
struct Out<'a> {
    file: &'a Path,
    signature_file: &'a Path,
    sha256: String,
    key_id: &'a str,
}

/// The first 8 bytes of a WASM component: magic, version 0x0d, layer 1.
const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

/// Refuses files that are not WASM components: signing the wrong file is the likely mistake.
pub(super) fn check_component(file: &Path) -> Result<(), CliError> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let n = std::fs::File::open(file)
        .and_then(|f| f.take(8).read(&mut head))
        .map_err(|e| {
            CliError::Usage(format!(
                "plugin component {}: {e}\nhint: build it with `cargo build --target wasm32-wasip2 --release`; it is target/wasm32-wasip2/release/NAME.wasm",
                file.display()
            ))
        })?;
    if n == 8 && head == COMPONENT_HEADER {
        return Ok(());
    }
    let what = if n >= 4 && head[..4] == COMPONENT_HEADER[..4] {
        "a core WASM module, not a component"
    } else {
        "not a WASM component"
    };
    Err(CliError::Usage(format!(
        "{} is {what}\nhint: plugins are components: build with `cargo build --target wasm32-wasip2 --release` and sign target/wasm32-wasip2/release/NAME.wasm",
        file.display()
    )))
}

pub fn run(global: &Global, args: SignArgs) -> Result<u8, CliError> {
    check_component(&args.file)?;
    warn_if_key_readable_by_others(&args.key);
    let out = args
        .out
        .unwrap_or_else(|| tether_plugin_sign::sig_path(&args.file));
    let signed = tether_plugin_sign::sign_to(&args.file, &args.key, &out).map_err(super::usage)?;
    let sha256 = hex::encode(signed.sha256);
    if global.json {
        output::json(&Out {
            file: &args.file,
            signature_file: &signed.signature_file,
            sha256,
            key_id: &signed.key_id,
        });
        return Ok(0);
    }
    println!("signed {}", args.file.display());
    println!("  sha256:    {sha256}");
    println!("  key id:    {}", signed.key_id);
    println!("  signature: {}", signed.signature_file.display());
    if signed.signature_file != tether_plugin_sign::sig_path(&args.file) {
        println!(
            "  the daemon looks for {}: copy the signature there next to the component",
            tether_plugin_sign::sig_path(&args.file).display()
        );
    }
    Ok(0)
}

/// Like ssh, points out a private key others can read (does not refuse: the key is still usable).
fn warn_if_key_readable_by_others(key: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(key) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            eprintln!(
                "tether: warning: private key {} is accessible by others (mode {mode:04o}): chmod 600 {}",
                key.display(),
                key.display()
            );
        }
    }
}
