//! A failed fsync poisons the engine: that write and every later one fail, nothing more is
//! acknowledged, reads keep working.

use std::fmt::Debug;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cairn_storage::io::{Io, IoFile, StdIo};
use cairn_storage::{Engine, Error, Options};

/// Real files, with fsync failing on demand.
#[derive(Debug, Clone, Default)]
struct FlakyIo {
    fail_sync: Arc<AtomicBool>,
}

#[derive(Debug)]
struct FlakyFile {
    inner: Arc<dyn IoFile>,
    fail_sync: Arc<AtomicBool>,
}

impl IoFile for FlakyFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected EIO"));
        }
        self.inner.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

impl FlakyIo {
    fn wrap(&self, f: Arc<dyn IoFile>) -> Arc<dyn IoFile> {
        Arc::new(FlakyFile {
            inner: f,
            fail_sync: self.fail_sync.clone(),
        })
    }
}

impl Io for FlakyIo {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        StdIo.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        StdIo.list_dir(dir)
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        Ok(self.wrap(StdIo.create(path)?))
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        Ok(self.wrap(StdIo.open(path)?))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdIo.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        StdIo.remove(path)
    }
    fn exists(&self, path: &Path) -> bool {
        StdIo.exists(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        StdIo.sync_dir(dir)
    }
    fn lock_dir(&self, dir: &Path) -> io::Result<Box<dyn Debug + Send + Sync>> {
        StdIo.lock_dir(dir)
    }
}

#[test]
fn failed_fsync_poisons_forever() {
    let dir = tempfile::tempdir().unwrap();
    let io = FlakyIo::default();
    let engine =
        Engine::open_with_io(dir.path(), Options::default(), Arc::new(io.clone())).unwrap();
    engine.put(b"before", b"1").unwrap();
    io.fail_sync.store(true, Ordering::SeqCst);
    assert!(matches!(
        engine.put(b"during", b"2"),
        Err(Error::Poisoned(_))
    ));
    io.fail_sync.store(false, Ordering::SeqCst);
    // The disk "recovered", but the engine must not pretend nothing happened.
    assert!(matches!(
        engine.put(b"after", b"3"),
        Err(Error::Poisoned(_))
    ));
    assert!(matches!(engine.sync(), Err(Error::Poisoned(_))));
    assert!(matches!(engine.merge(), Err(Error::Poisoned(_))));
    assert_eq!(engine.get(b"before").unwrap().as_deref(), Some(&b"1"[..]));
    assert!(engine.close().is_err());
    // A fresh open recovers what is on disk.
    let engine = Engine::open(dir.path(), Options::default()).unwrap();
    assert_eq!(engine.get(b"before").unwrap().as_deref(), Some(&b"1"[..]));
    engine.put(b"again", b"4").unwrap();
}
