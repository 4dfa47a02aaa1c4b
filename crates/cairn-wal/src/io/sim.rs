//! An in-memory file system for crash tests: it keeps, per file, the bytes written and the
//! bytes made durable by `sync_data`, and per directory the names made durable by `sync_dir`.
//! [`SimIo::power_cut`] returns the disk a power failure would leave behind; faults can be
//! injected into the next write or fsync.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{WalFile, WalIo};

/// One simulated file.
#[derive(Debug, Clone, Default)]
struct SimFile {
    /// What a reader sees now.
    data: Vec<u8>,
    /// What survives a power cut (as of the last `sync_data`).
    durable: Vec<u8>,
    /// Whether the file currently has a name (false once removed).
    linked: bool,
}

#[derive(Debug, Default)]
struct SimState {
    files: BTreeMap<PathBuf, SimFile>,
    /// Names that survive a power cut (as of the last `sync_dir` of their directory).
    durable_names: BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
    /// Directories locked by a live guard (a power cut releases them all).
    locked: BTreeSet<PathBuf>,
    fail_next_sync: bool,
    fail_next_write: bool,
    syncs: u64,
    /// How long each `sync_data` takes (a slow disk makes group commit visible).
    sync_delay: std::time::Duration,
}

/// A simulated disk. Clones share the same disk.
#[derive(Clone, Default)]
pub struct SimIo {
    state: Arc<Mutex<SimState>>,
}

impl fmt::Debug for SimIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimIo").finish_non_exhaustive()
    }
}

/// What a power cut keeps of the bytes written after the last `sync_data` of each file.
///
/// The unsynced bytes are everything from the first byte that differs between the file now and
/// its durable image to the end of the longer of the two: appends (the file grew, including by
/// `set_len`) and overwrites of bytes the file already had (writes into a preallocated,
/// zero-filled tail) alike. Where an unsynced write does not survive, the durable content stays
/// (zeros beyond the durable length); an unsynced truncation survives only if the whole unsynced
/// range does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerCut {
    /// Nothing: only synced data survives.
    DropUnsynced,
    /// A prefix of the unsynced bytes, `kept_per_mille` thousandths of them (a torn write); a
    /// grown file keeps only the length that prefix reaches.
    KeepPrefix {
        /// 0..=1000.
        kept_per_mille: u32,
    },
    /// Each unsynced sector independently kept or lost (zeros), as when the disk writes pages
    /// out of order: a later part of a write can survive while an earlier part is lost.
    KeepSectors {
        /// Chooses which sectors survive.
        seed: u64,
        /// Sector size, such as 512 or 4096.
        sector_bytes: usize,
    },
}

/// The bytes of a file with durable image `durable` and current content `data` after a power
/// cut (see [`PowerCut`]).
fn after_power_cut(durable: &[u8], data: &[u8], mode: PowerCut) -> Vec<u8> {
    let start = durable
        .iter()
        .zip(data)
        .position(|(old, new)| old != new)
        .unwrap_or(durable.len().min(data.len()));
    let unsynced = data.len().max(durable.len()) - start;
    match mode {
        _ if unsynced == 0 => durable.to_vec(),
        PowerCut::DropUnsynced => durable.to_vec(),
        PowerCut::KeepPrefix { kept_per_mille } => {
            let kept = unsynced * kept_per_mille.min(1000) as usize / 1000;
            let mut out = data[..(start + kept).min(data.len())].to_vec();
            if out.len() < durable.len() && kept < unsynced {
                out.extend_from_slice(&durable[out.len()..]);
            }
            out
        }
        PowerCut::KeepSectors { seed, sector_bytes } => {
            let sector_bytes = sector_bytes.max(1);
            let len = data.len().max(durable.len());
            let mut out = durable.to_vec();
            out.resize(len, 0);
            let mut at = start;
            while at < len {
                let end = ((at / sector_bytes + 1) * sector_bytes).min(len);
                let new_end = end.min(data.len());
                if sector_survives(seed, at / sector_bytes) && at < new_end {
                    out[at..new_end].copy_from_slice(&data[at..new_end]);
                }
                at = end;
            }
            out
        }
    }
}

