//! End-to-end tests: real tetherd processes, the real tether CLI, real sockets and files.
#![allow(missing_docs, clippy::unwrap_used)]

mod alerts;
mod approvals;
mod audit;
mod config;
mod demo;
mod exec;
mod firsthour;
mod fs;
mod layout;
mod lifecycle;
mod limits;
mod mcp;
mod membership;
mod openssh;
mod plugin_cli;
mod plugins;
mod policy;
mod rbac;
mod rollout;
mod schemathesis;
mod sessions;
mod sftp;
mod siem;
mod state;
mod vault;
