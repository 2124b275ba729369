//! The crate's error type: every error names the file (or input) it is about and what is wrong.

use std::fmt::Display;
use std::path::Path;

/// What went wrong, with the file or input it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error while reading or writing `path`.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder concerned.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `path` was read but its content is invalid.
    #[error("{path}: {msg}")]
    Format {
        /// The file (or input name) concerned.
        path: String,
        /// What is wrong with it.
        msg: String,
    },
    /// Any other error, already phrased for the user.
    #[error("{0}")]
    Msg(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }

    /// Invalid content in `path` (a file path or an input's name).
    pub fn format(path: impl Display, msg: impl Display) -> Self {
        Error::Format { path: path.to_string(), msg: msg.to_string() }
    }

    /// A free-form error message.
    pub fn msg(msg: impl Display) -> Self {
        Error::Msg(msg.to_string())
    }
}