/// Whether sector number `sector` survives, as a deterministic function of `seed`.
fn sector_survives(seed: u64, sector: usize) -> bool {
    let mut x = seed ^ (sector as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    x & 1 == 1
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} failure"))
}

impl SimIo {
    /// An empty disk.
    pub fn new() -> SimIo {
        SimIo::default()
    }

    /// The next `sync_data` or `sync_dir` fails (once), and its data is not made durable.
    pub fn fail_next_sync(&self) {
        self.state.lock().fail_next_sync = true;
    }

    /// The next `write_all_at` fails (once) after writing half of its bytes.
    pub fn fail_next_write(&self) {
        self.state.lock().fail_next_write = true;
    }

    /// Makes every later `sync_data` take `delay`, like a real disk's flush.
    pub fn set_sync_delay(&self, delay: std::time::Duration) {
        self.state.lock().sync_delay = delay;
    }

    /// Number of successful `sync_data` and `sync_dir` calls so far.
    pub fn syncs(&self) -> u64 {
        self.state.lock().syncs
    }

    /// The disk a power cut would leave now: durable names with their durable bytes plus, as
    /// `mode` says, part of their unsynced bytes. This disk is left untouched.
    pub fn power_cut(&self, mode: PowerCut) -> SimIo {
        let state = self.state.lock();
        let mut files = BTreeMap::new();
        for path in &state.durable_names {
            let Some(file) = state.files.get(path) else {
                continue;
            };
            let data = after_power_cut(&file.durable, &file.data, mode);
            files.insert(
                path.clone(),
                SimFile {
                    durable: data.clone(),
                    data,
                    linked: true,
                },
            );
        }
        let durable_names = files.keys().cloned().collect();
        SimIo {
            state: Arc::new(Mutex::new(SimState {
                files,
                durable_names,
                dirs: state.dirs.clone(),
                ..SimState::default()
            })),
        }
    }

    /// The current bytes of a file (tests use it to damage files).
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.state.lock();
        state
            .files
            .get(path)
            .filter(|f| f.linked)
            .map(|f| f.data.clone())
    }

    /// Replaces a file's bytes, durably (tests use it to damage files).
    pub fn set_file_bytes(&self, path: &Path, bytes: Vec<u8>) {
        let mut state = self.state.lock();
        let file = state.files.entry(path.to_path_buf()).or_default();
        file.data = bytes.clone();
        file.durable = bytes;
        file.linked = true;
        state.durable_names.insert(path.to_path_buf());
    }
}

#[derive(Debug)]
struct SimHandle {
    state: Arc<Mutex<SimState>>,
    path: PathBuf,
}

impl SimHandle {
    fn with<T>(&self, f: impl FnOnce(&mut SimState, &PathBuf) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.state.lock();
        match state.files.get(&self.path) {
            Some(file) if file.linked => f(&mut state, &self.path),
            _ => Err(io::Error::new(io::ErrorKind::NotFound, "file was removed")),
        }
    }
}

fn file_mut<'a>(state: &'a mut SimState, path: &PathBuf) -> &'a mut SimFile {
    state
        .files
        .get_mut(path)
        .expect("checked by SimHandle::with")
}

