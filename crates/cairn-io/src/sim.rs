//! A simulated disk for power-cut and fault-injection tests.
//!
//! [`SimIo`] keeps an in-memory tree of directories and files. Every file has two images, what
//! was written (what readers see) and what was made durable by `sync_data`; every directory
//! has two sets of entries, the live ones and the ones as of its last `sync_dir`. A power cut
//! ([`SimIo::power_cut`], or a [`Fault`] that fires inside a call) kills this disk, so every
//! later call and every open handle fails, and builds the disk that survives:
//!
//! - only directory entries that were durable survive, starting from the root: a directory
//!   whose own entry in its parent was never synced vanishes with everything in it, and a file
//!   that was fsynced but whose name was not is gone (strict POSIX, as LazyFS models it);
//! - each surviving file keeps its durable bytes plus, as the [`PowerCut`] mode says, none, all,
//!   a prefix, or a random set of sectors of what was written after its last sync.
//!
//! Faults make one chosen call fail (a write fails after writing part of its buffer; an fsync
//! fails without making anything durable, and what it should have written is lost for good, as
//! Linux drops dirty pages after a writeback error) or cut the power *during* it (part of a write lands,
//! an fsync or a rename may or may not have happened). The seed given to [`SimIo::new`] drives
//! every random choice, so a failing seed replays the same tears (thread interleavings of the
//! code under test are its own).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};

use crate::{Io, IoFile, has_parent_component};

/// Largest simulated file, so a runaway test fails instead of eating memory.
pub const SIM_FILE_BYTES_MAX: u64 = 1 << 30;
/// Operations remembered for [`SimIo::recent_ops`] when tracing is on.
pub const TRACE_OPS_MAX: usize = 256;

/// Inode number of the root directory, which always exists and is always durable.
const ROOT: u64 = 1;

/// What a power cut keeps of the data written to each file after its last `sync_data`, and of
/// the entries changed in each directory after its last `sync_dir`.
///
/// A file's unsynced bytes run from the first byte where its current content differs from its
/// durable image to the end of the longer of the two: appends (the file grew, including by
/// `set_len`) and overwrites alike. Where an unsynced write does not survive, the durable
/// content stays (zeros beyond the durable length); an unsynced truncation survives only if the
/// whole unsynced range does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerCut {
    /// Nothing unsynced survives, in files or directories.
    DropUnsynced,
    /// Everything written survives, directory changes included (what a killed process leaves:
    /// the page cache reaches the disk).
    KeepUnsynced,
    /// A prefix of each file's unsynced bytes, `kept_per_mille` thousandths of them (a torn
    /// write); a grown file keeps only the length that prefix reaches. Directories lose their
    /// unsynced changes.
    KeepPrefix {
        /// 0..=1000.
        kept_per_mille: u32,
    },
    /// Each unsynced sector of each file independently kept or lost, as when the disk writes
    /// pages out of order: a later part of a write can survive while an earlier part is lost.
    /// Directories lose their unsynced changes.
    KeepSectors {
        /// Chooses which sectors survive.
        seed: u64,
        /// Sector size, such as 512 or 4096.
        sector_bytes: usize,
    },
    /// For every file one of the modes above, chosen at random; for every directory, its
    /// unsynced changes all kept or all lost, at random.
    Random,
}

/// A kind of call, for aiming a [`Fault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Io::create_dir`].
    CreateDir,
    /// [`Io::list_dir`].
    ListDir,
    /// [`Io::create`] and [`Io::create_new`].
    Create,
    /// [`Io::open`].
    Open,
    /// [`Io::rename`].
    Rename,
    /// [`Io::remove`] and [`Io::remove_dir`].
    Remove,
    /// [`Io::exists`].
    Exists,
    /// [`Io::sync_dir`].
    SyncDir,
    /// [`Io::lock_dir`].
    Lock,
    /// [`IoFile::read_exact_at`].
    Read,
    /// [`IoFile::write_all_at`].
    Write,
    /// [`IoFile::sync_data`].
    SyncData,
    /// [`IoFile::len`].
    Len,
    /// [`IoFile::set_len`].
    SetLen,
}

impl Op {
    /// Every kind of call that changes the disk (what "a moment during a write" means).
    pub const MUTATING: &'static [Op] = &[
        Op::CreateDir,
        Op::Create,
        Op::Rename,
        Op::Remove,
        Op::SyncDir,
        Op::Write,
        Op::SyncData,
        Op::SetLen,
    ];
    /// Both kinds of fsync.
    pub const SYNCS: &'static [Op] = &[Op::SyncData, Op::SyncDir];
}

/// What a fault does to the call it fires on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The call fails. A write first writes a random part of its buffer (possibly none); a file
    /// fsync makes nothing durable and loses what it should have written (a later fsync that
    /// succeeds does not write it: Linux marks the pages clean after a writeback error); other
    /// calls have no effect.
    Fail,
    /// The power goes off during the call: a write lands a random prefix of its buffer (none to
    /// all), any other mutating call happens or not at random, then the disk dies and the call
    /// fails. The surviving disk is built with this mode (see [`SimIo::after_cut`]).
    PowerCut(PowerCut),
}

/// A one-shot fault: fires on the first matching call after `skip` matching calls went
/// through, then is gone.
#[derive(Debug, Clone)]
pub struct Fault {
    ops: Vec<Op>,
    path_contains: Option<String>,
    skip: u64,
    action: Action,
}

impl Fault {
    /// Makes the next call of kind `op` fail.
    pub fn fail(op: Op) -> Fault {
        Fault::new(&[op], Action::Fail)
    }

