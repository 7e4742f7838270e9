//! The relay role: forwards WireGuard datagrams between allowed keys for peers that cannot
//! reach each other over UDP (firewalls that drop UDP, carrier-grade NAT, a hub without a
//! public address). It never sees plaintext: WireGuard encrypts end to end.
//!
//! Transport: TLS 1.3 only (rustls), entered by an HTTP/1.1 upgrade (`GET /relay`,
//! `Upgrade: tether-relay/1`) so it passes HTTPS proxies; `/healthz` answers liveness and
//! `/metrics` needs a bearer token. The protocol core ([`proto`]) is sans-IO; [`server`] and
//! [`client`] are thin tokio drivers.
//!
//! Hubs are admin keys ([`RelayConfig::admin_keys`]): they push the keys they allow
//! ([`RelayClient::set_allowed`]) and take enrollments through the relay ([`enroll`]) when they
//! have no reachable endpoint.
#![forbid(unsafe_code)]

pub mod client;
pub mod enroll;
mod error;
pub mod proto;
mod rendezvous;
pub mod server;
pub mod tls;

pub use client::{RelayClient, RelayTarget};
pub use enroll::{enroll_hash, enroll_hash_from_nonce_sha256};
pub use error::RelayError;
pub use proto::{Frame, Key, MAX_DATAGRAM};
pub use server::{EnrollLimits, Relay, RelayConfig, RelayStats};
