//! Reading a file the configuration names (the accounts file, a token or secret
//! file, a TLS certificate or key), bounded.
//!
//! Only a regular file (or a link to one) is read, and at most a given size: a
//! FIFO would block the start, or a reload worker for good, and a device such as
//! `/dev/zero` would fill the memory. The path's kind is checked before it is
//! opened, since opening a FIFO already blocks, and once more on the open file,
//! so that a path swapped in between is caught before anything is read.

use std::io::Read as _;
use std::path::Path;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It could not be opened or read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// It is not a regular file.
    #[error("not a regular file ({0})")]
    NotRegular(
        /// `a directory`, `a FIFO` or `a special file`.
        &'static str,
    ),
    /// It holds more than the bytes allowed.
    #[error("larger than the {0} bytes allowed")]
    TooLarge(u64),
}

impl From<FileError> for std::io::Error {
    fn from(err: FileError) -> Self {
        match err {
            FileError::Io(err) => err,
            other => std::io::Error::new(std::io::ErrorKind::InvalidInput, other.to_string()),
        }
    }
}

/// The whole of the regular file at `path`, if it holds at most `max` bytes.
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    check(&std::fs::metadata(path)?, max)?;
    let file = std::fs::File::open(path)?;
    check(&file.metadata()?, max)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        // It grew after it was checked.
        return Err(FileError::TooLarge(max));
    }
    Ok(bytes)
}

fn check(meta: &std::fs::Metadata, max: u64) -> Result<(), FileError> {
    let kind = meta.file_type();
    let what = if kind.is_file() {
        if meta.len() <= max {
            return Ok(());
        }
        return Err(FileError::TooLarge(max));
    } else if kind.is_dir() {
        "a directory"
    } else if is_fifo(&kind) {
        "a FIFO"
    } else {
        "a special file"
    };
    Err(FileError::NotRegular(what))
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
    fn a_device_a_directory_or_a_large_file_is_refused_by_its_kind_or_size() {
        let what = |path: &Path, max| match read_regular(path, max) {
            Err(FileError::NotRegular(what)) => what,
            Err(FileError::TooLarge(_)) => "too large",
            other => panic!("{}: {other:?}", path.display()),
        };
        assert_eq!(what(Path::new("/dev/zero"), 10), "a special file");
        assert_eq!(what(&std::env::temp_dir(), 10), "a directory");
        let dir = std::env::temp_dir().join(format!("finovy-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("eleven");
        std::fs::write(&file, "eleven byte").unwrap();
        assert_eq!(what(&file, 10), "too large");
        assert_eq!(read_regular(&file, 11).unwrap(), b"eleven byte");
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo (coreutils) failed");
        // Opening it would block: it must be refused before.
        assert_eq!(what(&fifo, 10), "a FIFO");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
