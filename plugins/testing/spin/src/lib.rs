//! Hostile test plugin: never returns from `evaluate` (the host's epoch deadline must stop it).
use tether_plugin_sdk::policy::{PolicyHook, Request, Verdict, export_policy};

/// Loops forever.
pub struct Spin;

impl PolicyHook for Spin {
    fn evaluate(req: Request) -> Verdict {
        let mut n: u64 = 0;
        loop {
            // black_box keeps the optimiser from proving the loop pointless.
            n = std::hint::black_box(n.wrapping_add(req.command().len() as u64 + 1));
            if std::hint::black_box(n) == u64::MAX && std::hint::black_box(false) {
                return Verdict::Allow;
            }
        }
    }
}

export_policy!(Spin);
