//! One simulated target: its own WireGuard key and UDP socket on 127.0.0.1, enrolled through a
//! real invite (the real `enroll_client` exchange, with the proof of possession), the project's
//! tunnel driver ([`tether_tunnel::Tunnel`] around the sans-IO `Node`) with the hub as its one
//! peer, and the real target SSH server ([`tether_ssh::server::SshServer`]) on overlay port 22.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tether_enroll::{ClientOptions, TargetKeys, Token, Welcome, WgKeyAgreement, WgProver};
use tether_ssh::server::{BoxFuture, ExecGate, ExecReport, ServerSettings, SshServer};
use tether_tunnel::{NodeConfig, NodeRole, PeerConfig, PublicKey, SecretKey, Tunnel, TunnelConfig};
use tokio_util::sync::CancellationToken;

/// Per-stream TCP buffer of a simulated target: an exec of `true` moves a few KiB, and the
/// default (256 KiB per direction) would make 10,000 targets cost gigabytes in this process.
const SIM_TCP_BUFFER: usize = 16 * 1024;

/// The keepalive a target sends (tetherd's default `persistent_keepalive_secs`).
const KEEPALIVE_SECS: u16 = 25;

/// What went wrong with one simulated target.
pub type SimError = String;

/// Counters shared by every simulated target's SSH server.
#[derive(Debug, Default)]
pub struct Counters {
    /// Commands admitted.
    pub admitted: AtomicU64,
    /// Commands finished.
    pub finished: AtomicU64,
    /// SSH connections from the hub accepted so far (all targets).
    pub connections: AtomicU64,
    /// SSH connections from the hub open now (all targets).
    pub open: AtomicU64,
    /// The most SSH connections open at once since it was last reset.
    pub peak_open: AtomicU64,
    /// SSH connections from the hub that ended, by how they ended (`ok`, the error text with
    /// digits dropped, or `stopped`), so a fan-out's report shows who closed what.
    pub ended: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Counters {
    /// One more connection open.
    fn opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_open.fetch_max(now, Ordering::Relaxed);
    }

    /// One connection fewer open, ended as `how`.
    fn closed(&self, how: &str) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        let how: String = how.chars().filter(|c| !c.is_ascii_digit()).collect();
        *self
            .ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(how)
            .or_default() += 1;
    }

    /// The connection ends counted so far, by how they ended.
    pub fn ended(&self) -> std::collections::BTreeMap<String, u64> {
        self.ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Lets every command run and counts it (a simulated target has no policy or audit of its own;
/// the hub's side of both is what is measured).
struct CountingGate(Arc<Counters>);

impl ExecGate for CountingGate {
    fn admit<'a>(&'a self, _command: &'a str) -> BoxFuture<'a, Result<(), String>> {
        self.0.admitted.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }
    fn admit_session<'a>(&'a self, _command: Option<&'a str>) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
    fn finished(&self, _report: ExecReport) -> BoxFuture<'_, ()> {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
        Box::pin(async {})
    }
}

struct Agreement(SecretKey);

impl WgKeyAgreement for Agreement {
    fn agree(&self, peer_public: &[u8; 32]) -> Option<zeroize::Zeroizing<[u8; 32]>> {
        Some(zeroize::Zeroizing::new(self.0.diffie_hellman(peer_public)))
    }
}

/// A target's identity before enrollment: keys it generated itself.
pub struct Identity {
    wg: SecretKey,
    ssh_seed: zeroize::Zeroizing<[u8; 32]>,
    ssh_public: String,
}

impl Identity {
    /// Fresh keys from the OS random number generator.
    pub fn generate() -> Result<Identity, SimError> {
        let wg = SecretKey::generate().map_err(|e| format!("WireGuard key: {e}"))?;
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut *seed).map_err(|e| format!("random: {e}"))?;
        let key = tether_ssh::keys::from_seed(&*seed).map_err(|e| e.to_string())?;
        let ssh_public = key
            .public_key()
            .to_openssh()
            .map_err(|e| format!("SSH public key: {e}"))?;
        Ok(Identity {
            wg,
            ssh_seed: seed,
            ssh_public,
        })
    }

    /// Runs the enrollment exchange with the hub named in `token`.
    pub async fn enroll(&self, token: String, hostname: &str) -> Result<Welcome, SimError> {
        let token = Token::from_text(token).map_err(|e| e.to_string())?;
        let keys = TargetKeys {
            wg_public: self.wg.public_key().0,
            ssh_host_key: self.ssh_public.clone(),
            hostname: hostname.to_owned(),
            ssh_user: None,
        };
        let opts = ClientOptions {
            wg_key: Some(WgProver(Arc::new(Agreement(self.wg.clone())))),
            retry_rate_limited_for: Some(Duration::from_secs(600)),
            ..ClientOptions::default()
        };
        tether_enroll::enroll_client(&token, &keys, &opts)
            .await
            .map_err(|e| e.to_string())
    }
}

