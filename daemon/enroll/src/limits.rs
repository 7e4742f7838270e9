//! Limits of the enrollment exchange that more than one module names: the server enforces them,
//! the client and the error mapping ([`crate::EnrollError::from_remote`]) report them. A leaf
//! module, so `error` need not depend on `server`.

use std::time::Duration;

/// Default per-connection deadline (10 s).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
