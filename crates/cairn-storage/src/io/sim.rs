//! A simulated disk that loses everything not fsynced at a power cut.
//!
//! Exists because a SIGKILL test cannot show a missing fsync: the kernel's page cache outlives
//! the process. [`SimIo`] keeps two images of every file (what was written, what was synced with
//! `sync_data`) and two images of the directory (live entries, entries as of the last
//! `sync_dir`). [`SimIo::power_cut`] throws away everything not synced, optionally keeping a
//! random prefix of each file's unsynced tail (a torn write), and makes every old handle fail.
//! [`SimIo::restart`] then brings the disk back with the surviving image.

use std::collections::HashMap;
use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::{Io, IoFile};

/// Largest simulated file, so a runaway test fails instead of eating memory.
const SIM_FILE_BYTES_MAX: u64 = 1 << 30;

#[derive(Debug, Default)]
struct FileData {
    live: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug, Default)]
struct SimFile {
    data: Mutex<FileData>,
    /// Set at a power cut: the handle belongs to a dead "process".
    dead: AtomicBool,
}

fn dead_err() -> io::Error {
    io::Error::other("simulated power cut: handle is dead")
}

impl SimFile {
    fn check(&self) -> io::Result<()> {
        if self.dead.load(Ordering::Acquire) {
            Err(dead_err())
        } else {
            Ok(())
        }
    }
}

#[derive(Debug)]
struct SimHandle(Arc<SimFile>);

impl IoFile for SimHandle {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.0.data.lock();
        self.0.check()?;
        let start = offset as usize;
        let end = start
            .checked_add(buf.len())
            .ok_or_else(|| io::Error::other("overflow"))?;
        if end > d.live.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past end",
            ));
        }
        buf.copy_from_slice(&d.live[start..end]);
        Ok(())
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut d = self.0.data.lock();
        self.0.check()?;
        let end = offset + buf.len() as u64;
        if end > SIM_FILE_BYTES_MAX {
            return Err(io::Error::other("simulated file too large"));
        }
        if d.live.len() < end as usize {
            d.live.resize(end as usize, 0);
        }
        d.live[offset as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut d = self.0.data.lock();
        self.0.check()?;
        d.durable = d.live.clone();
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        let d = self.0.data.lock();
        self.0.check()?;
        Ok(d.live.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut d = self.0.data.lock();
        self.0.check()?;
        if len > SIM_FILE_BYTES_MAX {
            return Err(io::Error::other("simulated file too large"));
        }
        d.live.resize(len as usize, 0);
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Dir {
    live: HashMap<PathBuf, Arc<SimFile>>,
    durable: HashMap<PathBuf, Arc<SimFile>>,
    /// Between `power_cut` and `restart` every operation fails.
    down: bool,
    /// The image that survives the last power cut.
    survivor: HashMap<PathBuf, Vec<u8>>,
    rng: u64,
    cuts: u64,
}

/// What a power cut does to unsynced data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tear {
    /// Keep exactly what was synced.
    None,
    /// Keep a random prefix (possibly empty, possibly all) of each file's unsynced tail.
    RandomPrefix,
}

/// The simulated disk. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct SimIo {
    dir: Arc<Mutex<Dir>>,
}

impl SimIo {
    /// A new, empty disk; `seed` drives the random tears.
    pub fn new(seed: u64) -> SimIo {
        let dir = Dir {
            rng: seed | 1,
            ..Dir::default()
        };
        SimIo {
            dir: Arc::new(Mutex::new(dir)),
        }
    }

    /// Simulates losing power now: every open handle and the directory stop working; only
    /// synced directory entries survive, each with its synced contents (plus, with
    /// [`Tear::RandomPrefix`], a random prefix of the unsynced appended bytes).
    pub fn power_cut(&self, tear: Tear) {
        let mut dir = self.dir.lock();
        dir.down = true;
        dir.cuts += 1;
        for f in dir.live.values().chain(dir.durable.values()) {
            // Marking under the file's lock orders the cut against in-flight syncs: a sync that
            // returned Ok is in `durable` below; one that has not yet run will fail.
            let _d = f.data.lock();
            f.dead.store(true, Ordering::Release);
        }
        let mut survivor = HashMap::new();
        let entries: Vec<(PathBuf, Arc<SimFile>)> = dir
            .durable
            .iter()
            .map(|(p, f)| (p.clone(), f.clone()))
            .collect();
        for (path, f) in entries {
            let d = f.data.lock();
            let mut image = d.durable.clone();
            if tear == Tear::RandomPrefix
                && d.live.len() > image.len()
                && d.live.starts_with(&image)
            {
                let extra = d.live.len() - image.len();
                let keep = (next_rand(&mut dir.rng) % (extra as u64 + 1)) as usize;
                image.extend_from_slice(&d.live[d.durable.len()..d.durable.len() + keep]);
            }
            survivor.insert(path, image);
        }
        dir.survivor = survivor;
    }