    /// Fires `action` on the next call whose kind is in `ops`.
    pub fn new(ops: &[Op], action: Action) -> Fault {
        Fault {
            ops: ops.to_vec(),
            path_contains: None,
            skip: 0,
            action,
        }
    }

    /// Only calls whose path contains `fragment` match.
    pub fn on_path(mut self, fragment: impl Into<String>) -> Fault {
        self.path_contains = Some(fragment.into());
        self
    }

    /// Lets `n` matching calls through before firing.
    pub fn after(mut self, n: u64) -> Fault {
        self.skip = n;
        self
    }

    fn matches(&self, op: Op, path: &Path) -> bool {
        self.ops.contains(&op)
            && self
                .path_contains
                .as_deref()
                .is_none_or(|f| path.to_string_lossy().contains(f))
    }
}

#[derive(Debug, Default)]
struct FileData {
    /// What readers see.
    live: Vec<u8>,
    /// What survives a power cut, as of the last `sync_data`.
    durable: Vec<u8>,
    /// Lowest offset written, truncated or extended since the last sync (`None`: clean).
    /// Invariant: `live[..d] == durable[..d]` for `d = dirty_from`, and `d <= live.len()`.
    dirty_from: Option<usize>,
}

impl FileData {
    fn touch(&mut self, from: usize) {
        self.dirty_from = Some(self.dirty_from.map_or(from, |d| d.min(from)));
    }

    fn sync(&mut self) {
        if let Some(from) = self.dirty_from.take() {
            // Shorter only after a failed sync lost bytes before `from`: they stay lost (zeros).
            self.durable.resize(from, 0);
            self.durable.extend_from_slice(&self.live[from..]);
        }
    }

    /// A failed fsync: as Linux does after a writeback error, the dirty pages are marked clean
    /// without reaching the disk, so a later fsync that succeeds does not write them either
    /// (readers still see them until they are evicted). Retrying the fsync and trusting it
    /// therefore loses data here, as it does on a real disk.
    fn lose_dirty(&mut self) {
        self.dirty_from = None;
    }
}

#[derive(Debug, Default, Clone)]
struct DirData {
    live: BTreeMap<String, u64>,
    /// As of the last `sync_dir`.
    durable: BTreeMap<String, u64>,
}

#[derive(Debug)]
enum Node {
    File(Arc<Mutex<FileData>>),
    Dir(DirData),
}

#[derive(Debug)]
struct Disk {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    powered: bool,
    /// The disk left by the power cut, once there was one.
    image: Option<SimIo>,
    rng: u64,
    faults: Vec<Fault>,
    ops: u64,
    syncs: u64,
    /// Writeback hints taken ([`IoFile::start_writeback`]: they change nothing here).
    writebacks: u64,
    locks: BTreeSet<PathBuf>,
    sync_delay: Duration,
    trace: Option<VecDeque<String>>,
}

