//! Test alert sink (`tether:plugin@0.2.0`): connects to `host`:`port` from its config through
//! the host's `tcp` import, sends the alert message plus a newline, reads one reply and
//! reports it as a rejected delivery (`reply: ...`) so the test can see the round trip; any
//! error is reported as `error: ...`. With `send_bytes` set it sends that many bytes instead;
//! with `hold = "N"` it first opens N more connections and keeps them for the call.
use tether_plugin_sdk::alerts::{Alert, AlertSink, export_alert_sink};
use tether_plugin_sdk::host::{config, tcp};

/// Talks TCP through the host.
pub struct TcpProbe;

fn run(alert: &Alert) -> Result<String, tcp::Error> {
    let host = config::get_or("host", "127.0.0.1");
    let port: u16 = config::get_or("port", "0").parse().unwrap_or(0);
    // `hold = "N"`: open N connections first and keep them open for the whole call.
    let hold: usize = config::get_or("hold", "0").parse().unwrap_or(0);
    let _held = (0..hold)
        .map(|_| tcp::connect(&host, port))
        .collect::<Result<Vec<_>, _>>()?;
    let mut c = tcp::connect(&host, port)?;
    match config::get("send_bytes").and_then(|n| n.parse::<usize>().ok()) {
        Some(n) => c.send(&vec![b'x'; n])?,
        None => c.send(format!("{}\n", alert.message).as_bytes())?,
    }
    let reply = c.receive(256, 1_000)?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

impl AlertSink for TcpProbe {
    fn deliver(alert: Alert) -> Result<(), String> {
        match run(&alert) {
            Ok(reply) => Err(format!("reply: {}", reply.trim_end())),
            Err(e) => Err(format!("error: {e}")),
        }
    }
}

export_alert_sink!(TcpProbe);
