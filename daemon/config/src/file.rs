//! Reading config and policy files safely: only regular files, never more than
//! [`MAX_CONFIG_FILE_BYTES`], and never blocking on a FIFO or device (the file is opened
//! non-blocking and checked with `fstat` before a byte is read).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::OFlag;

use crate::ConfigError;

/// The largest config or policy file `tetherd` reads (4 MiB). Real files are a few KiB; the
/// bound keeps a file that is (or links to) something endless from exhausting memory.
pub const MAX_CONFIG_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Reads `path` as UTF-8 text if it is a regular file (symlinks to regular files are fine)
/// of at most [`MAX_CONFIG_FILE_BYTES`]. A FIFO, socket or device is refused at once, naming
/// the file and what it is; opening never blocks.
pub fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    let io = |source: std::io::Error| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let ft = meta.file_type();
    if !ft.is_file() {
        return Err(ConfigError::NotRegularFile {
            path: path.to_path_buf(),
            kind: kind_of(&ft),
        });
    }
    if meta.len() > MAX_CONFIG_FILE_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_CONFIG_FILE_BYTES,
        });
    }
    read_bounded(file, path)
}

/// Reads at most the limit (the file may grow between `fstat` and `read`).
fn read_bounded(file: File, path: &Path) -> Result<String, ConfigError> {
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_CONFIG_FILE_BYTES,
        });
    }
    String::from_utf8(bytes).map_err(|e| ConfigError::Read {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not UTF-8 text (first bad byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        ),
    })
}

fn kind_of(ft: &std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_symlink_to_dev_zero_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("tetherd.toml");
        std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
        let err = read_config_file(&link).expect_err("a device");
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::NotRegularFile { .. }), "{msg}");
        assert!(msg.contains(&link.display().to_string()), "{msg}");
        assert!(msg.contains("character device"), "{msg}");
        // The same through every public entry point.
        assert!(crate::check_file(&link).is_err());
        assert!(crate::load(Some(&link), &crate::Overrides::default()).is_err());
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("tetherd.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let t0 = Instant::now();
        let err =
            crate::load_for_reload(Some(&fifo), &crate::Overrides::default()).expect_err("a FIFO");
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t0.elapsed()
        );
        let msg = err.to_string();
        assert!(
            msg.contains("FIFO") && msg.contains(&fifo.display().to_string()),
            "{msg}"
        );
    }

    #[test]
    fn directories_and_oversized_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = read_config_file(dir.path()).expect_err("a directory");
        assert!(err.to_string().contains("directory"), "{err}");
        let big = dir.path().join("big.toml");
        let f = File::create(&big).expect("create");
        f.set_len(MAX_CONFIG_FILE_BYTES + 1).expect("set_len");
        let err = read_config_file(&big).expect_err("too large");
        assert!(matches!(err, ConfigError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("big.toml"), "{err}");
        let ok = dir.path().join("ok.toml");
        std::fs::write(&ok, "role = \"hub\"\n").expect("write");
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&ok, &link).expect("symlink");
        assert_eq!(
            read_config_file(&link).expect("regular via symlink"),
            "role = \"hub\"\n"
        );
    }

    #[test]
    fn a_policy_file_that_is_a_device_is_a_policy_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("policy.toml");
        std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
        let text = format!("role = \"hub\"\npolicy_file = \"{}\"\n", link.display());
        let err = crate::check_str(&text, "x").expect_err("device policy");
        assert!(err.to_string().contains("character device"), "{err}");
    }
}
