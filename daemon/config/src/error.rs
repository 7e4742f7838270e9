use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a configuration, located as precisely as we can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `control.roles.admin`; empty for file-level problems (syntax errors).
    pub key: String,
    /// 1-based line in the file, when the problem comes from a file and the key could be found.
    pub line: Option<usize>,
    /// What is wrong and, where it helps, what would be right.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.key.is_empty(), self.line) {
            (true, Some(line)) => write!(f, "line {line}: {}", self.message),
            (true, None) => write!(f, "{}", self.message),
            (false, Some(line)) => write!(f, "{} (line {line}): {}", self.key, self.message),
            (false, None) => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file exists in name only: it could not be read (missing, permissions, not UTF-8).
    #[error("cannot read config file {}: {source}; check the path and that tetherd may read it", path.display())]
    Read {
        /// The file we tried to read.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The config (or policy) file is a FIFO, socket, device or directory: only regular files
    /// are read, so a file that never ends or never answers cannot hang or exhaust the daemon.
    #[error("config file {} is {kind}, not a regular file; point the config at a regular file (a symlink to one is fine)", path.display())]
    NotRegularFile {
        /// The file named in the config or on the command line.
        path: PathBuf,
        /// What it is instead ("a FIFO (named pipe)", "a character device", ...).
        kind: &'static str,
    },
    /// The file is larger than any real config or policy file.
    #[error("config file {} is larger than {limit} bytes; is it the right file?", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// The config was read but has one or more problems; each names its key (and line).
    #[error("{} in {origin}:\n{}", plural(problems.len()), list(problems))]
    Invalid {
        /// Where the config came from (a file path, or "environment and flags").
        origin: String,
        /// Every problem found, in file order where known.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The individual problems (empty for a read error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

fn plural(n: usize) -> String {
    if n == 1 {
        "1 configuration problem".to_owned()
    } else {
        format!("{n} configuration problems")
    }
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}
