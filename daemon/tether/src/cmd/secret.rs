//! `tether secret set|list|rm|rotate` (admin). Values are read from stdin or a no-echo prompt,
//! never from the command line (argv is visible to every user in `ps`), and never printed.

use std::io::{IsTerminal, Read, Write};

use clap::Subcommand;
use tether_api::{Empty, SecretRef, SecretsList, SecretsRemove, SecretsRotate, SecretsSet};
use zeroize::Zeroize;

use crate::error::CliError;
use crate::global::Global;
use crate::output;
use crate::table::Table;

/// Largest value `secret set` reads (the vault's limit is 64 KiB).
const MAX_VALUE: usize = 64 * 1024;

/// `tether secret ...`
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a secret. The value comes from stdin (one trailing newline is dropped) or, on a
    /// terminal, from a prompt that does not echo.
    Set {
        /// Secret name: 1-128 of A-Z a-z 0-9 . _ -
        name: String,
    },
    /// List secrets: names, backend, version, created/rotated times. Never values.
    List,
    /// Remove a secret.
    Rm {
        /// Secret name.
        name: String,
    },
    /// Replace a key tetherd generated with a fresh random one.
    Rotate {
        /// Secret name.
        name: String,
    },
}

/// Refuses the daemon's own namespace before reading a value or calling the daemon.
fn not_reserved(name: &str) -> Result<(), CliError> {
    if tether_model::is_reserved_secret_name(name) {
        return Err(CliError::Usage(format!(
            "{name:?} is reserved for the daemon's own keys and cannot be set, removed or rotated here; {}",
            tether_model::RESERVED_SECRET_HINT
        )));
    }
    Ok(())
}

pub async fn run(global: &Global, cmd: SecretCommand) -> Result<u8, CliError> {
    match &cmd {
        SecretCommand::Set { name }
        | SecretCommand::Rm { name }
        | SecretCommand::Rotate { name } => not_reserved(name)?,
        SecretCommand::List => {}
    }
    let client = global.client();
    match cmd {
        SecretCommand::Set { name } => {
            let mut value = read_value(&name)?;
            let result = client
                .call_raw::<SecretsSet>(&SecretRef { name: name.clone() }, value.clone())
                .await;
            value.zeroize();
            let info = result?;
            if global.json {
                output::json(&info);
            } else {
                println!("secret {name} stored (version {})", info.version);
            }
        }
        SecretCommand::List => {
            let list = client.call::<SecretsList>(&Empty {}).await?;
            if global.json {
                output::json(&list);
            } else {
                if list.secrets.is_empty() {
                    println!("no secrets (backend: {})", list.backend);
                } else {
                    let mut t =
                        Table::new(&["NAME", "BACKEND", "VERSION", "ORIGIN", "CREATED", "ROTATED"])
                            .right(&[2]);
                    for s in &list.secrets {
                        t.row([
                            s.name.clone(),
                            s.backend.to_string(),
                            s.version.to_string(),
                            if s.generated { "generated" } else { "set" }.to_owned(),
                            s.created.to_string(),
                            s.rotated
                                .as_ref()
                                .map_or("-".to_owned(), ToString::to_string),
                        ]);
                    }
                    t.print();
                }
            }
        }
        SecretCommand::Rm { name } => {
            let out = client
                .call::<SecretsRemove>(&SecretRef { name: name.clone() })
                .await?;
            if global.json {
                output::json(&out);
            } else {
                println!("secret {name} removed");
            }
        }
        SecretCommand::Rotate { name } => {
            let info = client
                .call::<SecretsRotate>(&SecretRef { name: name.clone() })
                .await?;
            if global.json {
                output::json(&info);
            } else {
                println!("secret {name} rotated (version {})", info.version);
            }
        }
    }
    Ok(0)
}

fn read_value(name: &str) -> Result<Vec<u8>, CliError> {
    let stdin = std::io::stdin();
    let mut value = Vec::new();
    if stdin.is_terminal() {
        eprint!("value for {name} (not echoed): ");
        let _ = std::io::stderr().flush();
        let echo_off = EchoOff::new(&stdin);
        let mut line = String::new();
        let read = stdin.read_line(&mut line);
        drop(echo_off);
        eprintln!();
        read.map_err(|e| CliError::Usage(format!("cannot read the value: {e}")))?;
        value.extend_from_slice(line.trim_end_matches(['\r', '\n']).as_bytes());
        line.zeroize();
    } else {
        stdin
            .lock()
            .take(MAX_VALUE as u64 + 1)
            .read_to_end(&mut value)
            .map_err(|e| CliError::Usage(format!("cannot read the value from stdin: {e}")))?;
        if value.len() > MAX_VALUE {
            value.zeroize();
            return Err(CliError::Usage(format!(
                "the value is larger than {MAX_VALUE} bytes"
            )));
        }
        if value.last() == Some(&b'\n') {
            value.pop();
            if value.last() == Some(&b'\r') {
                value.pop();
            }
        }
    }
    if value.is_empty() {
        return Err(CliError::Usage(format!(
            "no value given for {name}: pipe it on stdin (printf %s VALUE | tether secret set {name}) or type it at the prompt"
        )));
    }
    Ok(value)
}

/// Turns terminal echo off until dropped.
struct EchoOff {
    saved: Option<nix::sys::termios::Termios>,
}

impl EchoOff {
    fn new(stdin: &std::io::Stdin) -> EchoOff {
        use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
        let saved = tcgetattr(stdin).ok();
        if let Some(t) = &saved {
            let mut quiet = t.clone();
            quiet.local_flags.remove(LocalFlags::ECHO);
            let _ = tcsetattr(stdin, SetArg::TCSANOW, &quiet);
        }
        EchoOff { saved }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}
