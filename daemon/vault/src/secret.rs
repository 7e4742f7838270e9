//! [`SecretBox`]: secret bytes in locked, guard-paged memory that is sealed (`PROT_NONE`) except
//! inside a scoped [`SecretBox::expose`].
//!
//! Layout (memsec 0.7 `malloc_sized`): `[meta page RO][guard NONE][data pages][guard NONE]`; the data
//! pages are `mlock`ed and `MADV_DONTDUMP` (left out of core dumps). memsec ignores an `mlock`
//! failure, so every allocation here locks its pages again and checks the result: with
//! [`SecureMemoryMode::Required`] (the default) an allocation that cannot be locked fails; with
//! `BestEffort` it continues unlocked (still guard-paged, sealed and zeroed on drop) and counts it.

#![allow(unsafe_code)]

use std::fmt;
use std::io::Read;
use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use subtle::ConstantTimeEq;

use crate::error::{Result, VaultError};

/// Largest secret the vault holds (64 KiB): keys, tokens and webhook URLs are far smaller.
pub const MAX_SECRET_LEN: usize = 64 * 1024;

/// Whether every secret allocation must be locked into RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureMemoryMode {
    /// An allocation whose pages cannot be `mlock`ed fails (the default).
    Required,
    /// Allocations continue unlocked (guard pages, sealing and zeroing still apply).
    BestEffort,
}

static BEST_EFFORT: AtomicBool = AtomicBool::new(false);
static UNLOCKED_ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// Sets the process-wide mode. [`crate::check_secure_memory`] calls this; call it directly only
/// in tests.
pub fn set_secure_memory_mode(mode: SecureMemoryMode) {
    BEST_EFFORT.store(mode == SecureMemoryMode::BestEffort, Ordering::SeqCst);
}

/// The process-wide mode.
pub fn secure_memory_mode() -> SecureMemoryMode {
    if BEST_EFFORT.load(Ordering::SeqCst) {
        SecureMemoryMode::BestEffort
    } else {
        SecureMemoryMode::Required
    }
}

/// How many secret allocations so far could not be locked into RAM (only possible in
/// `BestEffort` mode). Export it as a metric.
pub fn unlocked_allocations() -> usize {
    UNLOCKED_ALLOCATIONS.load(Ordering::Relaxed)
}

/// Secret bytes in locked, guard-paged, sealed memory. See the module docs.
///
/// * `Debug`/`Display` print `[redacted]`.
/// * No `Clone`: [`SecretBox::try_clone`] copies into another locked allocation.
/// * Equality is constant-time (`subtle`) in the contents (not in the length).
/// * `Send + Sync`: concurrent [`expose`](SecretBox::expose) calls share one unsealed window,
///   counted under a mutex, so one thread never re-seals memory another thread is reading.
pub struct SecretBox {
    /// Start of `cap` bytes returned by `memsec::malloc_sized`.
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
    locked: bool,
    /// Number of live read exposures; the memory is readable exactly while this is > 0.
    readers: Mutex<usize>,
}

// SAFETY: `SecretBox` exclusively owns its allocation (no aliasing pointer escapes: `expose`
// hands out borrows bounded by the closure), and memsec memory has no thread affinity.
unsafe impl Send for SecretBox {}
// SAFETY: `&SecretBox` only allows reads (`expose`), and every protection change made through
// `&self` happens under the `readers` mutex, so no thread can seal pages another thread is
// reading. Writes need `&mut SecretBox`, which excludes all readers.
unsafe impl Sync for SecretBox {}

/// Outcome of locking one allocation's pages.
pub(crate) struct LockOutcome {
    pub(crate) error: Option<std::io::Error>,
}

