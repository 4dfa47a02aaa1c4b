//! `cairn-io`: the one file-system seam under every part of Cairn that touches the disk.
//!
//! The storage engine, the write-ahead log and the node's data directory reach the disk only
//! through [`Io`] and [`IoFile`]. [`StdIo`] is the real file system; [`sim::SimIo`] is a
//! simulated disk that keeps, for every file *and every directory*, what was written and what
//! was made durable, so a test can cut the power at any moment (even in the middle of a write
//! or an fsync) and get back exactly the disk a real power cut may leave, or make any single
//! call fail. A SIGKILL test cannot do this: the kernel's page cache outlives the process.
//!
//! The durability contract the trait states, and the simulator enforces, is strict POSIX (the
//! model Jepsen's LazyFS uses):
//! - a file's bytes and length are durable only after [`IoFile::sync_data`] returns `Ok`;
//! - a directory entry (a file or directory created, renamed or removed in it) is durable only
//!   after [`Io::sync_dir`] of that directory returns `Ok`: fsyncing a file does *not* make its
//!   name durable, and creating a directory does not make it survive until its parent is synced;
//! - after a failed fsync nothing is known about the data it covered.
//!
//! Architecture invariant: this crate knows nothing of records, logs or engines; it is the
//! lowest layer and depends on no other Cairn crate.

pub mod sim;

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path};
use std::sync::Arc;

/// Name of the lock file [`StdIo::lock_dir`] creates in a locked directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// An open file. Offsets are absolute; every method takes `&self`, so one handle serves
/// concurrent readers and a single appender.
pub trait IoFile: Send + Sync + Debug {
    /// Reads exactly `buf.len()` bytes at `offset` (an `UnexpectedEof` error if the file is
    /// shorter).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, growing the file if needed. Not durable until
    /// [`IoFile::sync_data`].
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the file's bytes and length durable (`fdatasync`). Not its name: see
    /// [`Io::sync_dir`].
    fn sync_data(&self) -> io::Result<()>;
    /// Starts writing `len` bytes at `offset` back to the disk, without waiting for it
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). A hint that spreads the disk's work: it
    /// makes nothing durable, so a later [`IoFile::sync_data`] has less to flush and holds
    /// up the other writers of the disk for less long. No default: a wrapper that forgot
    /// to pass it on would silently drop it (the engine's fsync guard once did).
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Truncates or extends (with zeros) the file. Not durable until [`IoFile::sync_data`].
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The whole file.
    fn read_all(&self) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.len()?)
            .map_err(|_| io::Error::other("file too large to read into memory"))?;
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }
}

/// A file system. Every change to a directory (create, create_dir, rename, remove) is durable
/// only once [`Io::sync_dir`] of the directory holding the entry returns `Ok`.
pub trait Io: Send + Sync + Debug + 'static {
    /// Creates one directory; its parent must exist. `AlreadyExists` if the name is taken.
    fn create_dir(&self, dir: &Path) -> io::Result<()>;
    /// File and directory names (not paths) in `dir`, in no particular order.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates a file, or truncates an existing one, for reading and writing.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn IoFile>>;
    /// Creates a new, empty file; `AlreadyExists` if the name is taken.
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn IoFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn IoFile>>;
    /// Atomically renames the file `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether `path` names a file or directory.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Makes the entries of `dir` (creations, renames, removals) durable: fsync of the
    /// directory.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `dir`, held until the returned guard is dropped. Fails with
    /// `WouldBlock` while another holder (a process, or another handle in this one) has it.
    fn lock_dir(&self, dir: &Path) -> io::Result<Box<dyn Debug + Send + Sync>>;
}

/// Creates `dir` and any missing ancestors, durably: after each directory it creates it
/// fsyncs that directory's parent, and it always fsyncs the parent of `dir` itself, so an
/// entry left unsynced by an earlier run that was killed between `mkdir` and the fsync becomes
/// durable now. Returns whether `dir` was created.
pub fn create_dir_all_durable(io: &dyn Io, dir: &Path) -> io::Result<bool> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at {
        if path.as_os_str().is_empty() || io.exists(path)? {
            break;
        }
        missing.push(path);
        at = path.parent();
    }
    let created = !missing.is_empty();
    for path in missing.iter().rev() {
        match io.create_dir(path) {
            Ok(()) => {}
            // Lost a race with another creator: the entry exists, the sync below covers it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        io.sync_dir(parent_dir(path))?;
    }
    if !created {
        io.sync_dir(parent_dir(dir))?;
    }
    Ok(created)
}

