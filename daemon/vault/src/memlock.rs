//! The memory-lock limit, described for error messages. A leaf module: both the secret
//! allocator and the start-up check in `harden` name it, and `harden` depends on `secret`.

use nix::sys::resource::{Resource, getrlimit};

/// `RLIMIT_MEMLOCK soft=… hard=…` for error messages.
pub(crate) fn memlock_limit_text() -> String {
    fn fmt(v: u64) -> String {
        if v == nix::sys::resource::RLIM_INFINITY {
            "unlimited".into()
        } else {
            format!("{v} bytes")
        }
    }
    match getrlimit(Resource::RLIMIT_MEMLOCK) {
        Ok((soft, hard)) => format!("RLIMIT_MEMLOCK soft={} hard={}", fmt(soft), fmt(hard)),
        Err(e) => format!("RLIMIT_MEMLOCK unknown: {}", e.desc()),
    }
}
