//! Integration tests for `cairn-server`: one binary, one module per concern.

mod memory_network;
mod power_cut;
mod replica_power_cut;

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

/// What the in-process nodes logged lately (all tests of this binary alike), for a test
/// that fails to print: the last [`RECORDED_LINES_MAX`] lines.
static RECORDED: OnceLock<Mutex<VecDeque<String>>> = OnceLock::new();
const RECORDED_LINES_MAX: usize = 4_000;
/// What is recorded unless `CAIRN_TEST_LOG` says otherwise.
const RECORDED_FILTER: &str = "cairn_server=info,cairn_raft=info,cairn_server::balancer=debug";

/// Logs of the in-process nodes: on stderr as they come when `CAIRN_TEST_LOG` names a
/// filter (`CAIRN_TEST_LOG=cairn_server=debug`); otherwise kept in memory, and printed
/// at the first panic.
pub(crate) fn init_log() {
    let _ = match std::env::var("CAIRN_TEST_LOG") {
        Ok(filter) => tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init(),
        Err(_) => {
            let installed = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(RECORDED_FILTER))
                .with_ansi(false)
                .with_writer(|| Recorder)
                .try_init();
            if installed.is_ok() {
                // The first panic prints what was recorded, whichever check failed.
                let default = std::panic::take_hook();
                std::panic::set_hook(Box::new(move |info| {
                    static DUMPED: std::sync::atomic::AtomicBool =
                        std::sync::atomic::AtomicBool::new(false);
                    if !DUMPED.swap(true, std::sync::atomic::Ordering::SeqCst) {
                        dump_log();
                    }
                    default(info);
                }));
            }
            installed
        }
    };
}

/// Prints what was recorded (nothing when the logs went to stderr already).
fn dump_log() {
    let Some(lines) = RECORDED.get() else {
        return;
    };
    let lines = lines.lock().unwrap_or_else(|e| e.into_inner());
    eprintln!("--- the last {} lines the nodes logged ---", lines.len());
    for line in lines.iter() {
        eprint!("{line}");
    }
    eprintln!("--- end of the nodes' log ---");
}

struct Recorder;

impl std::io::Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut lines = RECORDED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if lines.len() == RECORDED_LINES_MAX {
            lines.pop_front();
        }
        lines.push_back(String::from_utf8_lossy(buf).into_owned());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