impl Disk {
    fn empty(seed: u64) -> Disk {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node::Dir(DirData::default()));
        Disk {
            nodes,
            next_ino: ROOT + 1,
            powered: true,
            image: None,
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            faults: Vec::new(),
            ops: 0,
            syncs: 0,
            writebacks: 0,
            locks: BTreeSet::new(),
            sync_delay: Duration::ZERO,
            trace: None,
        }
    }

    fn rand(&mut self) -> u64 {
        // xorshift64: enough for choosing tears, no dependency.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    fn coin(&mut self) -> bool {
        self.rand() & 1 == 1
    }

    /// Checks the power, counts the call, and returns the fault that fires on it, if any.
    fn begin(&mut self, op: Op, path: &Path) -> io::Result<Option<Action>> {
        if !self.powered {
            return Err(dead());
        }
        self.ops += 1;
        if let Some(trace) = &mut self.trace {
            if trace.len() == TRACE_OPS_MAX {
                trace.pop_front();
            }
            trace.push_back(format!("{op:?} {}", path.display()));
        }
        let mut fired = None;
        for (i, fault) in self.faults.iter_mut().enumerate() {
            if !fault.matches(op, path) {
                continue;
            }
            if fault.skip > 0 {
                fault.skip -= 1;
            } else if fired.is_none() {
                fired = Some(i);
            }
        }
        Ok(fired.map(|i| self.faults.remove(i).action))
    }

    fn dir(&self, ino: u64) -> io::Result<&DirData> {
        match self.nodes.get(&ino) {
            Some(Node::Dir(d)) => Ok(d),
            Some(Node::File(_)) => Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            )),
            None => Err(not_found()),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> io::Result<&mut DirData> {
        match self.nodes.get_mut(&ino) {
            Some(Node::Dir(d)) => Ok(d),
            Some(Node::File(_)) => Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            )),
            None => Err(not_found()),
        }
    }

    /// The inode `path` names, if any.
    fn resolve(&self, path: &Path) -> io::Result<Option<u64>> {
        if has_parent_component(path) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the simulated disk does not resolve `..`",
            ));
        }
        let mut at = ROOT;
        for component in path.components() {
            let Component::Normal(name) = component else {
                continue;
            };
            let name = name.to_str().ok_or_else(non_utf8)?;
            match self.dir(at)?.live.get(name) {
                Some(&ino) => at = ino,
                None => return Ok(None),
            }
        }
        Ok(Some(at))
    }

    /// The directory holding `path` and the entry's name.
    fn parent_of(&self, path: &Path) -> io::Result<(u64, String)> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?
            .to_owned();
        let parent = crate::parent_dir(path);
        let ino = self.resolve(parent)?.ok_or_else(not_found)?;
        self.dir(ino)?;
        Ok((ino, name))
    }

    fn file(&self, ino: u64) -> io::Result<Arc<Mutex<FileData>>> {
        match self.nodes.get(&ino) {
            Some(Node::File(f)) => Ok(f.clone()),
            Some(Node::Dir(_)) => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "is a directory",
            )),
            None => Err(not_found()),
        }
    }

    fn new_node(&mut self, node: Node) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, node);
        ino
    }

    /// Drops `ino` if no entry, live or durable, names it any more (open handles keep their
    /// own reference to a file's data).
    fn collect(&mut self, ino: u64) {
        let named = self.nodes.values().any(|node| match node {
            Node::Dir(d) => d.live.values().chain(d.durable.values()).any(|&i| i == ino),
            Node::File(_) => false,
        });
        if !named {
            self.nodes.remove(&ino);
        }
    }

    /// Kills the disk and records the one that survives.
    fn cut(&mut self, mode: PowerCut) {
        if !self.powered {
            return;
        }
        self.powered = false;
        let seed = self.rand();
        let mut image = Disk::empty(seed);
        let mut copied = HashMap::new();
        self.copy_dir(ROOT, ROOT, mode, &mut image, &mut copied);
        self.image = Some(SimIo {
            disk: Arc::new(Mutex::new(image)),
        });
    }

    /// Copies the surviving entries of directory `from` into `into` (an inode of `image`).
    fn copy_dir(
        &mut self,
        from: u64,
        into: u64,
        mode: PowerCut,
        image: &mut Disk,
        copied: &mut HashMap<u64, u64>,
    ) {
        let keep_unsynced = match mode {
            PowerCut::KeepUnsynced => true,
            PowerCut::Random => self.rand() % 4 == 0,
            _ => false,
        };
        let Ok(dir) = self.dir(from) else { return };
        let entries = if keep_unsynced {
            dir.live.clone()
        } else {
            dir.durable.clone()
        };
        for (name, ino) in entries {
            let new_ino = match copied.get(&ino) {
                Some(&n) => n,
                None => {
                    let file = match self.nodes.get(&ino) {
                        Some(Node::File(f)) => Some(f.clone()),
                        Some(Node::Dir(_)) => None,
                        None => continue,
                    };
                    let new_ino = match file {
                        Some(f) => {
                            let file_mode = match mode {
                                PowerCut::Random => self.random_mode(),
                                other => other,
                            };
                            let data = f.lock();
                            let start = data.dirty_from.unwrap_or(data.live.len());
                            let bytes =
                                after_power_cut(&data.durable, &data.live, start, file_mode);
                            drop(data);
                            image.new_node(Node::File(Arc::new(Mutex::new(FileData {
                                live: bytes.clone(),
                                durable: bytes,
                                dirty_from: None,
                            }))))
                        }
                        None => {
                            let new_ino = image.new_node(Node::Dir(DirData::default()));
                            copied.insert(ino, new_ino);
                            self.copy_dir(ino, new_ino, mode, image, copied);
                            new_ino
                        }
                    };
                    copied.insert(ino, new_ino);
                    new_ino
                }
            };
            if let Ok(d) = image.dir_mut(into) {
                d.live.insert(name.clone(), new_ino);
                d.durable.insert(name, new_ino);
            }
        }
    }

    fn random_mode(&mut self) -> PowerCut {
        match self.rand() % 4 {
            0 => PowerCut::DropUnsynced,
            1 => PowerCut::KeepUnsynced,
            2 => PowerCut::KeepPrefix {
                kept_per_mille: (self.rand() % 1001) as u32,
            },
            _ => PowerCut::KeepSectors {
                seed: self.rand(),
                sector_bytes: if self.coin() { 512 } else { 4096 },
            },
        }
    }
}

fn dead() -> io::Error {
    io::Error::other("simulated power cut: the disk is off")
}

fn not_found() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

fn non_utf8() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "non-UTF-8 path")
}

fn injected(op: Op) -> io::Error {
    io::Error::other(format!("injected failure of {op:?}"))
}

/// The bytes of a file with durable image `durable` and content `data` after a power cut (see
/// [`PowerCut`]); the two are equal before `hint` (the lowest offset touched since the sync).
fn after_power_cut(durable: &[u8], data: &[u8], hint: usize, mode: PowerCut) -> Vec<u8> {
    let hint = hint.min(durable.len()).min(data.len());
    let start = hint
        + durable[hint..]
            .iter()
            .zip(&data[hint..])
            .position(|(old, new)| old != new)
            .unwrap_or(durable.len().min(data.len()) - hint);
    let unsynced = data.len().max(durable.len()) - start;
    match mode {
        _ if unsynced == 0 => durable.to_vec(),
        PowerCut::DropUnsynced => durable.to_vec(),
        PowerCut::KeepUnsynced => data.to_vec(),
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
        PowerCut::Random => unreachable!("Random is resolved per file before this"),
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

/// The simulated disk. Clones share the same disk.
#[derive(Clone)]
pub struct SimIo {
    disk: Arc<Mutex<Disk>>,
}

impl fmt::Debug for SimIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimIo").finish_non_exhaustive()
    }
}

impl SimIo {
    /// An empty disk (only the root directory); `seed` drives every random choice.
    pub fn new(seed: u64) -> SimIo {
        SimIo {
            disk: Arc::new(Mutex::new(Disk::empty(seed))),
        }
    }

    /// Arms a one-shot fault (see [`Fault`]).
    pub fn inject(&self, fault: Fault) {
        self.disk.lock().faults.push(fault);
    }