impl SecretBox {
    /// Allocates `cap` zeroed bytes, locks them (checking the result) and seals them.
    /// Returns the box and the lock error, if any, without applying the mode policy.
    pub(crate) fn alloc_raw(cap: usize) -> Result<(SecretBox, LockOutcome)> {
        if cap > MAX_SECRET_LEN {
            return Err(VaultError::TooLarge {
                len: cap,
                max: MAX_SECRET_LEN,
            });
        }
        // SAFETY: `malloc_sized` has no preconditions; `cap` is bounded above so the size
        // arithmetic inside memsec cannot overflow. It returns `None` on failure.
        let raw =
            unsafe { memsec::malloc_sized(cap) }.ok_or(VaultError::Allocation { len: cap })?;
        let ptr = raw.cast::<u8>();
        // SAFETY: memsec returned `cap` writable bytes at `ptr` (it fills them with 0xd0).
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, cap) };
        // A zero-length secret holds nothing to lock (and its pointer is the guard page's start).
        // SAFETY: `ptr..ptr+cap` lies inside the allocation's data pages; `mlock` only changes
        // residency and is idempotent on pages memsec already locked.
        let locked = cap == 0 || unsafe { memsec::mlock(ptr.as_ptr(), cap) };
        let error = if locked {
            None
        } else {
            Some(std::io::Error::last_os_error())
        };
        let b = SecretBox {
            ptr,
            cap,
            len: cap,
            locked,
            readers: Mutex::new(0),
        };
        b.protect(memsec::Prot::NoAccess)?;
        Ok((b, LockOutcome { error }))
    }

    /// Allocates `len` zero bytes, applying the process-wide [`SecureMemoryMode`].
    fn alloc(len: usize) -> Result<SecretBox> {
        let (b, outcome) = Self::alloc_raw(len)?;
        if let Some(err) = outcome.error {
            match secure_memory_mode() {
                SecureMemoryMode::Required => {
                    return Err(VaultError::SecureMemoryUnavailable {
                        detail: format!(
                            "mlock of a {len}-byte secret failed: {err} ({})",
                            crate::memlock::memlock_limit_text()
                        ),
                    });
                }
                SecureMemoryMode::BestEffort => {
                    if UNLOCKED_ALLOCATIONS.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!(
                            error = %err,
                            "secret memory is not locked into RAM (vault.secure_memory_required = false); \
                             secrets may be swapped to disk"
                        );
                    }
                }
            }
        }
        Ok(b)
    }

    /// `len` zero bytes, to be filled with [`expose_mut`](Self::expose_mut).
    pub fn zeroed(len: usize) -> Result<SecretBox> {
        Self::alloc(len)
    }

    /// `len` bytes from the OS random number generator, written straight into locked memory.
    pub fn random(len: usize) -> Result<SecretBox> {
        let mut b = Self::alloc(len)?;
        b.expose_mut(getrandom::fill)
            .map_err(|e| VaultError::Random {
                detail: e.to_string(),
            })?;
        Ok(b)
    }

    /// Copies `bytes` into locked memory. Wiping the source is the caller's job (prefer
    /// [`from_reader`](Self::from_reader) or [`random`](Self::random), which make no copy).
    pub fn from_slice(bytes: &[u8]) -> Result<SecretBox> {
        let mut b = Self::alloc(bytes.len())?;
        b.expose_mut(|buf| buf.copy_from_slice(bytes));
        Ok(b)
    }

    /// Reads until EOF straight into locked memory (no intermediate buffer; pass an
    /// *unbuffered* reader such as a `File`, or the bytes also sit in the reader's buffer).
    /// Fails with [`VaultError::TooLarge`] when more than `max_len` bytes arrive.
    pub fn from_reader<R: Read>(mut reader: R, max_len: usize) -> Result<SecretBox> {
        let max_len = max_len.min(MAX_SECRET_LEN);
        let mut b = Self::alloc(max_len)?;
        let filled = b.expose_mut(|buf| -> std::io::Result<usize> {
            let mut filled = 0;
            while filled < buf.len() {
                match reader.read(&mut buf[filled..]) {
                    Ok(0) => return Ok(filled),
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(filled)
        });
        let filled = filled.map_err(|e| VaultError::io("read secret from", "<input>", e))?;
        if filled == max_len {
            // Full: is there more? Probe one byte on the stack and wipe it.
            let mut probe = [0u8; 1];
            let more = loop {
                match reader.read(&mut probe) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(VaultError::io("read secret from", "<input>", e)),
                }
            };
            zeroize::Zeroize::zeroize(&mut probe);
            if more > 0 {
                return Err(VaultError::TooLarge {
                    len: max_len + 1,
                    max: max_len,
                });
            }
        }
        b.len = filled;
        Ok(b)
    }

    /// Reads standard input until EOF, unbuffered (it bypasses `std::io::Stdin`'s buffer, so
    /// nothing must have read stdin through `std::io::stdin()` before).
    pub fn from_stdin(max_len: usize) -> Result<SecretBox> {
        use std::os::fd::AsFd;
        let fd = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| VaultError::io("duplicate", "<stdin>", e))?;
        Self::from_reader(std::fs::File::from(fd), max_len)
    }

    /// Copies into a fresh locked allocation (there is deliberately no `Clone`).
    pub fn try_clone(&self) -> Result<SecretBox> {
        let mut b = Self::alloc(self.len)?;
        self.expose(|src| b.expose_mut(|dst| dst.copy_from_slice(src)));
        Ok(b)
    }

    /// Drops one trailing `\n` (and a `\r` before it), as left by `echo value |` or a TTY prompt.
    /// The dropped bytes are zeroed.
    pub fn trim_trailing_newline(&mut self) {
        let len = self.len;
        let new_len = self.expose_mut(|buf| {
            let mut n = len;
            if n > 0 && buf[n - 1] == b'\n' {
                n -= 1;
                if n > 0 && buf[n - 1] == b'\r' {
                    n -= 1;
                }
            }
            buf[n..len].fill(0);
            n
        });
        self.len = new_len;
    }

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length secret.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether this allocation's pages are locked into RAM.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Runs `f` with read access to the bytes; the memory is sealed again when the last
    /// concurrent `expose` returns (also on panic).
    ///
    /// # Panics
    /// If the kernel refuses to make the pages readable (`mprotect` failing on memory this box
    /// owns: only when the process is out of memory mappings, `vm.max_map_count`).
    pub fn expose<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        let _window = ReadWindow::open(self);
        // SAFETY: `ptr` is valid for `cap >= len` bytes and readable while `_window` lives; only
        // shared borrows exist (mutation needs `&mut self`), and the borrow cannot outlive `f`.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) };
        f(bytes)
    }

    /// Runs `f` with write access to the bytes (for filling), then seals them again.
    ///
    /// # Panics
    /// As [`expose`](Self::expose).
    pub fn expose_mut<R>(&mut self, f: impl FnOnce(&mut [u8]) -> R) -> R {
        if let Err(e) = self.protect(memsec::Prot::ReadWrite) {
            panic!("cannot unseal secret memory: {e}");
        }
        let guard = SealOnDrop(self);
        // SAFETY: `ptr` is valid and writable for `len` bytes now; `&mut self` guarantees no
        // other borrow of the bytes exists; the borrow cannot outlive `f`.
        let bytes = unsafe { std::slice::from_raw_parts_mut(guard.0.ptr.as_ptr(), guard.0.len) };
        f(bytes)
    }

    /// Constant-time comparison with plain bytes (e.g. a token presented by a client).
    pub fn ct_eq_bytes(&self, other: &[u8]) -> bool {
        self.expose(|mine| bool::from(mine.ct_eq(other)))
    }

    fn protect(&self, prot: memsec::Prot::Ty) -> Result<()> {
        // SAFETY: `ptr` is the user pointer of a live memsec allocation, as `mprotect` requires;
        // it only changes the protection of this allocation's own data pages.
        if unsafe { memsec::mprotect(self.ptr, prot) } {
            Ok(())
        } else {
            Err(VaultError::Protect {
                detail: std::io::Error::last_os_error().to_string(),
            })
        }
    }
}

