//! Per-instance store data: the grants, an empty WASI context, and the memory limiter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::caps::Grants;

/// Data of one plugin instance's `Store`.
pub(crate) struct StoreState {
    pub grants: Arc<Grants>,
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limiter: MemLimiter,
    /// The current call's deadline (bounds host-side work such as `http.send`).
    pub deadline: Instant,
    /// Per-call context the guest reads through `config.get` under reserved `tether.` keys
    /// (an audit batch's seq range and last chain hash); empty between calls.
    pub call_context: Vec<(String, String)>,
    /// Connections of the `tcp` import (0.2.0 sinks), closed after every call.
    pub tcp: crate::tcp::TcpConns,
}

impl StoreState {
    pub fn new(grants: Arc<Grants>, memory_bytes: usize) -> Self {
        StoreState {
            grants,
            wasi: empty_wasi(),
            table: ResourceTable::new(),
            limiter: MemLimiter {
                max_bytes: memory_bytes,
                total: 0,
                hit: false,
            },
            deadline: Instant::now(),
            call_context: Vec::new(),
            tcp: Default::default(),
        }
    }
}

/// A WASI context that grants nothing.
///
/// wasm32-wasip2 std components import WASI p2 interfaces even when they don't use them, so they
/// are linked, but empty or denying:
/// - `wasi:cli/environment`: no variables, no arguments, no cwd;
/// - `wasi:cli/stdin`: empty (EOF); `stdout`/`stderr`: discarded (use the `log` import);
/// - `wasi:cli/exit`: traps the call (counted as a trap, instance recycled);
/// - `wasi:filesystem/*`: no preopened directories, so no path can be opened;
/// - `wasi:sockets/*`: TCP, UDP and name lookup disabled, every address refused;
/// - `wasi:clocks/wall-clock` and `monotonic-clock`: frozen at 0 (the `clock` import is the
///   only clock; this also denies a timing side channel);
/// - `wasi:random/*`: real randomness (std's HashMap needs it; it grants no access);
/// - `wasi:io/*`: streams over the above only; `wasi:io/poll` `poll` and `pollable.block` trap
///   (see [`deny_blocking`]): a plugin may not sleep or wait.
pub(crate) fn empty_wasi() -> WasiCtx {
    WasiCtxBuilder::new()
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }))
        .wall_clock(FrozenWall)
        .monotonic_clock(FrozenMono)
        .build()
}

struct FrozenWall;
impl wasmtime_wasi::HostWallClock for FrozenWall {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

struct FrozenMono;
impl wasmtime_wasi::HostMonotonicClock for FrozenMono {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps the sum of the instance's linear memories at `memory_mb`.
pub(crate) struct MemLimiter {
    pub max_bytes: usize,
    pub total: usize,
    /// Set when a growth was refused (classifies the following trap as `memory`).
    pub hit: bool,
}

impl wasmtime::ResourceLimiter for MemLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let new_total = self.total.saturating_sub(current).saturating_add(desired);
        if new_total > self.max_bytes {
            self.hit = true;
            return Ok(false);
        }
        self.total = new_total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        32
    }
    fn tables(&self) -> usize {
        32
    }
    fn memories(&self) -> usize {
        4
    }
}

/// The wasmtime-wasi version of `wasi:io` whose `poll` functions are replaced.
const WASI_IO_POLL: &str = "wasi:io/poll@0.2.12";

/// Replaces `wasi:io/poll`'s `poll` and `[method]pollable.block` with functions that trap.
///
/// In the synchronous WASI bindings these block the calling thread inside host code, where the
/// epoch deadline cannot interrupt them: `std::thread::sleep(1h)` in a plugin would hold a
/// daemon thread for an hour. Nothing a plugin legitimately does needs them (stdio is a sink,
/// sockets are disabled, HTTP goes through the host's `http` import with its own deadline).
pub(crate) fn deny_blocking(
    linker: &mut wasmtime::component::Linker<StoreState>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(WASI_IO_POLL)?;
    for name in ["poll", "[method]pollable.block"] {
        poll.func_new(name, move |_, _, _, _| {
            Err(wasmtime::Error::msg(format!(
                "plugins may not block or sleep (wasi:io/poll {name} is denied); the call was stopped"
            )))
        })?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

impl StoreState {
    /// `config.get` for every ABI version: per-call context under the reserved `tether.` keys
    /// (an audit batch's seq range and last chain hash), else the plugin's own config.
    pub(crate) fn config_value(&self, key: &str) -> Option<String> {
        if key.starts_with("tether.") {
            return self
                .call_context
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone());
        }
        self.grants.config(key)
    }
}
