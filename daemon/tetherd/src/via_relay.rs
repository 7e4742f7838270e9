//! Relays, for peers whose UDP is blocked: the tunnel's relay endpoints from `[[tunnel.relays]]`
//! (and, on a target, the relays its invite named), and the hub's enrollment listener on each
//! relay, through which targets enroll when the hub has no address they can reach.
//!
//! The listener announces a hash of every pending invite's nonce ([`tether_relay::enroll`]);
//! the relay pairs a target that names one with a fresh connection from the hub and splices
//! them; the enrollment exchange then runs end to end (its MACs come from the token, which the
//! relay never sees). A relayed enrollment has no source address: the relay rate-limits it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tether_enroll::{EnrollMetrics, Hub, ServerConfig, unix_now};
use tether_model::relay::RelaySpec;
use tether_relay::RelayTarget;
use tether_relay::enroll::{Listener, accept, enroll_hash_from_nonce_sha256};
use tether_tunnel::RelayEndpoint;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the hub compares its pending invites with what it announced.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(500);
/// Connect + TLS + proof, and accepting one session.
const RELAY_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// How to reach and recognise a relay (its entry was validated with the config or the token).
pub fn target(spec: &RelaySpec) -> RelayTarget {
    RelayTarget {
        addr: spec.addr.clone(),
        server_name: spec.sni().to_owned(),
        cert_sha256: spec.cert_sha256.to_ascii_lowercase(),
        relay_key: spec.key_bytes().unwrap_or_default(),
    }
}

/// The tunnel's relays, in failover order, without repeating a name (the first entry wins).
pub fn endpoints<'a>(specs: impl IntoIterator<Item = &'a RelaySpec>) -> Vec<RelayEndpoint> {
    let mut seen = BTreeSet::new();
    specs
        .into_iter()
        .filter(|s| s.key_bytes().is_some() && seen.insert(s.name.clone()))
        .map(|s| RelayEndpoint {
            name: s.name.clone(),
            target: target(s),
        })
        .collect()
}

/// The hashes of the invites a target may still enroll with, as the relay knows them.
fn pending_hashes(hub: &Hub) -> Vec<[u8; 32]> {
    let mut out: Vec<[u8; 32]> = hub
        .pending_invites(unix_now())
        .iter()
        .filter_map(|r| {
            let raw = hex::decode(&r.nonce_hash).ok()?;
            let raw: [u8; 32] = raw.try_into().ok()?;
            Some(enroll_hash_from_nonce_sha256(&raw))
        })
        .collect();
    out.sort_unstable();
    out
}

/// Starts one enrollment listener per relay on the hub.
pub fn spawn_enroll_listeners(
    relays: &[RelaySpec],
    secret: x25519_dalek::StaticSecret,
    hub: Arc<Hub>,
    metrics: EnrollMetrics,
    shutdown: CancellationToken,
) -> Vec<JoinHandle<()>> {
    relays
        .iter()
        .map(|spec| {
            tokio::spawn(listen(
                spec.name.clone(),
                target(spec),
                secret.clone(),
                Arc::clone(&hub),
                metrics.clone(),
                shutdown.clone(),
            ))
        })
        .collect()
}

async fn listen(
    name: String,
    relay: RelayTarget,
    secret: x25519_dalek::StaticSecret,
    hub: Arc<Hub>,
    metrics: EnrollMetrics,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    let mut failing = false;
    loop {
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = Listener::connect(&relay, &secret, RELAY_TIMEOUT) => c,
        };
        match connected {
            Ok(mut listener) => {
                tracing::info!(relay = %name, "enrollment listener on the relay connected");
                failing = false;
                backoff = BACKOFF_MIN;
                let mut announced: Option<Vec<[u8; 32]>> = None;
                let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let why = loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tick.tick() => {
                            let now = pending_hashes(&hub);
                            if announced.as_ref() != Some(&now) {
                                if let Err(e) = listener.expect(now.clone()).await {
                                    break e.to_string();
                                }
                                tracing::debug!(relay = %name, invites = now.len(), "pending invites announced to the relay");
                                announced = Some(now);
                            }
                        }
                        s = listener.next_session() => match s {
                            Ok(session) => {
                                tokio::spawn(serve_one(name.clone(), relay.clone(), secret.clone(), session, Arc::clone(&hub), metrics.clone()));
                            }
                            Err(e) => break e.to_string(),
                        },
                    }
                };
                tracing::warn!(relay = %name, error = %why, "enrollment listener on the relay lost; reconnecting");
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(relay = %name, error = %e, "cannot reach the relay for enrollments; retrying with backoff");
            }
            Err(e) => {
                tracing::debug!(relay = %name, error = %e, "relay enrollment listener connect failed")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn serve_one(
    name: String,
    relay: RelayTarget,
    secret: x25519_dalek::StaticSecret,
    session: u64,
    hub: Arc<Hub>,
    metrics: EnrollMetrics,
) {
    match accept(&relay, &secret, session, RELAY_TIMEOUT).await {
        Ok(stream) => {
            let label = format!("relay:{name}");
            tether_enroll::serve_stream(stream, &label, hub, &ServerConfig::default(), &metrics)
                .await;
        }
        Err(e) => {
            tracing::info!(relay = %name, session, error = %e, "could not take an enrollment from the relay")
        }
    }
}