    /// Powers the disk back on with the image left by the last [`SimIo::power_cut`].
    pub fn restart(&self) {
        let mut dir = self.dir.lock();
        let survivor = std::mem::take(&mut dir.survivor);
        dir.live.clear();
        dir.durable.clear();
        for (path, image) in survivor {
            let f = Arc::new(SimFile {
                data: Mutex::new(FileData {
                    live: image.clone(),
                    durable: image,
                }),
                dead: AtomicBool::new(false),
            });
            dir.live.insert(path.clone(), f.clone());
            dir.durable.insert(path, f);
        }
        dir.down = false;
    }

    /// Number of power cuts so far.
    pub fn cuts(&self) -> u64 {
        self.dir.lock().cuts
    }

    /// Applies `f` to the live contents of `path` (for corruption tests).
    pub fn mutate_file(&self, path: &Path, f: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        let dir = self.dir.lock();
        let file = dir
            .live
            .get(path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let mut d = file.data.lock();
        f(&mut d.live);
        d.durable = d.live.clone();
        Ok(())
    }

    fn up(&self) -> io::Result<parking_lot::MutexGuard<'_, Dir>> {
        let dir = self.dir.lock();
        if dir.down { Err(dead_err()) } else { Ok(dir) }
    }
}

fn next_rand(state: &mut u64) -> u64 {
    // xorshift64: enough randomness for choosing tear points, no dependency.
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

#[derive(Debug)]
struct NoLock;

impl Io for SimIo {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        // Directories are assumed to exist durably; the simulation is about files in one.
        self.up().map(|_| ())
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let d = self.up()?;
        Ok(d.live
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect())
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        let mut d = self.up()?;
        let f = Arc::new(SimFile::default());
        d.live.insert(path.to_path_buf(), f.clone());
        Ok(Arc::new(SimHandle(f)))
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        let d = self.up()?;
        let f = d
            .live
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(Arc::new(SimHandle(f)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut d = self.up()?;
        let f = d
            .live
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        d.live.insert(to.to_path_buf(), f);
        Ok(())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut d = self.up()?;
        d.live
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
    fn exists(&self, path: &Path) -> bool {
        self.up()
            .map(|d| d.live.contains_key(path))
            .unwrap_or(false)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut d = self.up()?;
        let live: Vec<(PathBuf, Arc<SimFile>)> = d
            .live
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, f)| (p.clone(), f.clone()))
            .collect();
        d.durable.retain(|p, _| p.parent() != Some(dir));
        d.durable.extend(live);
        Ok(())
    }
    fn lock_dir(&self, _dir: &Path) -> io::Result<Box<dyn Debug + Send + Sync>> {
        drop(self.up()?);
        Ok(Box::new(NoLock))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_synced_data_and_entries_survive() {
        let io = SimIo::new(7);
        let dir = Path::new("/d");
        let a = io.create(&dir.join("a")).unwrap();
        a.write_all_at(b"hello", 0).unwrap();
        a.sync_data().unwrap();
        io.sync_dir(dir).unwrap();
        a.write_all_at(b" world", 5).unwrap();
        let b = io.create(&dir.join("b")).unwrap();
        b.write_all_at(b"unsynced entry", 0).unwrap();
        b.sync_data().unwrap();
        io.power_cut(Tear::None);
        assert!(a.write_all_at(b"x", 0).is_err(), "old handles die");
        io.restart();
        let mut names = io.list_dir(dir).unwrap();
        names.sort();
        assert_eq!(names, vec!["a".to_string()]);
        let a = io.open(&dir.join("a")).unwrap();
        assert_eq!(a.len().unwrap(), 5);
    }

    #[test]
    fn tears_keep_a_prefix_of_the_unsynced_tail() {
        let io = SimIo::new(99);
        let dir = Path::new("/d");
        let a = io.create(&dir.join("a")).unwrap();
        a.write_all_at(b"base", 0).unwrap();
        a.sync_data().unwrap();
        io.sync_dir(dir).unwrap();
        a.write_all_at(b"0123456789", 4).unwrap();
        io.power_cut(Tear::RandomPrefix);
        io.restart();
        let a = io.open(&dir.join("a")).unwrap();
        let len = a.len().unwrap() as usize;
        assert!((4..=14).contains(&len));
        let mut buf = vec![0; len];
        a.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..], &b"base0123456789"[..len]);
    }
}