    /// Makes the next call of kind `op` fail.
    pub fn fail_next(&self, op: Op) {
        self.inject(Fault::fail(op));
    }

    /// Removes every armed fault; returns how many had not fired.
    pub fn clear_faults(&self) -> usize {
        std::mem::take(&mut self.disk.lock().faults).len()
    }

    /// Cuts the power now: this disk and every handle on it fail from here on. Returns the disk
    /// that survives (if a fault already cut the power, the disk that cut left; `mode` is then
    /// ignored).
    pub fn power_cut(&self, mode: PowerCut) -> SimIo {
        let mut disk = self.disk.lock();
        disk.cut(mode);
        disk.image.clone().expect("cut leaves an image")
    }

    /// The disk a power cut would leave now; this disk is untouched.
    pub fn crash_image(&self, mode: PowerCut) -> SimIo {
        let mut disk = self.disk.lock();
        let was = (disk.powered, disk.image.take());
        disk.powered = true;
        disk.cut(mode);
        let image = disk.image.take().expect("cut leaves an image");
        (disk.powered, disk.image) = was;
        image
    }

    /// The disk the power cut left, once there was one.
    pub fn after_cut(&self) -> Option<SimIo> {
        self.disk.lock().image.clone()
    }

    /// Whether the power is still on.
    pub fn is_powered(&self) -> bool {
        self.disk.lock().powered
    }

    /// Writeback hints taken so far ([`IoFile::start_writeback`]); they make nothing
    /// durable, so the disk model ignores them otherwise.
    pub fn writebacks(&self) -> u64 {
        self.disk.lock().writebacks
    }

    /// Calls made so far (every kind, including failed ones).
    pub fn ops(&self) -> u64 {
        self.disk.lock().ops
    }

    /// Successful `sync_data` and `sync_dir` calls so far.
    pub fn syncs(&self) -> u64 {
        self.disk.lock().syncs
    }

    /// Makes every later `sync_data` take `delay`, like a real disk's flush.
    pub fn set_sync_delay(&self, delay: Duration) {
        self.disk.lock().sync_delay = delay;
    }

    /// Remembers the last [`TRACE_OPS_MAX`] calls for [`SimIo::recent_ops`].
    pub fn set_trace(&self, on: bool) {
        self.disk.lock().trace = on.then(VecDeque::new);
    }

    /// The last calls made, oldest first (empty unless tracing is on).
    pub fn recent_ops(&self) -> Vec<String> {
        self.disk
            .lock()
            .trace
            .as_ref()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The current bytes of a file (tests use it to inspect and damage files); works on a disk
    /// whose power is off too.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let disk = self.disk.lock();
        let ino = disk.resolve(path).ok()??;
        let file = disk.file(ino).ok()?;
        let bytes = file.lock().live.clone();
        Some(bytes)
    }

    /// Replaces a file's bytes durably, creating it (and its durable entry) if needed; the
    /// parent directory must exist.
    pub fn set_file_bytes(&self, path: &Path, bytes: Vec<u8>) {
        let mut disk = self.disk.lock();
        let (parent, name) = disk.parent_of(path).expect("parent directory exists");
        let existing = disk.dir(parent).expect("parent").live.get(&name).copied();
        let ino = match existing {
            Some(ino) => ino,
            None => disk.new_node(Node::File(Arc::default())),
        };
        let file = disk.file(ino).expect("a file");
        {
            let mut data = file.lock();
            data.live = bytes.clone();
            data.durable = bytes;
            data.dirty_from = None;
        }
        let dir = disk.dir_mut(parent).expect("parent");
        dir.live.insert(name.clone(), ino);
        dir.durable.insert(name, ino);
    }

    /// Every file on the disk with its current length, in path order (for failure messages).
    pub fn tree(&self) -> Vec<(PathBuf, u64)> {
        let disk = self.disk.lock();
        let mut out = Vec::new();
        let mut stack = vec![(PathBuf::from("/"), ROOT)];
        while let Some((path, ino)) = stack.pop() {
            match disk.nodes.get(&ino) {
                Some(Node::Dir(d)) => {
                    for (name, &child) in &d.live {
                        stack.push((path.join(name), child));
                    }
                }
                Some(Node::File(f)) => out.push((path, f.lock().live.len() as u64)),
                None => {}
            }
        }
        out.sort();
        out
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock()
    }

    /// A directory-changing call: `apply` runs unless a fault stops it.
    fn change(
        &self,
        op: Op,
        path: &Path,
        apply: impl FnOnce(&mut Disk) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut disk = self.lock();
        match disk.begin(op, path)? {
            None => apply(&mut disk),
            Some(Action::Fail) => Err(injected(op)),
            Some(Action::PowerCut(mode)) => {
                if disk.coin() {
                    let _ = apply(&mut disk);
                }
                disk.cut(mode);
                Err(dead())
            }
        }
    }

    fn create_file(&self, path: &Path, new: bool) -> io::Result<Arc<dyn IoFile>> {
        let mut data = None;
        self.change(Op::Create, path, |disk| {
            let (parent, name) = disk.parent_of(path)?;
            let existing = disk.dir(parent)?.live.get(&name).copied();
            let file = match existing {
                Some(_) if new => {
                    return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
                }
                Some(ino) => {
                    let file = disk.file(ino)?;
                    {
                        let mut d = file.lock();
                        d.live.clear();
                        d.touch(0);
                    }
                    file
                }
                None => {
                    let file: Arc<Mutex<FileData>> = Arc::default();
                    let ino = disk.new_node(Node::File(file.clone()));
                    disk.dir_mut(parent)?.live.insert(name, ino);
                    file
                }
            };
            data = Some(file);
            Ok(())
        })?;
        Ok(Arc::new(SimFile {
            disk: self.disk.clone(),
            data: data.expect("set when the call succeeds"),
            path: path.to_path_buf(),
        }))
    }
}