/// Keeps the pages readable while at least one reader is inside `expose`.
struct ReadWindow<'a>(&'a SecretBox);

impl<'a> ReadWindow<'a> {
    fn open(b: &'a SecretBox) -> Self {
        let mut readers = b.readers.lock().unwrap_or_else(|p| p.into_inner());
        if *readers == 0
            && let Err(e) = b.protect(memsec::Prot::ReadOnly)
        {
            drop(readers);
            panic!("cannot unseal secret memory: {e}");
        }
        *readers += 1;
        ReadWindow(b)
    }
}

impl Drop for ReadWindow<'_> {
    fn drop(&mut self) {
        let mut readers = self.0.readers.lock().unwrap_or_else(|p| p.into_inner());
        *readers = readers.saturating_sub(1);
        if *readers == 0 && self.0.protect(memsec::Prot::NoAccess).is_err() {
            tracing::error!("could not re-seal secret memory (mprotect PROT_NONE failed)");
        }
    }
}

struct SealOnDrop<'a>(&'a mut SecretBox);

impl Drop for SealOnDrop<'_> {
    fn drop(&mut self) {
        if self.0.protect(memsec::Prot::NoAccess).is_err() {
            tracing::error!("could not re-seal secret memory (mprotect PROT_NONE failed)");
        }
    }
}

