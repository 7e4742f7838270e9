//! Hostile test plugin: allocates without bound (the host's memory cap must stop it).
use tether_plugin_sdk::policy::{PolicyHook, Request, Verdict, export_policy};

/// Grows memory until the host refuses (then the allocator aborts: a trap).
pub struct AllocBomb;

impl PolicyHook for AllocBomb {
    fn evaluate(_req: Request) -> Verdict {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // 1 MiB at a time, touched so the pages are really committed.
            let chunk = vec![0xA5u8; 1 << 20];
            hoard.push(std::hint::black_box(chunk));
            if std::hint::black_box(hoard.len()) == usize::MAX {
                return Verdict::Allow;
            }
        }
    }
}

export_policy!(AllocBomb);