impl Io for SimIo {
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        self.change(Op::CreateDir, dir, |disk| {
            let (parent, name) = disk.parent_of(dir)?;
            if disk.dir(parent)?.live.contains_key(&name) {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists"));
            }
            let ino = disk.new_node(Node::Dir(DirData::default()));
            disk.dir_mut(parent)?.live.insert(name, ino);
            Ok(())
        })
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut disk = self.lock();
        if disk.begin(Op::ListDir, dir)?.is_some() {
            return Err(injected(Op::ListDir));
        }
        let ino = disk.resolve(dir)?.ok_or_else(not_found)?;
        Ok(disk.dir(ino)?.live.keys().cloned().collect())
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        self.create_file(path, false)
    }

    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        self.create_file(path, true)
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        let mut disk = self.lock();
        if disk.begin(Op::Open, path)?.is_some() {
            return Err(injected(Op::Open));
        }
        let ino = disk.resolve(path)?.ok_or_else(not_found)?;
        let data = disk.file(ino)?;
        Ok(Arc::new(SimFile {
            disk: self.disk.clone(),
            data,
            path: path.to_path_buf(),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.change(Op::Rename, from, |disk| {
            let (from_dir, from_name) = disk.parent_of(from)?;
            let (to_dir, to_name) = disk.parent_of(to)?;
            let ino = *disk
                .dir(from_dir)?
                .live
                .get(&from_name)
                .ok_or_else(not_found)?;
            disk.file(ino)?; // files only: directories are never renamed here
            if let Some(&old) = disk.dir(to_dir)?.live.get(&to_name) {
                disk.file(old)?;
            }
            disk.dir_mut(from_dir)?.live.remove(&from_name);
            let replaced = disk.dir_mut(to_dir)?.live.insert(to_name, ino);
            if let Some(old) = replaced {
                disk.collect(old);
            }
            Ok(())
        })
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.change(Op::Remove, path, |disk| {
            let (parent, name) = disk.parent_of(path)?;
            let ino = *disk.dir(parent)?.live.get(&name).ok_or_else(not_found)?;
            disk.file(ino)?;
            disk.dir_mut(parent)?.live.remove(&name);
            disk.collect(ino);
            Ok(())
        })
    }

    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        self.change(Op::Remove, dir, |disk| {
            let (parent, name) = disk.parent_of(dir)?;
            let ino = *disk.dir(parent)?.live.get(&name).ok_or_else(not_found)?;
            if !disk.dir(ino)?.live.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::DirectoryNotEmpty,
                    "directory not empty",
                ));
            }
            disk.dir_mut(parent)?.live.remove(&name);
            disk.collect(ino);
            Ok(())
        })
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let mut disk = self.lock();
        if disk.begin(Op::Exists, path)?.is_some() {
            return Err(injected(Op::Exists));
        }
        Ok(disk.resolve(path)?.is_some())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut disk = self.lock();
        let fault = disk.begin(Op::SyncDir, dir)?;
        let apply = |disk: &mut Disk| -> io::Result<()> {
            let ino = disk.resolve(dir)?.ok_or_else(not_found)?;
            let d = disk.dir_mut(ino)?;
            let gone: Vec<u64> = d
                .durable
                .values()
                .filter(|i| !d.live.values().any(|l| l == *i))
                .copied()
                .collect();
            d.durable = d.live.clone();
            for ino in gone {
                disk.collect(ino);
            }
            disk.syncs += 1;
            Ok(())
        };
        match fault {
            None => apply(&mut disk),
            Some(Action::Fail) => Err(injected(Op::SyncDir)),
            Some(Action::PowerCut(mode)) => {
                if disk.coin() {
                    let _ = apply(&mut disk);
                }
                disk.cut(mode);
                Err(dead())
            }
        }
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<Box<dyn fmt::Debug + Send + Sync>> {
        let mut disk = self.lock();
        if disk.begin(Op::Lock, dir)?.is_some() {
            return Err(injected(Op::Lock));
        }
        if disk.resolve(dir)?.is_none() {
            return Err(not_found());
        }
        if !disk.locks.insert(dir.to_path_buf()) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "directory is locked",
            ));
        }
        Ok(Box::new(SimLock {
            disk: self.disk.clone(),
            dir: dir.to_path_buf(),
        }))
    }
}

/// Holds a [`SimIo`] directory lock until dropped.
#[derive(Debug)]
struct SimLock {
    disk: Arc<Mutex<Disk>>,
    dir: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.disk.lock().locks.remove(&self.dir);
    }
}

/// An open simulated file. It keeps its data alive after the name is removed, as a POSIX
/// descriptor does, and fails once the disk's power is off.
#[derive(Debug)]
struct SimFile {
    disk: Arc<Mutex<Disk>>,
    data: Arc<Mutex<FileData>>,
    path: PathBuf,
}

impl SimFile {
    fn begin(&self, op: Op) -> io::Result<(MutexGuard<'_, Disk>, Option<Action>)> {
        let mut disk = self.disk.lock();
        let fault = disk.begin(op, &self.path)?;
        Ok((disk, fault))
    }
}