/// A running simulated target (stopped on drop of its tunnel and the cancellation).
pub struct Target {
    /// The tunnel (its driver task runs on the simulator's runtime).
    pub tunnel: Tunnel,
}

/// The hub's overlay address: `.1` of the /16 the target's address is in (tetherd's default
/// `tunnel.subnet` is a /16).
fn hub_ip(overlay: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(overlay) & 0xffff_0000) + 1)
}

/// Brings an enrolled identity online: tunnel to the hub and the SSH server on overlay port 22.
pub async fn start(
    id: Identity,
    welcome: &Welcome,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> Result<Target, SimError> {
    let mut node = NodeConfig::new(id.wg.clone(), welcome.overlay_ip, NodeRole::Target);
    node.tcp_buffer = SIM_TCP_BUFFER;
    node.tcp_buffer_max = SIM_TCP_BUFFER;
    let bind: SocketAddr = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    let tunnel = Tunnel::start(TunnelConfig::new(node, bind))
        .await
        .map_err(|e| e.to_string())?;
    let handle = tunnel.handle();
    let hub_overlay = hub_ip(welcome.overlay_ip);
    let endpoint: SocketAddr = welcome
        .hub_wg_endpoint
        .parse()
        .map_err(|e| format!("hub endpoint {:?}: {e}", welcome.hub_wg_endpoint))?;
    handle
        .add_peer(PeerConfig {
            name: "hub".to_owned(),
            public_key: PublicKey(welcome.hub_wg_public().map_err(|e| e.to_string())?),
            overlay_ip: hub_overlay,
            endpoint: Some(endpoint),
            persistent_keepalive: Some(KEEPALIVE_SECS),
        })
        .map_err(|e| e.to_string())?;
    let server = SshServer::new(ServerSettings {
        host_key: tether_ssh::keys::from_seed(&*id.ssh_seed).map_err(|e| e.to_string())?,
        hub_key: tether_ssh::keys::parse_public(&welcome.hub_ssh_client_key, "hub key")
            .map_err(|e| e.to_string())?,
        env_allow: tether_ssh::server::DEFAULT_ENV_ALLOW
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        run_as: tether_ssh::run_as::RunAs::resolve(None).map_err(|e| e.to_string())?,
        gate: Arc::new(CountingGate(Arc::clone(&counters))),
        sftp: None,
    });
    let listener = handle
        .listen(tether_ssh::SSH_PORT)
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = stop.cancelled() => return,
                s = listener.accept() => match s {
                    Ok(s) => s,
                    Err(_) => return,
                },
            };
            if stream.peer_ip() != hub_overlay {
                continue;
            }
            let (server, stop, counters) = (server.clone(), stop.clone(), Arc::clone(&counters));
            counters.opened();
            tokio::spawn(async move {
                let how = tokio::select! {
                    r = server.serve_connection(stream) => match r {
                        Ok(()) => "ok".to_owned(),
                        Err(e) => e.to_string(),
                    },
                    () = stop.cancelled() => "stopped".to_owned(),
                };
                counters.closed(&how);
            });
        }
    });
    Ok(Target { tunnel })
}
