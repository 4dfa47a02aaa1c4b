//! A shard replica's directory: the engine in use, and engines received from a leader waiting
//! to replace it.
//!
//! ```text
//! <replica>/CURRENT          "engine-<n>\n", replaced atomically (write, fsync, rename, fsync)
//! <replica>/engine-<n>/      the engine in use
//! <replica>/engine-<m>/      a snapshot being received or checked (m > n), or one that a
//!                            crash left behind; removed at open
//! ```
//!
//! Installing a received snapshot is one atomic step on disk, the rename of `CURRENT`: before
//! it the replica is wholly the old engine, after it wholly the new one. In memory the engine
//! handle is swapped under a lock, so a reader sees one engine or the other, never a mix; the
//! old engine is closed and its directory removed once the last reader lets go of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn_storage::io::{self, Io};
use cairn_storage::{Engine, Error, Options, Result};
use parking_lot::{Mutex, RwLock};

/// The file naming the engine directory in use.
const CURRENT: &str = "CURRENT";
const ENGINE_PREFIX: &str = "engine-";
/// How often a retired engine is checked for readers still holding it.
const RETIRE_POLL: Duration = Duration::from_millis(5);

fn engine_name(generation: u64) -> String {
    format!("{ENGINE_PREFIX}{generation:06}")
}

fn parse_engine_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(ENGINE_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A shard replica on disk: its engine, replaceable as a whole by a received snapshot.
#[derive(Debug)]
pub struct Replica {
    io: Arc<dyn Io>,
    dir: PathBuf,
    options: Options,
    /// The engine in use and its generation.
    engine: RwLock<(u64, Arc<Engine>)>,
    /// The next generation to stage a snapshot in.
    next: AtomicU64,
    /// Serialises installs (openraft installs one at a time; this makes it a property).
    install: Mutex<()>,
}

impl Replica {
    /// Whether `dir` holds a replica (its `CURRENT` file names an engine): a directory a
    /// split was building when a crash cut it short does not.
    pub fn is_present(io: &dyn Io, dir: &Path) -> Result<bool> {
        Ok(io.exists(&dir.join(CURRENT))?)
    }

    /// Opens the replica in `dir` (created if missing), removing whatever a crash left of
    /// snapshots being received or engines being retired.
    pub fn open(io: Arc<dyn Io>, dir: &Path, options: Options) -> Result<Replica> {
        io::create_dir_all_durable(&*io, dir)?;
        let current_path = dir.join(CURRENT);
        let generation = if io.exists(&current_path)? {
            let bytes = io.open(&current_path)?.read_all()?;
            let text = std::str::from_utf8(&bytes).unwrap_or("");
            parse_engine_name(text.trim_end_matches('\n')).ok_or_else(|| Error::Corruption {
                file: current_path.display().to_string(),
                offset: 0,
                reason: format!("does not name an engine directory: {text:?}"),
            })?
        } else {
            // A new replica (or one whose creation a crash cut short: `CURRENT` is written
            // before anything is applied, so there is nothing to keep).
            1
        };
        let mut highest = generation;
        for name in io.list_dir(dir)? {
            match parse_engine_name(&name) {
                Some(g) if g != generation => {
                    highest = highest.max(g);
                    io::remove_dir_all_durable(&*io, &dir.join(&name))?;
                }
                _ => {}
            }
        }
        let engine_dir = dir.join(engine_name(generation));
        let engine = Engine::open_with_io(&engine_dir, options.clone(), io.clone())?;
        if !io.exists(&current_path)? {
            io::write_file_atomic(&*io, &current_path, current_text(generation).as_bytes())?;
        }
        Ok(Replica {
            io,
            dir: dir.to_path_buf(),
            options,
            engine: RwLock::new((generation, Arc::new(engine))),
            next: AtomicU64::new(highest + 1),
            install: Mutex::new(()),
        })
    }

    /// The engine in use. Hold it only for the duration of one operation: an install replaces
    /// it, and the old one is closed once nobody holds it.
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.read().1.clone()
    }

    /// The engine options (a staged engine opens with the same).
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The file system the replica runs on.
    pub fn io(&self) -> &Arc<dyn Io> {
        &self.io
    }

    /// A new, unused directory to receive a snapshot into (it does not exist yet).
    pub fn staging_dir(&self) -> PathBuf {
        let generation = self.next.fetch_add(1, Ordering::Relaxed);
        self.dir.join(engine_name(generation))
    }

    /// Makes `engine`, opened in a directory from [`Replica::staging_dir`], the replica's
    /// engine: durably (the rename of `CURRENT`) and at once for readers. The old engine is
    /// closed and removed in the background once its last reader lets go.
    pub fn install(&self, engine: Engine) -> Result<()> {
        let _one = self.install.lock();
        let name = engine
            .dir()
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|_| engine.dir().parent() == Some(self.dir.as_path()));
        let Some(generation) = name.and_then(parse_engine_name) else {
            return Err(Error::InvalidCheckpoint(format!(
                "{} is not a staging directory of {}",
                engine.dir().display(),
                self.dir.display()
            )));
        };
        io::write_file_atomic(
            &*self.io,
            &self.dir.join(CURRENT),
            current_text(generation).as_bytes(),
        )?;
        let old = std::mem::replace(&mut *self.engine.write(), (generation, Arc::new(engine)));
        retire(self.io.clone(), old.1);
        Ok(())
    }
}

fn current_text(generation: u64) -> String {
    format!("{}\n", engine_name(generation))
}

/// Closes `engine` once no reader holds it, then removes its directory. A crash before that
/// leaves the directory to [`Replica::open`].
fn retire(io: Arc<dyn Io>, engine: Arc<Engine>) {
    let spawned = std::thread::Builder::new()
        .name("cairn-replica-retire".into())
        .spawn(move || {
            let mut engine = engine;
            let engine = loop {
                match Arc::try_unwrap(engine) {
                    Ok(engine) => break engine,
                    Err(shared) => {
                        engine = shared;
                        std::thread::sleep(RETIRE_POLL);
                    }
                }
            };
            let dir = engine.dir().to_path_buf();
            if let Err(e) = engine.close() {
                tracing::warn!(dir = %dir.display(), error = %e, "closing a replaced engine failed");
            }
            if let Err(e) = io::remove_dir_all_durable(&*io, &dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "removing a replaced engine failed");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no thread to retire a replaced engine; it stays until restart");
    }
}