fn write_into(data: &mut FileData, buf: &[u8], offset: u64) -> io::Result<()> {
    let end = offset
        .checked_add(buf.len() as u64)
        .filter(|&e| e <= SIM_FILE_BYTES_MAX)
        .ok_or_else(|| io::Error::other("simulated file too large"))?;
    let (offset, end) = (offset as usize, end as usize);
    let old_len = data.live.len();
    if old_len < end {
        data.live.resize(end, 0);
    }
    data.live[offset..end].copy_from_slice(buf);
    data.touch(offset.min(old_len));
    Ok(())
}

impl IoFile for SimFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let (_disk, fault) = self.begin(Op::Read)?;
        if fault.is_some() {
            return Err(injected(Op::Read));
        }
        let data = self.data.lock();
        let start = usize::try_from(offset).map_err(|_| io::Error::other("offset overflow"))?;
        let end = start
            .checked_add(buf.len())
            .ok_or_else(|| io::Error::other("offset overflow"))?;
        if end > data.live.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the file",
            ));
        }
        buf.copy_from_slice(&data.live[start..end]);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let (mut disk, fault) = self.begin(Op::Write)?;
        let mut data = self.data.lock();
        match fault {
            None => write_into(&mut data, buf, offset),
            Some(Action::Fail) => {
                let part = (disk.rand() % (buf.len() as u64).max(1)) as usize;
                let _ = write_into(&mut data, &buf[..part], offset);
                Err(injected(Op::Write))
            }
            Some(Action::PowerCut(mode)) => {
                let part = (disk.rand() % (buf.len() as u64 + 1)) as usize;
                let _ = write_into(&mut data, &buf[..part], offset);
                drop(data);
                disk.cut(mode);
                Err(dead())
            }
        }
    }

    fn start_writeback(&self, _offset: u64, _len: u64) -> io::Result<()> {
        self.disk.lock().writebacks += 1;
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        let delay = {
            let (mut disk, fault) = self.begin(Op::SyncData)?;
            match fault {
                None => {
                    // Exactly what was written before the call becomes durable, at its start:
                    // a write made while the flush takes its time is not covered by it.
                    self.data.lock().sync();
                    disk.syncs += 1;
                    disk.sync_delay
                }
                Some(Action::Fail) => {
                    self.data.lock().lose_dirty();
                    return Err(injected(Op::SyncData));
                }
                Some(Action::PowerCut(mode)) => {
                    if disk.coin() {
                        self.data.lock().sync();
                    }
                    disk.cut(mode);
                    return Err(dead());
                }
            }
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        // The caller learns of the flush only if the power stayed on meanwhile.
        if !self.disk.lock().powered {
            return Err(dead());
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let (_disk, fault) = self.begin(Op::Len)?;
        if fault.is_some() {
            return Err(injected(Op::Len));
        }
        Ok(self.data.lock().live.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let (mut disk, fault) = self.begin(Op::SetLen)?;
        if len > SIM_FILE_BYTES_MAX {
            return Err(io::Error::other("simulated file too large"));
        }
        let apply = |data: &mut FileData| {
            let old_len = data.live.len();
            data.live.resize(len as usize, 0);
            data.touch(old_len.min(len as usize));
        };
        match fault {
            None => {
                apply(&mut self.data.lock());
                Ok(())
            }
            Some(Action::Fail) => Err(injected(Op::SetLen)),
            Some(Action::PowerCut(mode)) => {
                if disk.coin() {
                    apply(&mut self.data.lock());
                }
                disk.cut(mode);
                Err(dead())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{create_dir_all_durable, write_file_atomic};

    fn read(io: &SimIo, path: &str) -> Option<Vec<u8>> {
        io.file_bytes(Path::new(path))
    }

    #[test]
    fn only_synced_data_and_entries_survive() {
        let io = SimIo::new(7);
        create_dir_all_durable(&io, Path::new("/d")).unwrap();
        let a = io.create(Path::new("/d/a")).unwrap();
        a.write_all_at(b"hello", 0).unwrap();
        a.sync_data().unwrap();
        io.sync_dir(Path::new("/d")).unwrap();
        a.write_all_at(b" world", 5).unwrap();
        let b = io.create(Path::new("/d/b")).unwrap();
        b.write_all_at(b"synced data, unsynced name", 0).unwrap();
        b.sync_data().unwrap();
        let after = io.power_cut(PowerCut::DropUnsynced);
        assert!(a.write_all_at(b"x", 0).is_err(), "old handles die");
        assert!(io.list_dir(Path::new("/d")).is_err(), "the old disk is off");
        assert_eq!(after.list_dir(Path::new("/d")).unwrap(), vec!["a"]);
        assert_eq!(read(&after, "/d/a").unwrap(), b"hello");
    }

    #[test]
    fn a_directory_whose_entry_was_never_synced_vanishes_with_its_files() {
        let io = SimIo::new(1);
        io.create_dir(Path::new("/data")).unwrap();
        io.create_dir(Path::new("/data/wal")).unwrap();
        let f = io.create(Path::new("/data/wal/1.log")).unwrap();
        f.write_all_at(b"acknowledged?", 0).unwrap();
        f.sync_data().unwrap();
        io.sync_dir(Path::new("/data/wal")).unwrap();
        io.sync_dir(Path::new("/data")).unwrap();
        // The root was never synced after `data` was created: everything is gone.
        let after = io.crash_image(PowerCut::DropUnsynced);
        assert!(!after.exists(Path::new("/data")).unwrap());
        // Synced all the way up, it survives.
        io.sync_dir(Path::new("/")).unwrap();
        let after = io.crash_image(PowerCut::DropUnsynced);
        assert_eq!(read(&after, "/data/wal/1.log").unwrap(), b"acknowledged?");
    }

    #[test]
    fn directory_removal_is_durable_only_after_the_parent_sync() {
        let io = SimIo::new(5);
        create_dir_all_durable(&io, Path::new("/r/e")).unwrap();
        write_file_atomic(&io, Path::new("/r/e/f"), b"data").unwrap();
        assert_eq!(
            io.remove_dir(Path::new("/r/e")).unwrap_err().kind(),
            io::ErrorKind::DirectoryNotEmpty
        );
        io.remove(Path::new("/r/e/f")).unwrap();
        io.remove_dir(Path::new("/r/e")).unwrap();
        assert!(!io.exists(Path::new("/r/e")).unwrap());
        // Neither removal was synced: the directory and its file come back.
        let lost = io.crash_image(PowerCut::DropUnsynced);
        assert_eq!(read(&lost, "/r/e/f").unwrap(), b"data");
        io.sync_dir(Path::new("/r")).unwrap();
        let lost = io.crash_image(PowerCut::DropUnsynced);
        assert!(!lost.exists(Path::new("/r/e")).unwrap());
        // The helper removes a whole tree durably, and a missing tree is not an error.
        create_dir_all_durable(&io, Path::new("/r/t/sub")).unwrap();
        write_file_atomic(&io, Path::new("/r/t/a"), b"a").unwrap();
        write_file_atomic(&io, Path::new("/r/t/sub/b"), b"b").unwrap();
        crate::remove_dir_all_durable(&io, Path::new("/r/t")).unwrap();
        crate::remove_dir_all_durable(&io, Path::new("/r/t")).unwrap();
        let lost = io.crash_image(PowerCut::DropUnsynced);
        assert!(!lost.exists(Path::new("/r/t")).unwrap());
    }

    #[test]
    fn removes_and_renames_need_a_directory_sync() {
        let io = SimIo::new(3);
        create_dir_all_durable(&io, Path::new("/d")).unwrap();
        write_file_atomic(&io, Path::new("/d/f"), b"old").unwrap();
        let tmp = io.create(Path::new("/d/f.tmp")).unwrap();
        tmp.write_all_at(b"new", 0).unwrap();
        tmp.sync_data().unwrap();
        io.rename(Path::new("/d/f.tmp"), Path::new("/d/f")).unwrap();
        io.remove(Path::new("/d/f")).unwrap_or(());
        let lost = io.crash_image(PowerCut::DropUnsynced);
        assert_eq!(read(&lost, "/d/f").unwrap(), b"old");
        assert!(read(&lost, "/d/f.tmp").is_none());
        let kept = io.crash_image(PowerCut::KeepUnsynced);
        assert!(read(&kept, "/d/f").is_none(), "the remove survives too");
    }

    #[test]
    fn a_file_renamed_before_its_data_was_synced_can_come_back_empty() {
        let io = SimIo::new(5);
        create_dir_all_durable(&io, Path::new("/d")).unwrap();
        let f = io.create(Path::new("/d/x.tmp")).unwrap();
        f.write_all_at(b"data", 0).unwrap();
        io.rename(Path::new("/d/x.tmp"), Path::new("/d/x")).unwrap();
        io.sync_dir(Path::new("/d")).unwrap();
        let after = io.crash_image(PowerCut::DropUnsynced);
        assert_eq!(read(&after, "/d/x").unwrap(), b"");
    }

    #[test]
    fn tears_keep_a_prefix_or_sectors_of_the_unsynced_tail() {
        let keep = |kept_per_mille| PowerCut::KeepPrefix { kept_per_mille };
        assert_eq!(after_power_cut(b"ab", b"abcdef", 0, keep(500)), b"abcd");
        assert_eq!(
            after_power_cut(&[1, 0, 0, 0, 0], &[1, 7, 7, 7, 7], 1, keep(500)),
            [1, 7, 7, 0, 0]
        );
        assert_eq!(
            after_power_cut(&[1, 0, 0, 0], &[1, 7, 7, 7], 0, PowerCut::DropUnsynced),
            [1, 0, 0, 0]
        );
        assert_eq!(after_power_cut(b"abc000", b"abcS", 3, keep(250)), b"abc000");
        assert_eq!(after_power_cut(b"abc000", b"abcS", 3, keep(1000)), b"abcS");
        let sectors = PowerCut::KeepSectors {
            seed: 3,
            sector_bytes: 1,
        };
        let torn = after_power_cut(&[0; 4], &[9; 8], 0, sectors);
        assert_eq!(torn.len(), 8);
        for (i, byte) in torn.iter().enumerate() {
            let expected = if sector_survives(3, i) { 9 } else { 0 };
            assert_eq!(*byte, expected, "byte {i}");
        }
        assert_eq!(after_power_cut(b"same", b"same", 4, keep(0)), b"same");
    }

    #[test]
    fn injected_failures_fire_once_on_the_matching_call() {
        let io = SimIo::new(9);
        create_dir_all_durable(&io, Path::new("/d")).unwrap();
        let f = io.create(Path::new("/d/f")).unwrap();
        io.inject(Fault::fail(Op::SyncData).on_path("/d/f").after(1));
        f.write_all_at(b"one", 0).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(b"two", 3).unwrap();
        assert!(f.sync_data().is_err());
        assert_eq!(read(&io.crash_image(PowerCut::DropUnsynced), "/d/f"), None);
        io.sync_dir(Path::new("/d")).unwrap();
        let after = io.crash_image(PowerCut::DropUnsynced);
        assert_eq!(
            read(&after, "/d/f").unwrap(),
            b"one",
            "the failed sync made nothing durable"
        );
        f.sync_data().unwrap();
        io.fail_next(Op::Rename);
        assert!(io.rename(Path::new("/d/f"), Path::new("/d/g")).is_err());
        assert!(io.exists(Path::new("/d/f")).unwrap());
        io.fail_next(Op::Write);
        assert!(f.write_all_at(&[1; 100], 0).is_err());
        assert_eq!(io.clear_faults(), 0);
    }

    #[test]
    fn a_power_cut_fault_fires_inside_the_call_and_kills_the_disk() {
        let io = SimIo::new(11);
        create_dir_all_durable(&io, Path::new("/d")).unwrap();
        let f = io.create_new(Path::new("/d/f")).unwrap();
        io.sync_dir(Path::new("/d")).unwrap();
        f.write_all_at(b"base", 0).unwrap();
        f.sync_data().unwrap();
        io.inject(Fault::new(
            &[Op::Write],
            Action::PowerCut(PowerCut::KeepUnsynced),
        ));
        assert!(f.write_all_at(b"0123456789", 4).is_err());
        assert!(!io.is_powered());
        assert!(f.len().is_err());
        let after = io.after_cut().expect("the fault cut the power");
        let bytes = read(&after, "/d/f").unwrap();
        assert!(bytes.len() >= 4 && bytes.len() <= 14);
        assert_eq!(&bytes[..], &b"base0123456789"[..bytes.len()]);
        // A later explicit cut returns the same image.
        assert_eq!(
            read(&io.power_cut(PowerCut::DropUnsynced), "/d/f").unwrap(),
            bytes
        );
    }

    #[test]
    fn a_failed_fsync_loses_its_data_even_if_a_retry_succeeds() {
        let io = SimIo::new(12);
        create_dir_all_durable(&io, Path::new("/d")).unwrap();
        let f = io.create_new(Path::new("/d/f")).unwrap();
        io.sync_dir(Path::new("/d")).unwrap();
        f.write_all_at(b"base", 0).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(b"LOST", 4).unwrap();
        io.fail_next(Op::SyncData);
        assert!(f.sync_data().is_err());
        f.sync_data().unwrap(); // "succeeds", writes nothing
        f.write_all_at(b"late", 8).unwrap();
        f.sync_data().unwrap();
        assert_eq!(
            f.read_all().unwrap(),
            b"baseLOSTlate",
            "readers still see it"
        );
        let after = io.crash_image(PowerCut::KeepUnsynced);
        assert_eq!(read(&after, "/d/f").unwrap(), b"base\0\0\0\0late");
    }

    #[test]
    fn an_fsync_covers_only_what_was_written_before_it() {
        let io = SimIo::new(13);
        create_dir_all_durable(&io, Path::new("/d")).unwrap();
        let f = io.create_new(Path::new("/d/f")).unwrap();
        io.sync_dir(Path::new("/d")).unwrap();
        io.set_sync_delay(Duration::from_millis(50));
        f.write_all_at(b"before", 0).unwrap();
        std::thread::scope(|s| {
            let syncing = s.spawn(|| f.sync_data());
            std::thread::sleep(Duration::from_millis(10));
            f.write_all_at(b"during", 6).unwrap();
            syncing.join().unwrap().unwrap();
        });
        let after = io.crash_image(PowerCut::DropUnsynced);
        assert_eq!(read(&after, "/d/f").unwrap(), b"before");
    }

    #[test]
    fn locks_are_exclusive_and_released_on_drop() {
        let io = SimIo::new(2);
        create_dir_all_durable(&io, Path::new("/d")).unwrap();
        let guard = io.lock_dir(Path::new("/d")).unwrap();
        let err = io.lock_dir(Path::new("/d")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(guard);
        io.lock_dir(Path::new("/d")).unwrap();
    }

    #[test]
    fn removed_files_stay_readable_through_open_handles() {
        let io = SimIo::new(4);
        create_dir_all_durable(&io, Path::new("/d")).unwrap();
        let f = io.create(Path::new("/d/f")).unwrap();
        f.write_all_at(b"abc", 0).unwrap();
        io.remove(Path::new("/d/f")).unwrap();
        io.sync_dir(Path::new("/d")).unwrap();
        assert_eq!(f.read_all().unwrap(), b"abc");
        assert!(!io.exists(Path::new("/d/f")).unwrap());
    }

    proptest::proptest! {
        /// Whatever the mode, a surviving file is its durable image overlaid with some of the
        /// bytes written after it: never bytes nobody wrote.
        #[test]
        fn survivors_hold_only_written_bytes(
            durable in proptest::collection::vec(1u8..=255, 0..64),
            extra in proptest::collection::vec(1u8..=255, 0..64),
            at in 0usize..64,
            mode_pick in 0u8..4,
            knob in 0u64..2000,
        ) {
            let mut data = durable.clone();
            let at = at.min(data.len());
            data.truncate(at);
            data.extend_from_slice(&extra);
            let mode = match mode_pick {
                0 => PowerCut::DropUnsynced,
                1 => PowerCut::KeepUnsynced,
                2 => PowerCut::KeepPrefix { kept_per_mille: (knob % 1001) as u32 },
                _ => PowerCut::KeepSectors { seed: knob, sector_bytes: 1 + (knob as usize % 7) },
            };
            let out = after_power_cut(&durable, &data, 0, mode);
            for (i, &b) in out.iter().enumerate() {
                let from_durable = durable.get(i) == Some(&b);
                let from_data = data.get(i) == Some(&b);
                proptest::prop_assert!(from_durable || from_data || b == 0, "byte {} = {}", i, b);
            }
        }
    }
}
