//! The library's error type.
//!
//! Every error that comes from user data names the file (and where useful the line, record or
//! tensor) and says what is wrong, so the CLI can print it as is. The split between
//! [`Error::Input`] and [`Error::Check`] decides the exit code: bad input or usage is 2, a check
//! that ran and failed is 1.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that cannot be used: a missing file, a malformed record, an impossible option.
    #[error("{0}")]
    Input(String),
    /// A check that ran to completion and found a mismatch.
    #[error("{0}")]
    Check(String),
    /// A failure that is neither bad input nor a failed check (a compute backend error).
    #[error("{0}")]
    Other(String),
    /// An I/O failure while reading or writing a named file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn input(msg: impl Into<String>) -> Self {
        Error::Input(msg.into())
    }

    /// An input error about one file: "`path`: msg".
    pub fn in_file(path: &Path, msg: impl std::fmt::Display) -> Self {
        Error::Input(format!("{}: {msg}", path.display()))
    }

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Process exit code for this error: 1 for a failed check, 2 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Check(_) => 1,
            Error::Input(_) | Error::Other(_) | Error::Io { .. } => 2,
        }
    }
}

/// Attach a file path to I/O results.
pub trait IoContext<T> {
    fn with_path(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn with_path(self, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