impl WalFile for SimHandle {
    fn read_all(&self) -> io::Result<Vec<u8>> {
        self.with(|state, path| Ok(file_mut(state, path).data.clone()))
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with(|state, path| {
            let fail = std::mem::take(&mut state.fail_next_write);
            let buf = if fail { &buf[..buf.len() / 2] } else { buf };
            let file = file_mut(state, path);
            let end = offset as usize + buf.len();
            if file.data.len() < end {
                file.data.resize(end, 0);
            }
            file.data[offset as usize..end].copy_from_slice(buf);
            if fail { Err(injected("write")) } else { Ok(()) }
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|state, path| {
            if std::mem::take(&mut state.fail_next_sync) {
                return Err(injected("fsync"));
            }
            state.syncs += 1;
            std::thread::sleep(state.sync_delay);
            let file = file_mut(state, path);
            file.durable = file.data.clone();
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|state, path| {
            file_mut(state, path).data.resize(len as usize, 0);
            Ok(())
        })
    }
}

/// Holds a [`SimIo`] directory lock until dropped.
#[derive(Debug)]
struct SimLock {
    state: Arc<Mutex<SimState>>,
    dir: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.state.lock().locked.remove(&self.dir);
    }
}

impl WalIo for SimIo {
    fn lock_dir(&self, dir: &Path) -> io::Result<Box<dyn fmt::Debug + Send + Sync>> {
        if !self.state.lock().locked.insert(dir.to_path_buf()) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "directory is locked",
            ));
        }
        Ok(Box::new(SimLock {
            state: self.state.clone(),
            dir: dir.to_path_buf(),
        }))
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.state.lock().dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.state.lock();
        if !state.dirs.contains(dir) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"));
        }
        Ok(state
            .files
            .iter()
            .filter(|(path, file)| file.linked && path.parent() == Some(dir))
            .filter_map(|(path, _)| path.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        let mut state = self.state.lock();
        if state.files.get(path).is_some_and(|f| f.linked) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
        }
        state.files.insert(
            path.to_path_buf(),
            SimFile {
                linked: true,
                ..SimFile::default()
            },
        );
        Ok(Arc::new(SimHandle {
            state: self.state.clone(),
            path: path.to_path_buf(),
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        let state = self.state.lock();
        if !state.files.get(path).is_some_and(|f| f.linked) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such file"));
        }
        Ok(Arc::new(SimHandle {
            state: self.state.clone(),
            path: path.to_path_buf(),
        }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        match state.files.get_mut(path) {
            Some(file) if file.linked => {
                file.linked = false;
                Ok(())
            }
            _ => Err(io::Error::new(io::ErrorKind::NotFound, "no such file")),
        }
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        if std::mem::take(&mut state.fail_next_sync) {
            return Err(injected("directory fsync"));
        }
        state.syncs += 1;
        let in_dir: Vec<(PathBuf, bool)> = state
            .files
            .iter()
            .filter(|(path, _)| path.parent() == Some(dir))
            .map(|(path, file)| (path.clone(), file.linked))
            .collect();
        for (path, linked) in in_dir {
            if linked {
                state.durable_names.insert(path);
            } else {
                state.durable_names.remove(&path);
                state.files.remove(&path);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_cut_tears_appends_overwrites_and_truncations() {
        let keep = |kept_per_mille| PowerCut::KeepPrefix { kept_per_mille };
        // An append: a prefix of the new bytes, the file only as long as what was kept.
        assert_eq!(after_power_cut(b"ab", b"abcdef", keep(500)), b"abcd");
        // An overwrite of a zero-filled tail: a prefix of the new bytes, the length unchanged.
        assert_eq!(
            after_power_cut(&[1, 0, 0, 0, 0], &[1, 7, 7, 7, 7], keep(500)),
            [1, 7, 7, 0, 0]
        );
        assert_eq!(
            after_power_cut(&[1, 0, 0, 0], &[1, 7, 7, 7], PowerCut::DropUnsynced),
            [1, 0, 0, 0]
        );
        // An unsynced truncation after a write: lost unless everything is kept.
        assert_eq!(after_power_cut(b"abc000", b"abcS", keep(250)), b"abc000");
        assert_eq!(after_power_cut(b"abc000", b"abcS", keep(1000)), b"abcS");
        // Sectors: each changed sector is new or old (zeros beyond the durable length).
        let sectors = PowerCut::KeepSectors {
            seed: 3,
            sector_bytes: 1,
        };
        let torn = after_power_cut(&[0; 4], &[9; 8], sectors);
        assert_eq!(torn.len(), 8);
        for (i, byte) in torn.iter().enumerate() {
            let expected = if sector_survives(3, i) { 9 } else { 0 };
            assert_eq!(*byte, expected, "byte {i}");
        }
        assert_eq!(after_power_cut(b"same", b"same", keep(0)), b"same");
    }
}
