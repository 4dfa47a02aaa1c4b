//! Poisoning: once an fsync has failed, nothing more may be acknowledged.
//!
//! A failed fsync may have dropped dirty pages (Linux marks them clean after reporting the
//! error once), so retrying it and acknowledging would lie. [`SyncGuardIo`] wraps the engine's
//! [`Io`] so that *every* failed `sync_data` or `sync_dir`, on any path (group commit, rotation,
//! segment creation, merge outputs, the merge commit file, hint files, directory syncs), poisons
//! the engine: writes, merges and hint writes refuse from then on with `Error::Poisoned`, and
//! only a reopen, which recovers from what is on disk, clears it. Reads go on.

use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cairn_io::{Io, IoFile};
use parking_lot::Mutex;

use crate::{Error, Result};

/// The engine's poison flag and the first reason it was set.
#[derive(Debug, Default)]
pub(crate) struct Poison {
    poisoned: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Poison {
    /// Sets the flag forever (the first reason is kept).
    pub fn set(&self, why: String) {
        let mut reason = self.reason.lock();
        if reason.is_none() {
            tracing::error!(reason = %why, "storage engine poisoned; refusing further writes");
            *reason = Some(why);
        }
        self.poisoned.store(true, Ordering::Release);
    }

    /// `Err(Poisoned)` once set.
    pub fn check(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            let why = self.reason.lock().clone().unwrap_or_default();
            return Err(Error::Poisoned(why));
        }
        Ok(())
    }
}

/// An [`Io`] whose failed syncs poison the engine.
#[derive(Debug)]
pub(crate) struct SyncGuardIo {
    inner: Arc<dyn Io>,
    poison: Arc<Poison>,
}

impl SyncGuardIo {
    pub fn new(inner: Arc<dyn Io>, poison: Arc<Poison>) -> SyncGuardIo {
        SyncGuardIo { inner, poison }
    }

    fn wrap(&self, file: Arc<dyn IoFile>, path: &Path) -> Arc<dyn IoFile> {
        Arc::new(SyncGuardFile {
            inner: file,
            poison: self.poison.clone(),
            path: path.to_path_buf(),
        })
    }
}

impl Io for SyncGuardIo {
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        Ok(self.wrap(self.inner.create(path)?, path))
    }
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        Ok(self.wrap(self.inner.create_new(path)?, path))
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        Ok(self.wrap(self.inner.open(path)?, path))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.remove_dir(dir)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir).inspect_err(|e| {
            self.poison
                .set(format!("fsync of directory {} failed: {e}", dir.display()));
        })
    }
    fn lock_dir(&self, dir: &Path) -> io::Result<Box<dyn Debug + Send + Sync>> {
        self.inner.lock_dir(dir)
    }
}

#[derive(Debug)]
struct SyncGuardFile {
    inner: Arc<dyn IoFile>,
    poison: Arc<Poison>,
    path: PathBuf,
}

impl IoFile for SyncGuardFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data().inspect_err(|e| {
            self.poison
                .set(format!("fdatasync of {} failed: {e}", self.path.display()));
        })
    }
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.start_writeback(offset, len)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn read_all(&self) -> io::Result<Vec<u8>> {
        self.inner.read_all()
    }
}
