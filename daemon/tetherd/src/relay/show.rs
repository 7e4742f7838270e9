//! `tetherd relay show`: what a hub's (or target's) config needs to use this relay — name,
//! address, TLS server name, certificate SHA-256 and relay key — as text with a
//! `[[tunnel.relays]]` snippet to paste, or as JSON.

use std::net::SocketAddr;

use serde::Serialize;

use super::identity;
use crate::cli::RelayShowArgs;
use crate::error::DaemonError;

/// One `[[tunnel.relays]]` entry, exactly the keys hubs and targets read.
#[derive(Debug, Serialize)]
struct RelayEntry {
    name: String,
    addr: String,
    server_name: String,
    cert_sha256: String,
    relay_key: String,
}

pub fn main(args: RelayShowArgs) -> Result<(), DaemonError> {
    let opened = super::open(args.config, args.state_dir)?;
    let secret = identity::secret(&opened.vault, opened.mode)?;
    let tls = identity::tls(&opened.config, opened.mode)?;
    let listen = opened.config.relay.listen_addr().ok_or_else(|| {
        DaemonError::RelayConfig(format!(
            "relay.listen {:?} is not an IP:port",
            opened.config.relay.listen
        ))
    })?;
    let addr = match args.addr {
        Some(a) => a,
        None => default_addr(listen),
    };
    let server_name = match args.server_name {
        Some(s) => s,
        None => host_of(&addr),
    };
    let entry = RelayEntry {
        name: args.name.unwrap_or_else(crate::identity::hostname),
        addr,
        server_name,
        cert_sha256: tls.sha256()?,
        relay_key: identity::public_b64(&secret),
    };
    if args.json {
        let text = serde_json::to_string_pretty(&entry)
            .map_err(|e| DaemonError::Relay(format!("cannot encode the answer: {e}")))?;
        println!("{text}");
        return Ok(());
    }
    let guessed = listen.ip().is_unspecified();
    println!("relay {}", entry.name);
    println!(
        "  address:             {}{}",
        entry.addr,
        if guessed {
            "  (this host's name: the relay listens on every address; pass --addr with the name hubs and targets reach it by)"
        } else {
            ""
        }
    );
    println!("  TLS server name:     {}", entry.server_name);
    println!(
        "  certificate SHA-256: {}  ({})",
        entry.cert_sha256,
        if tls.generated {
            "generated, self-signed: clients pin it"
        } else {
            "from relay.tls_cert"
        }
    );
    println!("  relay key:           {}", entry.relay_key);
    println!();
    println!("# Add to the hub's tetherd.toml (and to targets that should use this relay):");
    println!("[[tunnel.relays]]");
    for (k, v) in [
        ("name", &entry.name),
        ("addr", &entry.addr),
        ("server_name", &entry.server_name),
        ("cert_sha256", &entry.cert_sha256),
        ("relay_key", &entry.relay_key),
    ] {
        println!("{k} = {}", toml_string(v));
    }
    Ok(())
}

/// The listen address, or this host's name with its port when it listens on every address.
fn default_addr(listen: SocketAddr) -> String {
    if listen.ip().is_unspecified() {
        format!("{}:{}", crate::identity::hostname(), listen.port())
    } else {
        listen.to_string()
    }
}

/// `host` of `host:port` (`[v6]:port` → `v6`).
fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

/// A TOML basic string (the values are base64, hex, names and addresses; quotes and
/// backslashes are escaped anyway).
fn toml_string(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn hosts_and_strings() {
        assert_eq!(super::host_of("relay.example.net:443"), "relay.example.net");
        assert_eq!(super::host_of("[::1]:443"), "::1");
        assert_eq!(super::host_of("127.0.0.1:8443"), "127.0.0.1");
        assert_eq!(super::toml_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
