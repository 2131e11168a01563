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
        Ok(Token(trimmed.to_string()))
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
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
}

/// Where the token comes from.
#[derive(Debug, Clone)]
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
            TokenSource::File(path) => {
                let raw = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
                    path: path.clone(),
                    source,
                })?;
                Token::new(&raw)
            }
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
}
