//! `tether plugin verify FILE`: is the component intact, validly signed and (when trusted keys
//! are given, directly or from a plugins.toml) signed by a trusted key? Exit 0 yes, 1 no.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::{Deserialize, Serialize};
use tether_plugin_sign::{SignError, Trust};

use crate::error::CliError;
use crate::global::Global;
use crate::output;

/// Arguments of `tether plugin verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The plugin component (.wasm).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The signature file. Default: FILE.sig (where the daemon looks for it).
    #[arg(long, value_name = "SIG")]
    sig: Option<PathBuf>,
    /// A trusted public key: base64 (as in trusted_keys) or a .pub file from keygen. Repeatable.
    #[arg(long = "trusted-key", value_name = "KEY")]
    trusted_keys: Vec<String>,
    /// Trust the keys in this plugins.toml's trusted_keys (what the daemon would accept).
    #[arg(long, value_name = "PLUGINS_TOML")]
    manifest: Option<PathBuf>,
}

/// The part of plugins.toml this command needs.
#[derive(Deserialize)]
struct ManifestKeys {
    #[serde(default)]
    trusted_keys: Vec<String>,
}

#[derive(Serialize)]
struct Out<'a> {
    ok: bool,
    file: &'a Path,
    signature_file: &'a Path,
    /// SHA-256 of the component as read.
    sha256: String,
    /// The signer's key id (when the signature could be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    /// Whether the signer was checked against trusted keys (false: only integrity was checked).
    trust_checked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorOut>,
}

#[derive(Serialize)]
struct ErrorOut {
    code: &'static str,
    message: String,
}

pub fn run(global: &Global, args: VerifyArgs) -> Result<u8, CliError> {
    let bytes = std::fs::read(&args.file)
        .map_err(|e| CliError::Usage(format!("plugin component {}: {e}", args.file.display())))?;
    let trusted = trusted_keys(&args)?;
    let sig = args
        .sig
        .clone()
        .unwrap_or_else(|| tether_plugin_sign::sig_path(&args.file));
    let trust = match &trusted {
        Some(keys) => Trust::Keys(keys),
        None => Trust::AnySigner,
    };
    let result = tether_plugin_sign::verify_signature(&args.file, &bytes, &sig, trust);
    let mut out = Out {
        ok: false,
        file: &args.file,
        signature_file: &sig,
        sha256: hex::encode(tether_plugin_sign::sha256(&bytes)),
        key_id: None,
        trust_checked: trusted.is_some(),
        error: None,
    };
    match result {
        Ok(v) => {
            out.ok = true;
            out.key_id = v.signer;
            let kid = out.key_id.as_deref().unwrap_or("?");
            if global.json {
                output::json(&out);
            } else {
                println!("OK signed by {kid}: {}", args.file.display());
                println!("  sha256: {}", out.sha256);
                if trusted.is_some() {
                    println!("  signer: trusted");
                } else {
                    println!(
                        "  signer: not checked against trusted keys (pass --trusted-key KEY or --manifest plugins.toml)"
                    );
                }
            }
            Ok(0)
        }
        Err(e) if e.is_verification_failure() => {
            out.key_id = match &e {
                SignError::UntrustedKey { key_id, .. }
                | SignError::BadSignature { key_id, .. }
                | SignError::NoPublicKey { key_id, .. } => Some(key_id.clone()),
                _ => None,
            };
            let message = match &e {
                SignError::UntrustedKey { path, key_id } => untrusted(&args, path, key_id),
                _ => e.to_string(),
            };
            if global.json {
                out.error = Some(ErrorOut {
                    code: e.code(),
                    message,
                });
                output::json(&out);
            } else {
                eprintln!("tether: verify FAILED: {message}");
            }
            Ok(1)
        }
        Err(e) => Err(super::usage(e)),
    }
}

/// Names the trusted keys that were searched, so the operator knows which list to fix.
fn untrusted(args: &VerifyArgs, path: &Path, key_id: &str) -> String {
    let mut from = Vec::new();
    if !args.trusted_keys.is_empty() {
        from.push(format!("{} --trusted-key", args.trusted_keys.len()));
    }
    if let Some(m) = &args.manifest {
        from.push(format!("trusted_keys of {}", m.display()));
    }
    format!(
        "plugin {} is signed by key {key_id}, which is not trusted (checked: {}); add that key's public key only if you trust its holder",
        path.display(),
        from.join(", ")
    )
}

/// The keys to trust: `--trusted-key`s plus the manifest's `trusted_keys`; `None` when neither
/// option was given (then only integrity and the signature itself are checked).
fn trusted_keys(args: &VerifyArgs) -> Result<Option<Vec<[u8; 32]>>, CliError> {
    if args.trusted_keys.is_empty() && args.manifest.is_none() {
        return Ok(None);
    }
    let mut keys = Vec::new();
    for k in &args.trusted_keys {
        // A path to a .pub file, or the base64 key itself.
        let (text, origin) = match std::fs::read_to_string(k) {
            Ok(text) if Path::new(k).is_file() => (text, format!("--trusted-key {k} (file)")),
            _ => (k.clone(), format!("--trusted-key {k}")),
        };
        let key = tether_plugin_sign::parse_public_key(&text).map_err(|e| {
            CliError::Usage(format!(
                "{origin}: {e}\nhint: pass the base64 public key printed by `tether plugin keygen`, or its .pub file"
            ))
        })?;
        keys.push(key);
    }
    if let Some(m) = &args.manifest {
        let text = std::fs::read_to_string(m)
            .map_err(|e| CliError::Usage(format!("plugin manifest {}: {e}", m.display())))?;
        let parsed: ManifestKeys = toml::from_str(&text)
            .map_err(|e| CliError::Usage(format!("plugin manifest {}: {e}", m.display())))?;
        for (i, k) in parsed.trusted_keys.iter().enumerate() {
            let key = tether_plugin_sign::parse_public_key(k).map_err(|e| {
                CliError::Usage(format!(
                    "plugin manifest {}: trusted_keys[{i}]: {e}",
                    m.display()
                ))
            })?;
            keys.push(key);
        }
    }
    Ok(Some(keys))
}
