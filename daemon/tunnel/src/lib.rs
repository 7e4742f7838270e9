//! Userspace WireGuard (boringtun) + userspace TCP/IP (smoltcp): a sans-IO Node and a thin tokio driver.
#![forbid(unsafe_code)]
