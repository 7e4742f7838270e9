//! Hostile test plugin: unbounded recursion (overflows the wasm stack: a trap for the host).
use tether_plugin_sdk::policy::{PolicyHook, Request, Verdict, export_policy};

/// Recurses until the stack runs out.
pub struct StackOverflow;

#[inline(never)]
#[allow(
    unconditional_recursion,
    reason = "overflowing the stack is this plugin's purpose"
)]
fn recurse(depth: u64, pad: [u64; 32]) -> u64 {
    // The array and black_box stop tail-call/loop optimisation.
    let mut local = std::hint::black_box(pad);
    local[(depth % 32) as usize] = depth;
    recurse(depth + 1, local) + std::hint::black_box(local[0])
}

impl PolicyHook for StackOverflow {
    fn evaluate(_req: Request) -> Verdict {
        let n = recurse(0, [0; 32]);
        Verdict::deny(format!("unreachable: {n}"))
    }
}

export_policy!(StackOverflow);
