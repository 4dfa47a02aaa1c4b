//! Durable puts from many threads (`SyncPolicy::Always`, group commit), timed: the workload
//! whose cost the visibility rule (a write is visible only once durable) would show.
//!
//! ```sh
//! cargo run --release -p cairn-storage --example durable_puts -- DIR THREADS PUTS
//! ```
//!
//! Prints puts per second and writes per fsync. `DIR` is emptied first.

use std::sync::Arc;
use std::time::Instant;

use cairn_storage::{Engine, Options, SyncPolicy};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("usage: durable_puts DIR THREADS PUTS"));
    let threads: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(16);
    let puts: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(40_000);
    let _ = std::fs::remove_dir_all(&dir);
    let options = Options {
        sync: SyncPolicy::Always,
        merge_background: false,
        ..Options::default()
    };
    let engine = Arc::new(Engine::open(&dir, options).expect("open"));
    let per = puts / threads;
    let value = vec![b'v'; 100];
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (engine, value) = (engine.clone(), &value);
            s.spawn(move || {
                for i in 0..per {
                    engine
                        .put(format!("durable-{t}-{i}").as_bytes(), value)
                        .expect("put");
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let stats = engine.stats();
    println!(
        "{threads} threads: {:.0} puts/s, {:.1} writes/fsync",
        (per * threads) as f64 / elapsed.as_secs_f64(),
        stats.writes as f64 / stats.syncs.max(1) as f64
    );
}
