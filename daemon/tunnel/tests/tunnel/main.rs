//! One integration-test binary for the tunnel crate (link time dominates; keep it to one).
#![allow(clippy::unwrap_used, missing_docs)]

mod driver;
mod echo;
mod interop;
mod path;
mod relay;
mod sim;
mod wan;
