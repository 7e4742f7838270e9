//! Process hardening and the secure-memory start-up check.

use nix::sys::resource::{Resource, setrlimit};

use crate::error::{Result, VaultError};
use crate::memlock::memlock_limit_text;
use crate::secret::{SecretBox, SecureMemoryMode, set_secure_memory_mode};

/// Turns core dumps off (`RLIMIT_CORE = 0`, soft and hard) and makes the process non-dumpable
/// (`prctl(PR_SET_DUMPABLE, 0)`: no core files, and other processes of the same uid cannot
/// ptrace it or read `/proc/PID/mem`). Call once, first thing in `main`.
pub fn harden_process() -> Result<()> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| VaultError::Harden {
        step: "setrlimit(RLIMIT_CORE, 0)",
        detail: e.desc().to_string(),
    })?;
    nix::sys::prctl::set_dumpable(false).map_err(|e| VaultError::Harden {
        step: "prctl(PR_SET_DUMPABLE, 0)",
        detail: e.desc().to_string(),
    })?;
    Ok(())
}

/// Result of [`check_secure_memory`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecureMemoryStatus {
    /// Secret memory is locked into RAM.
    Locked,
    /// Locking failed and `required` was false: secrets live in unlocked (but still guard-paged,
    /// sealed and zeroed) memory. The text says why; log it as a warning.
    Unlocked {
        /// Why locking failed.
        warning: String,
    },
}

/// Checks that secret memory can be locked into RAM by locking a real secret allocation, and
/// sets the process-wide [`SecureMemoryMode`] for all later [`SecretBox`] allocations.
///
/// * lock works → `Ok(Locked)`;
/// * lock fails, `required` → `Err(SecureMemoryUnavailable)` whose message says what failed
///   (the errno and `RLIMIT_MEMLOCK`) and how to fix it;
/// * lock fails, not `required` → `Ok(Unlocked { warning })` (also logged with `tracing::warn!`).
///
/// Note: a process with `CAP_IPC_LOCK` (e.g. root) can lock memory whatever `RLIMIT_MEMLOCK` says.
pub fn check_secure_memory(required: bool) -> Result<SecureMemoryStatus> {
    set_secure_memory_mode(if required {
        SecureMemoryMode::Required
    } else {
        SecureMemoryMode::BestEffort
    });
    let (probe, outcome) = SecretBox::alloc_raw(32)?;
    drop(probe);
    match outcome.error {
        None => Ok(SecureMemoryStatus::Locked),
        Some(err) => {
            let detail = format!(
                "mlock of one page of secret memory failed: {err} ({})",
                memlock_limit_text()
            );
            if required {
                Err(VaultError::SecureMemoryUnavailable { detail })
            } else {
                let warning = format!(
                    "{detail}; continuing because vault.secure_memory_required = false: secrets may be \
                     swapped to disk. Fix: systemd `LimitMEMLOCK=infinity` (or `ulimit -l unlimited`)"
                );
                tracing::warn!("{warning}");
                Ok(SecureMemoryStatus::Unlocked { warning })
            }
        }
    }
}
