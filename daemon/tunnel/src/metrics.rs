//! Prometheus metrics, registered into a caller-provided registry.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::TunnelError;
use crate::node::{DropReason, Totals};

/// The tunnel's metrics: `tether_vpn_peers`, `tether_vpn_handshakes_total`,
/// `tether_vpn_bytes_total{dir}`, `tether_vpn_dropped_total{reason}`,
/// `tether_vpn_stream_buffer_bytes`, `tether_vpn_path_switches_total`,
/// `tether_vpn_relay_dropped_total`.
#[derive(Debug, Clone)]
pub struct TunnelMetrics {
    path_switches: IntCounter,
    relay_dropped: IntCounter,
    last_relay_dropped: u64,
    peers: IntGauge,
    stream_buffers: IntGauge,
    handshakes: IntCounter,
    bytes: IntCounterVec,
    dropped: IntCounterVec,
    last: Totals,
}

fn reg_err(e: prometheus::Error) -> TunnelError {
    TunnelError::Metrics(e.to_string())
}

impl TunnelMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn register(registry: &Registry) -> Result<Self, TunnelError> {
        let peers = IntGauge::new(
            "tether_vpn_peers",
            "WireGuard peers configured on this node",
        )
        .map_err(reg_err)?;
        let stream_buffers = IntGauge::new(
            "tether_vpn_stream_buffer_bytes",
            "TCP buffer bytes held by open overlay streams (both directions; they grow with each \
             stream's bandwidth-delay product and shrink when it is idle)",
        )
        .map_err(reg_err)?;
        let handshakes = IntCounter::new(
            "tether_vpn_handshakes_total",
            "Completed WireGuard handshakes",
        )
        .map_err(reg_err)?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "tether_vpn_bytes_total",
                "WireGuard datagram bytes by direction (rx, tx)",
            ),
            &["dir"],
        )
        .map_err(reg_err)?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "tether_vpn_dropped_total",
                "Packets dropped by the tunnel, by reason",
            ),
            &["reason"],
        )
        .map_err(reg_err)?;
        let path_switches = IntCounter::new(
            "tether_vpn_path_switches_total",
            "Peers that switched path (direct UDP <-> a relay, or relay to relay)",
        )
        .map_err(reg_err)?;
        let relay_dropped = IntCounter::new(
            "tether_vpn_relay_dropped_total",
            "Datagrams for a relay dropped because its connection was down or its queue full",
        )
        .map_err(reg_err)?;
        registry
            .register(Box::new(path_switches.clone()))
            .map_err(reg_err)?;
        registry
            .register(Box::new(relay_dropped.clone()))
            .map_err(reg_err)?;
        registry
            .register(Box::new(peers.clone()))
            .map_err(reg_err)?;
        registry
            .register(Box::new(stream_buffers.clone()))
            .map_err(reg_err)?;
        registry
            .register(Box::new(handshakes.clone()))
            .map_err(reg_err)?;
        registry
            .register(Box::new(bytes.clone()))
            .map_err(reg_err)?;
        registry
            .register(Box::new(dropped.clone()))
            .map_err(reg_err)?;
        // Make every label visible from the start (a zero is information too).
        bytes.with_label_values(&["rx"]);
        bytes.with_label_values(&["tx"]);
        for r in DropReason::ALL {
            dropped.with_label_values(&[r.as_str()]);
        }
        Ok(TunnelMetrics {
            path_switches,
            relay_dropped,
            last_relay_dropped: 0,
            peers,
            stream_buffers,
            handshakes,
            bytes,
            dropped,
            last: Totals::default(),
        })
    }

    /// Counts one path switch.
    pub(crate) fn path_switched(&self) {
        self.path_switches.inc();
    }

    /// Brings the metrics up to date with the node's monotonic counters and gauges.
    pub(crate) fn update(
        &mut self,
        totals: &Totals,
        peers: usize,
        stream_buffers: usize,
        relay_dropped: u64,
    ) {
        let d = relay_dropped.saturating_sub(self.last_relay_dropped);
        if d > 0 {
            self.relay_dropped.inc_by(d);
        }
        self.last_relay_dropped = relay_dropped;
        self.peers.set(peers as i64);
        self.stream_buffers
            .set(i64::try_from(stream_buffers).unwrap_or(i64::MAX));
        let d = totals.handshakes.saturating_sub(self.last.handshakes);
        if d > 0 {
            self.handshakes.inc_by(d);
        }
        let d = totals.rx_bytes.saturating_sub(self.last.rx_bytes);
        if d > 0 {
            self.bytes.with_label_values(&["rx"]).inc_by(d);
        }
        let d = totals.tx_bytes.saturating_sub(self.last.tx_bytes);
        if d > 0 {
            self.bytes.with_label_values(&["tx"]).inc_by(d);
        }
        for r in DropReason::ALL {
            let i = r as usize;
            let d = totals.drops[i].saturating_sub(self.last.drops[i]);
            if d > 0 {
                self.dropped.with_label_values(&[r.as_str()]).inc_by(d);
            }
        }
        self.last = totals.clone();
    }
}
