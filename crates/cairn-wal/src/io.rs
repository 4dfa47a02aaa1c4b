//! File-system access behind a small trait, so tests can inject a failed fsync and simulate a
//! power cut.
//!
//! The WAL touches the disk only through [`WalIo`] and [`WalFile`]. [`StdIo`] is the real file
//! system; [`sim::SimIo`] is an in-memory one that remembers what was made durable and can
//! rebuild the disk image a power cut would leave (a killed process cannot test this: the
//! kernel's page cache survives it).

pub mod sim;

use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// An open segment file. Offsets are absolute.
pub trait WalFile: Send + Sync + Debug {
    /// The whole file.
    fn read_all(&self) -> io::Result<Vec<u8>>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the file's data (and its length) durable: `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends the file (not durable until [`WalFile::sync_data`]).
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// A directory of segment files.
pub trait WalIo: Send + Sync + Debug + 'static {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// File names (not paths) in `dir`.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates a new, empty file; fails if it exists. Its name is not durable until
    /// [`WalIo::sync_dir`].
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn WalFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn WalFile>>;
    /// Removes a file; not durable until [`WalIo::sync_dir`].
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes creations and removals in `dir` durable (fsync of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `dir`, held until the returned guard is dropped; fails with
    /// `io::ErrorKind::WouldBlock` while another holder (process or `Wal`) has it.
    fn lock_dir(&self, dir: &Path) -> io::Result<Box<dyn Debug + Send + Sync>>;
}

/// Name of the lock file [`StdIo`] creates in the log directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdIo;

#[derive(Debug)]
struct StdFile(File);

impl WalFile for StdFile {
    fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut data = Vec::new();
        (&self.0).read_to_end(&mut data)?;
        Ok(data)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl WalIo for StdIo {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Arc::new(StdFile(file)))
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Arc::new(StdFile(file)))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn lock_dir(&self, dir: &Path) -> io::Result<Box<dyn Debug + Send + Sync>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE_NAME))?;
        flock_exclusive_nonblocking(&file)?;
        Ok(Box::new(file))
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: released when the descriptor closes or the process dies, so a
/// crash never leaves the directory locked.
#[allow(unsafe_code)]
fn flock_exclusive_nonblocking(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `flock` takes a descriptor and flags, no pointers; `file` is borrowed, so the
    // descriptor stays open for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(io::Error::new(io::ErrorKind::WouldBlock, err))
    } else {
        Err(err)
    }
}