impl Drop for SecretBox {
    fn drop(&mut self) {
        let _ = self.protect(memsec::Prot::ReadWrite);
        // SAFETY: the allocation is live and writable (just unsealed) for `cap` bytes; `memzero`
        // uses volatile writes so it is not optimised away. `free` then gets the pointer memsec
        // gave us, exactly once; memsec also munlocks (zeroing again) before releasing the pages.
        unsafe {
            memsec::memzero(self.ptr.as_ptr(), self.cap);
            memsec::free(self.ptr);
        }
    }
}

impl ConstantTimeEq for SecretBox {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.expose(|a| other.expose(|b| a.ct_eq(b)))
    }
}

impl PartialEq for SecretBox {
    fn eq(&self, other: &Self) -> bool {
        bool::from(ConstantTimeEq::ct_eq(self, other))
    }
}

impl Eq for SecretBox {}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_redaction() {
        let b = SecretBox::from_slice(b"hunter2-very-secret").unwrap();
        assert_eq!(b.len(), 19);
        assert!(b.expose(|x| x == b"hunter2-very-secret"));
        assert_eq!(format!("{b:?}"), "[redacted]");
        assert_eq!(format!("{b}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&b)), "Some([redacted])");
    }

    #[test]
    fn equality_is_by_content() {
        let a = SecretBox::from_slice(b"abc").unwrap();
        let b = a.try_clone().unwrap();
        let c = SecretBox::from_slice(b"abd").unwrap();
        let d = SecretBox::from_slice(b"ab").unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert!(a.ct_eq_bytes(b"abc"));
        assert!(!a.ct_eq_bytes(b"abcd"));
        // self-comparison nests two exposes of the same box
        assert_eq!(a, a);
    }

    #[test]
    fn random_is_random_and_sized() {
        let a = SecretBox::random(32).unwrap();
        let b = SecretBox::random(32).unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(!a.expose(|x| x.iter().all(|&v| v == 0)));
    }

    #[test]
    fn reader_limits_and_trim() {
        let mut b = SecretBox::from_reader(&b"value\r\n"[..], 64).unwrap();
        b.trim_trailing_newline();
        assert!(b.expose(|x| x == b"value"));
        let exact = SecretBox::from_reader(&b"12345678"[..], 8).unwrap();
        assert_eq!(exact.len(), 8);
        let err = SecretBox::from_reader(&b"123456789"[..], 8).unwrap_err();
        assert!(matches!(err, VaultError::TooLarge { max: 8, .. }), "{err}");
        let empty = SecretBox::from_reader(&b""[..], 8).unwrap();
        assert!(empty.is_empty());
        assert!(matches!(
            SecretBox::zeroed(MAX_SECRET_LEN + 1),
            Err(VaultError::TooLarge { .. })
        ));
    }

    #[test]
    fn concurrent_exposes_do_not_reseal_under_a_reader() {
        let b = std::sync::Arc::new(SecretBox::random(48).unwrap());
        let expected = b.try_clone().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                let e = expected.try_clone().unwrap();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        // a reseal racing this read would SIGSEGV the test binary
                        assert!(b.expose(|x| e.ct_eq_bytes(x)));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn expose_reseals_after_panic() {
        let b = SecretBox::from_slice(b"x").unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            b.expose(|_| panic!("boom"))
        }));
        assert!(r.is_err());
        assert_eq!(*b.readers.lock().unwrap(), 0);
        assert!(b.expose(|x| x == b"x"));
    }

    /// Child half of `sealed_memory_faults_on_access`: reads sealed memory and must die.
    #[test]
    fn sealed_child() {
        if std::env::var_os("TETHER_VAULT_SEALED_CHILD").is_none() {
            return;
        }
        let b = SecretBox::from_slice(b"sealed").unwrap();
        // SAFETY: deliberately reads PROT_NONE memory; the parent expects SIGSEGV.
        let v = unsafe { std::ptr::read_volatile(b.ptr.as_ptr()) };
        println!("READ-SUCCEEDED {v}");
    }

    #[test]
    fn sealed_memory_faults_on_access() {
        use std::os::unix::process::ExitStatusExt;
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "secret::tests::sealed_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TETHER_VAULT_SEALED_CHILD", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !stdout.contains("READ-SUCCEEDED"),
            "sealed memory was readable: {stdout}"
        );
        assert_eq!(
            out.status.signal(),
            Some(11),
            "expected SIGSEGV, got {:?}: {stdout}",
            out.status
        );
    }
}
