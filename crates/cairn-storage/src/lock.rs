//! The directory lock: stops a second process (or a second `Engine` in this one) from opening
//! the same data directory, which would interleave appends and destroy both.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Name of the lock file inside the data directory.
pub(crate) const LOCK_FILE_NAME: &str = "LOCK";

/// Holds an exclusive `flock` on `<dir>/LOCK` until dropped (closing the descriptor releases
/// it; the kernel also releases it when the process dies, so a crash never leaves it stuck).
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock without blocking; `io::ErrorKind::WouldBlock` when someone holds it.
    pub(crate) fn acquire(dir: &Path) -> io::Result<DirLock> {
        let path = dir.join(LOCK_FILE_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        flock_exclusive_nonblocking(&file)?;
        Ok(DirLock { _file: file, path })
    }

    #[allow(dead_code)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[allow(unsafe_code)]
fn flock_exclusive_nonblocking(file: &File) -> io::Result<()> {
    // SAFETY: `flock` takes a file descriptor and flags, no pointers; the descriptor is valid
    // for the duration of the call because `file` is borrowed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Err(io::Error::new(io::ErrorKind::WouldBlock, err))
        } else {
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_fails_until_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }
}
