//! Hostile test plugin: unbounded recursion. By default the frames hold only wasm locals, so the
//! engine's own stack limit stops it (wasmtime: `Trap::StackOverflow`); with `config shadow = "1"`
//! each frame also uses Rust's shadow stack in linear memory, which overflows first
//! (wasmtime: `Trap::MemoryOutOfBounds`). Either way the host sees a trap.
use tether_plugin_sdk::host::config;
use tether_plugin_sdk::policy::{PolicyHook, Request, Verdict, export_policy};

/// Recurses until a stack runs out.
pub struct StackOverflow;

/// Recursion on wasm locals only. `rotate_left` on the result stops LLVM from turning the
/// recursion into a loop (it only does that for associative accumulators).
#[inline(never)]
#[allow(
    unconditional_recursion,
    reason = "overflowing the stack is this plugin's purpose"
)]
fn recurse_locals(depth: u64) -> u64 {
    recurse_locals(depth.wrapping_add(1)).rotate_left(1) ^ depth
}

/// Recursion with a 256-byte array per frame in linear memory (Rust's shadow stack).
#[inline(never)]
#[allow(
    unconditional_recursion,
    reason = "overflowing the stack is this plugin's purpose"
)]
fn recurse_shadow(depth: u64, pad: [u64; 32]) -> u64 {
    let mut local = std::hint::black_box(pad);
    local[(depth % 32) as usize] = depth;
    recurse_shadow(depth + 1, local) + std::hint::black_box(local[0])
}

impl PolicyHook for StackOverflow {
    fn evaluate(_req: Request) -> Verdict {
        let n = if config::get("shadow").as_deref() == Some("1") {
            recurse_shadow(0, [0; 32])
        } else {
            recurse_locals(0)
        };
        Verdict::deny(format!("unreachable: {n}"))
    }
}

export_policy!(StackOverflow);
