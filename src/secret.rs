//! The access token: a type that cannot be printed, and where it comes from.
//!
//! [`Token`] has no `Display` and a `Debug` that prints `**hidden**`, so no log
//! line, error or panic message can carry it by accident. [`TokenSource`] reads
//! it from the environment once, or from a file at every refresh, so a rotated
//! Kubernetes Secret takes effect without a restart.

use std::fmt;
use std::path::{Path, PathBuf};

/// Environment variable holding the token when no token file is given.
pub const TOKEN_ENV: &str = "FINOVY_ACCESS_TOKEN";

/// The request header that carries the token.
pub const TOKEN_HEADER: reqwest::header::HeaderName =
    reqwest::header::HeaderName::from_static("finovy-access-token");

/// Largest token file read: a token is a few dozen bytes; a larger file is a mistake.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// A secret string. Only [`Token::expose`] reveals it, for the request header.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token, trimming surrounding whitespace (files end with a newline).
    pub fn new(raw: &str) -> Result<Self, TokenError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(TokenError::Empty);
        }
        if trimmed.chars().any(|c| c.is_control()) {
            return Err(TokenError::Invalid);
        }
        // Copied from an `Authorization` header: the API wants the token alone.
        if trimmed.len() > 7 && trimmed[..7].eq_ignore_ascii_case("bearer ") {
            return Err(TokenError::Bearer);
        }
        Ok(Token(trimmed.to_string()))
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the token replaced by `**hidden**`.
    ///
    /// Upstream text (`msg`, `traceId`, bodies) passes through here before it is
    /// stored, logged or shown: an upstream that echoes the token back must not
    /// make us publish it.
    pub fn redact(&self, text: &str) -> String {
        text.replace(self.0.as_str(), "**hidden**")
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("**hidden**")
    }
}

/// Why no usable token could be had. Never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token is empty or only whitespace.
    #[error("the token is empty")]
    Empty,
    /// The token has characters a header cannot carry.
    #[error("the token contains control characters")]
    Invalid,
    /// The value starts with `Bearer `, as an `Authorization` header does.
    #[error("the value starts with 'Bearer ': give the token alone (it is sent in the Finovy-Access-Token header, not as a bearer token)")]
    Bearer,
    /// Neither a token file nor the environment variable is set.
    #[error("no token: set {TOKEN_ENV} or --api.token-file")]
    Missing,
    /// The token file could not be read.
    #[error("cannot read token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The token path is not a regular file (a FIFO, a device, a directory), or is
    /// too large: reading it could block a refresh forever or fill the memory.
    #[error("token file {path} is not a regular file of at most 64 KiB ({what}); point --api.token-file at the file holding the token")]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        what: &'static str,
    },
}

/// Where the token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A fixed token (from the environment, or made up for `--demo`).
    Fixed(Token),
    /// A file, read again at every refresh.
    File(PathBuf),
}

impl TokenSource {
    /// Picks the file when given, else the environment variable.
    pub fn from_config(file: Option<&Path>) -> Result<Self, TokenError> {
        match file {
            Some(path) => {
                let source = TokenSource::File(path.to_path_buf());
                source.current()?;
                Ok(source)
            }
            None => match std::env::var(TOKEN_ENV) {
                Ok(raw) => Ok(TokenSource::Fixed(Token::new(&raw)?)),
                Err(_) => Err(TokenError::Missing),
            },
        }
    }

    /// The token to use now (reads the file again when there is one).
    pub fn current(&self) -> Result<Token, TokenError> {
        match self {
            TokenSource::Fixed(token) => Ok(token.clone()),
            TokenSource::File(path) => Token::new(&read_token_file(path)?),
        }
    }

    /// True when the token file can be read by users other than its owner.
    pub fn readable_by_others(&self) -> bool {
        #[cfg(unix)]
        if let TokenSource::File(path) = self {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                return meta.permissions().mode() & 0o004 != 0;
            }
        }
        false
    }
}

/// Reads a token file without ever blocking on it: only a regular file is read.
///
/// Opening a FIFO with no writer waits for one, and reading a device may never end,
/// so the path's type is checked before it is opened, and once more on the open
/// file (a path swapped in between is caught there, before anything is read).
fn read_token_file(path: &Path) -> Result<String, TokenError> {
    use std::io::Read as _;
    let read_error = |source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    };
    check_regular(path, &std::fs::metadata(path).map_err(read_error)?)?;
    let file = std::fs::File::open(path).map_err(read_error)?;
    check_regular(path, &file.metadata().map_err(read_error)?)?;
    let mut raw = String::new();
    file.take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_string(&mut raw)
        .map_err(read_error)?;
    Ok(raw)
}

fn check_regular(path: &Path, meta: &std::fs::Metadata) -> Result<(), TokenError> {
    let kind = meta.file_type();
    let what = if kind.is_file() {
        if meta.len() <= MAX_TOKEN_FILE_BYTES {
            return Ok(());
        }
        "larger than 64 KiB"
    } else if kind.is_dir() {
        "a directory"
    } else if is_fifo(&kind) {
        "a FIFO"
    } else {
        "a special file"
    };
    Err(TokenError::NotRegular {
        path: path.to_path_buf(),
        what,
    })
}

fn is_fifo(kind: &std::fs::FileType) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        kind.is_fifo()
    }
    #[cfg(not(unix))]
    {
        let _ = kind;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_token() {
        let t = Token::new("  s3cr3t-value\n").unwrap();
        assert_eq!(t.expose(), "s3cr3t-value");
        assert_eq!(format!("{t:?}"), "**hidden**");
        let source = TokenSource::Fixed(t);
        assert!(!format!("{source:?}").contains("s3cr3t"));
    }

    #[test]
    fn empty_and_control_tokens_are_refused() {
        assert!(matches!(Token::new(" \n"), Err(TokenError::Empty)));
        assert!(matches!(Token::new("a\u{0}b"), Err(TokenError::Invalid)));
    }

    #[test]
    fn file_is_read_again_each_time() {
        let dir = std::env::temp_dir().join(format!("finovy-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "first\n").unwrap();
        let source = TokenSource::from_config(Some(&path)).unwrap();
        assert_eq!(source.current().unwrap().expose(), "first");
        std::fs::write(&path, "second").unwrap();
        assert_eq!(source.current().unwrap().expose(), "second");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_token_file_replaced_by_a_fifo_fails_at_once_instead_of_blocking() {
        let dir = std::env::temp_dir().join(format!("finovy-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        let made = std::process::Command::new("mkfifo").arg(&path).status();
        if !made.is_ok_and(|s| s.success()) {
            std::fs::remove_dir_all(&dir).unwrap();
            panic!("mkfifo is part of coreutils and must work here");
        }
        let err = TokenSource::File(path.clone()).current().unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");
        assert!(err.to_string().contains("token"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn redact_removes_every_copy_of_the_token() {
        let t = Token::new("s3cr3t").unwrap();
        assert_eq!(
            t.redact("bad token s3cr3t (s3cr3t)"),
            "bad token **hidden** (**hidden**)"
        );
    }
}
