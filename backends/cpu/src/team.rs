//! A team of threads that runs one subgraph together: every thread walks
//! the same schedule, thread 0 alone does the small serial work, and all of
//! them split the matmuls and attention, meeting at a spinning barrier.
//!
//! Why not a rayon call per op: a decode step runs ~200 matmuls of ~10 µs
//! each; handing each to rayon (wake a worker, join) costs a few µs, which
//! was a quarter of the step. One rayon broadcast per subgraph and a barrier
//! of two atomic operations per phase cost well under a microsecond.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Spins this many rounds before yielding the core: a phase usually ends
/// within microseconds, but on a busy machine a waiting thread must let the
/// one it waits for run.
const SPINS_BEFORE_YIELD: u32 = 1 << 8;

/// A reusable barrier for a fixed number of threads that spins instead of
/// sleeping.
pub(crate) struct SpinBarrier {
    threads: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    pub(crate) fn new(threads: usize) -> Self {
        SpinBarrier {
            threads: threads.max(1),
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    /// Waits until all threads have called `wait` for this generation.
    /// Everything a thread wrote before `wait` is visible to every thread
    /// after it (release on arrival, acquire on departure).
    pub(crate) fn wait(&self) {
        if self.threads == 1 {
            return;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::AcqRel);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if spins < SPINS_BEFORE_YIELD {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Work units split into one contiguous range per thread, taken from the
/// front by their owner and stolen from the back by threads that ran out.
///
/// Why contiguous: each thread then streams one long run of weights, which
/// the hardware prefetchers follow (decode was 1.6x faster than with
/// interleaved small chunks); stealing keeps a thread that the OS delayed
/// from holding everyone up.
pub(crate) struct WorkSplit {
    /// Per thread: `front | back << 32`, the units it has not taken yet.
    ranges: Vec<AtomicU64>,
}

impl WorkSplit {
    pub(crate) fn new(threads: usize) -> Self {
        WorkSplit {
            ranges: (0..threads.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Threads sharing the work.
    pub(crate) fn threads(&self) -> usize {
        self.ranges.len()
    }

    /// Splits `0..total` evenly; only while no thread takes work (in a
    /// serial phase).
    pub(crate) fn reset(&self, total: usize) {
        let total = total.min(u32::MAX as usize) as u64;
        let n = self.ranges.len() as u64;
        for (t, r) in self.ranges.iter().enumerate() {
            let (front, back) = (total * t as u64 / n, total * (t as u64 + 1) / n);
            r.store(front | (back << 32), Ordering::Relaxed);
        }
    }

    /// The next units for thread `me`: its own, front first, then other
    /// threads' from their back. `None` when all are taken.
    pub(crate) fn take(&self, me: usize, step: usize) -> Option<std::ops::Range<usize>> {
        let step = step.max(1) as u64;
        let n = self.ranges.len();
        for k in 0..n {
            let victim = (me + k) % n;
            let own = k == 0;
            let r = &self.ranges[victim];
            let mut cur = r.load(Ordering::Relaxed);
            loop {
                let (front, back) = (cur & 0xFFFF_FFFF, cur >> 32);
                if front >= back {
                    break;
                }
                let (next, range) = if own {
                    let end = (front + step).min(back);
                    (end | (back << 32), front..end)
                } else {
                    let start = back.saturating_sub(step).max(front);
                    (front | (start << 32), start..back)
                };
                match r.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => return Some(range.start as usize..range.end as usize),
                    Err(actual) => cur = actual,
                }
            }
        }
        None
    }
}

/// A value that thread 0 writes in a serial phase and every thread reads in
/// the following parallel phase; the barrier between them orders the two.
pub(crate) struct PhaseCell<T>(UnsafeCell<T>);

// SAFETY: access follows the phase discipline documented on the methods:
// one writer (thread 0) while the others wait at a barrier, then readers only.
unsafe impl<T: Send> Sync for PhaseCell<T> {}

impl<T> PhaseCell<T> {
    pub(crate) fn new(value: T) -> Self {
        PhaseCell(UnsafeCell::new(value))
    }

    /// # Safety
    /// Only thread 0, in a serial phase (every other thread is waiting at a
    /// barrier or has not started), and no reference from
    /// [`PhaseCell::get`] is alive.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn get_mut(&self) -> &mut T {
        // SAFETY: exclusive by the caller's contract.
        unsafe { &mut *self.0.get() }
    }

    /// # Safety
    /// Only in a parallel phase (after the barrier that ended the serial
    /// phase that wrote it), and until the next barrier.
    pub(crate) unsafe fn get(&self) -> &T {
        // SAFETY: no writer exists during a parallel phase (caller's contract).
        unsafe { &*self.0.get() }
    }

    pub(crate) fn into_inner(self) -> T {
        self.0.into_inner()
    }
}

/// Set when any thread fails, so that all of them leave the schedule at the
/// same barrier instead of waiting for a thread that stopped.
#[derive(Default)]
pub(crate) struct FailFlag(AtomicBool);

impl FailFlag {
    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}
