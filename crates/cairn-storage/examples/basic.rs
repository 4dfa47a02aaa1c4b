//! The README example: open, write, batch, scan, TTL, reopen.
//!
//! Run with `cargo run -p cairn-storage --example basic`.

use std::ops::Bound;

use cairn_storage::{Engine, Options, WriteBatch, now_ms};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("cairn-storage-example-{}", std::process::id()));
    {
        // Options::default() is durable: a put that returned is on disk (SyncPolicy::Always).
        let engine = Engine::open(&dir, Options::default())?;
        engine.put(b"user:1", b"ada")?;
        engine.put_with_expiry(b"session:9", b"token", Some(now_ms() + 60_000))?;

        // A batch is atomic, even across a crash, and can carry a version and a marker.
        let mut batch = WriteBatch::new();
        batch
            .put(b"user:2", b"grace")
            .put(b"user:3", b"barbara")
            .delete(b"user:1");
        batch.set_last_applied(b"log-index-42");
        engine.write(batch)?;

        for entry in engine.scan_prefix(b"user:", 10)? {
            println!(
                "{} = {} (version {})",
                String::from_utf8_lossy(&entry.key),
                String::from_utf8_lossy(&entry.value),
                entry.version
            );
        }
        let all = engine.scan(Bound::Unbounded, Bound::Unbounded, 100)?;
        println!("{} live keys, stats: {:?}", all.len(), engine.stats());
        engine.close()?;
    }
    // Reopen: everything is back, including the replication marker.
    let engine = Engine::open(&dir, Options::default())?;
    assert_eq!(engine.get(b"user:2")?.as_deref(), Some(&b"grace"[..]));
    assert_eq!(engine.get(b"user:1")?, None);
    assert_eq!(engine.last_applied().as_deref(), Some(&b"log-index-42"[..]));
    engine.close()?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
