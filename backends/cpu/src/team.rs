//! A team of threads that runs one subgraph together: every thread walks
//! the same schedule, thread 0 alone does the small serial work, and all of
//! them split the matmuls and attention, meeting at a spinning barrier.
//!
//! Why not a rayon call per op: a decode step runs ~200 matmuls of ~10 µs
//! each; handing each to rayon (wake a worker, join) costs a few µs, which
//! was a quarter of the step. One rayon broadcast per subgraph and a barrier
//! of two atomic operations per phase cost well under a microsecond.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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

/// Work units handed out in chunks from a shared counter, so that a thread
/// slowed down by the OS simply takes fewer of them.
pub(crate) struct WorkCounter {
    next: AtomicUsize,
}

impl WorkCounter {
    pub(crate) fn new() -> Self {
        WorkCounter {
            next: AtomicUsize::new(0),
        }
    }

    /// Resets the counter; only while no thread takes work (between barriers).
    pub(crate) fn reset(&self) {
        self.next.store(0, Ordering::Relaxed);
    }

    /// The next range of at most `chunk` units below `total`, if any is left.
    pub(crate) fn take(&self, chunk: usize, total: usize) -> Option<std::ops::Range<usize>> {
        let start = self.next.fetch_add(chunk, Ordering::Relaxed);
        (start < total).then(|| start..(start + chunk).min(total))
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
