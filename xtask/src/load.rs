//! A busy machine on demand: `cargo xtask test --under-load` runs the
//! suite beside one CPU-bound thread per CPU, at normal priority, so that
//! every test binary, cargo and the kernel's own work compete for the CPUs
//! as they do on a shared CI host.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};

/// The busy threads; they stop when this is dropped.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts one busy thread per CPU this process may run on.
    pub fn start() -> Load {
        let n = thread::available_parallelism().map_or(1, |n| n.get());
        out!("under load: {n} busy threads (one per CPU) run beside the suite");
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                thread::spawn(move || spin(&stop))
            })
            .collect();
        Load { stop, threads }
    }
}

/// Arithmetic until `stop`, checked every few thousand steps.
fn spin(stop: &AtomicBool) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..4096 {
            x = black_box(x.rotate_left(7).wrapping_mul(0x2545_f491_4f6c_dd1d));
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