/// Writes `bytes` to `path` atomically and durably: a temporary file in the same directory,
/// fsynced, renamed over `path`, then the directory fsynced. After a crash `path` holds either
/// its old contents or `bytes`, never a mix.
pub fn write_file_atomic(io: &dyn Io, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let file = io.create(&tmp)?;
    file.write_all_at(bytes, 0)?;
    file.sync_data()?;
    drop(file);
    io.rename(&tmp, path)?;
    io.sync_dir(parent_dir(path))
}

/// Removes `dir`, the files in it and its subdirectories, then fsyncs the parent of `dir` so
/// that the removal is durable. A missing `dir` is not an error. A power cut part-way leaves
/// some of the tree, which the caller must be ready to find (and remove again) at its next
/// start.
pub fn remove_dir_all_durable(io: &dyn Io, dir: &Path) -> io::Result<()> {
    remove_tree(io, dir)?;
    io.sync_dir(parent_dir(dir))
}

fn remove_tree(io: &dyn Io, dir: &Path) -> io::Result<()> {
    let names = match io.list_dir(dir) {
        Ok(names) => names,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in names {
        let path = dir.join(&name);
        match io.remove(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Not a file: a directory (the error kind differs between systems).
            Err(_) => remove_tree(io, &path)?,
        }
    }
    match io.remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Whether `path` has a `..` component (the simulator refuses those).
fn has_parent_component(path: &Path) -> bool {
    path.components().any(|c| c == Component::ParentDir)
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdIo;

#[derive(Debug)]
struct StdFile(File);

impl IoFile for StdFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    #[allow(unsafe_code)]
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Ok(());
        };
        // SAFETY: `sync_file_range` takes a descriptor, offsets and flags, no pointers; the
        // file is borrowed, so the descriptor stays open for the call.
        let rc = unsafe {
            libc::sync_file_range(self.0.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl Io for StdIo {
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Arc::new(StdFile(f)))
    }
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Arc::new(StdFile(f)))
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Arc::new(StdFile(f)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::remove_dir(dir)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
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
        Ok(Box::new(DirLock(file)))
    }
}

/// Holds an exclusive `flock` until dropped. The kernel releases it when the descriptor closes
/// or the process dies, so a crash never leaves a directory locked.
#[derive(Debug)]
struct DirLock(#[allow(dead_code)] File);

/// `flock(LOCK_EX | LOCK_NB)`, with `EWOULDBLOCK` as `io::ErrorKind::WouldBlock`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn std_lock_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = StdIo.lock_dir(dir.path()).unwrap();
        let err = StdIo.lock_dir(dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(first);
        StdIo.lock_dir(dir.path()).unwrap();
    }

    #[test]
    fn std_create_dir_all_durable_and_atomic_write() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        assert!(create_dir_all_durable(&StdIo, &deep).unwrap());
        assert!(!create_dir_all_durable(&StdIo, &deep).unwrap());
        let file = deep.join("f");
        write_file_atomic(&StdIo, &file, b"one").unwrap();
        write_file_atomic(&StdIo, &file, b"two").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"two");
        assert_eq!(StdIo.list_dir(&deep).unwrap(), vec!["f".to_string()]);
    }

    /// The write-behind hint reaches the kernel (a bad range is refused there, so the call
    /// is not a no-op) and leaves the file's bytes as they were.
    #[test]
    fn std_start_writeback_is_a_hint_the_kernel_takes() {
        let dir = tempfile::tempdir().unwrap();
        let file = StdIo.create(&dir.path().join("f")).unwrap();
        let data = vec![7u8; 2 << 20];
        file.write_all_at(&data, 0).unwrap();
        file.start_writeback(0, data.len() as u64).unwrap();
        file.start_writeback(1 << 20, 4096).unwrap();
        let err = file
            .start_writeback(u64::MAX >> 1, u64::MAX >> 1)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        assert_eq!(file.read_all().unwrap(), data);
    }

    #[test]
    fn parent_dir_of_a_bare_name_is_dot() {
        assert_eq!(parent_dir(Path::new("x")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/a/x")), Path::new("/a"));
        assert!(has_parent_component(Path::new("/a/../b")));
    }
}
