//! A team of threads that runs one subgraph together: every thread walks
//! the same schedule, thread 0 alone does the small serial work, and all of
//! them split the matmuls and attention, meeting at a spinning barrier.
//!
//! Why not a rayon call per op: a decode step runs ~200 matmuls of ~10 µs
//! each; handing each to rayon (wake a worker, join) costs a few µs, which
//! was a quarter of the step. One [`TeamPool::run`] per subgraph and a
//! barrier of two atomic operations per phase cost well under a
//! microsecond, and allocate nothing.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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

/// The job of one run: every team thread calls it with its index.
type TeamJob<'a> = &'a (dyn Fn(usize) + Sync);

/// Persistent team threads: the calling thread is member 0, `threads - 1`
/// workers wait for work, spinning briefly and then parked.
///
/// Why not rayon here: its `broadcast` allocates per call and hands the work
/// to pool threads while the caller sleeps. This pool allocates nothing per
/// run (a decode step allocates nothing), and the caller works as member 0,
/// so a run wakes one thread fewer.
pub(crate) struct TeamPool {
    shared: Arc<PoolShared>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// One run at a time.
    running: Mutex<()>,
}

struct PoolShared {
    /// Bumped once per run (and once more at shutdown).
    generation: AtomicUsize,
    /// The current run's job, a `TeamJob` with its lifetime erased; only
    /// read by workers between the generation bump and their `done` mark.
    job: UnsafeCell<Option<*const (dyn Fn(usize) + Sync)>>,
    /// Workers that have not finished the current run.
    pending: AtomicUsize,
    shutdown: AtomicBool,
}

// SAFETY: `job` is written by the caller only while no worker reads it (all
// workers finished the previous run, `pending == 0`), published with the
// release bump of `generation`, and read after the acquire load of it.
unsafe impl Sync for PoolShared {}
// SAFETY: as above; the raw job pointer is only dereferenced during a run,
// while the caller keeps the job alive.
unsafe impl Send for PoolShared {}

impl TeamPool {
    /// A team of `threads` (at least 1) members.
    pub(crate) fn new(threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(PoolShared {
            generation: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            pending: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
        });
        let mut workers = Vec::new();
        for index in 1..threads.max(1) {
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("coordgen-cpu-{index}"))
                .spawn(move || worker_loop(&shared, index))?;
            workers.push(handle);
        }
        Ok(TeamPool {
            shared,
            workers,
            running: Mutex::new(()),
        })
    }

    /// Members, the caller included.
    pub(crate) fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `job(i)` on every member `i` (the caller is member 0) and
    /// returns when all have finished. `job` must not panic (team runs catch
    /// their panics); a panicking worker still counts as finished.
    pub(crate) fn run(&self, job: TeamJob<'_>) {
        let _one_at_a_time = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let shared = &*self.shared;
        shared.pending.store(self.workers.len(), Ordering::Relaxed);
        // SAFETY: no worker reads `job` now: every one finished the last run
        // (`pending` reached 0 before the last `run` returned), and the
        // release bump below publishes the write. The lifetime is erased
        // because this function does not return before all workers are done
        // with the job.
        unsafe {
            let erased: *const (dyn Fn(usize) + Sync + '_) = job;
            *shared.job.get() = Some(std::mem::transmute::<
                *const (dyn Fn(usize) + Sync + '_),
                *const (dyn Fn(usize) + Sync + 'static),
            >(erased));
        }
        shared.generation.fetch_add(1, Ordering::Release);
        for w in &self.workers {
            w.thread().unpark();
        }
        job(0);
        let mut spins = 0u32;
        while shared.pending.load(Ordering::Acquire) != 0 {
            if spins < SPINS_BEFORE_YIELD {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

impl Drop for TeamPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.generation.fetch_add(1, Ordering::Release);
        for w in self.workers.drain(..) {
            w.thread().unpark();
            let _ = w.join();
        }
    }
}

/// Spins this long for the next run before parking: decode steps come back
/// to back, and waking a parked thread costs tens of microseconds.
const SPINS_BEFORE_PARK: u32 = 1 << 14;

fn worker_loop(shared: &PoolShared, index: usize) {
    // Generation 0 is the pool's start: a run that began before this thread
    // got here (bumping it to 1) must still be seen as new.
    let mut seen = 0;
    loop {
        let mut spins = 0u32;
        let current = loop {
            let g = shared.generation.load(Ordering::Acquire);
            if g != seen {
                break g;
            }
            if spins < SPINS_BEFORE_PARK {
                spins += 1;
                std::hint::spin_loop();
            } else {
                // An unpark between the load above and this park leaves a
                // token, so this returns at once: no wake-up is lost.
                std::thread::park();
            }
        };
        seen = current;
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: read after the acquire load that saw this run's bump; the
        // caller keeps the job alive until `pending` reaches 0.
        if let Some(job) = unsafe { *shared.job.get() } {
            // SAFETY: as above: the pointee outlives this call.
            let job = unsafe { &*job };
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(index)));
        }
        shared.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run right after the pool starts (before its workers reached their
    /// loop) must still reach every worker; back-to-back runs too.
    #[test]
    fn every_member_runs_every_job() -> std::io::Result<()> {
        for threads in [1, 2, 3] {
            for _ in 0..100 {
                let pool = TeamPool::new(threads)?;
                for round in 1..=3 {
                    let calls = AtomicUsize::new(0);
                    pool.run(&|_| {
                        calls.fetch_add(1, Ordering::Relaxed);
                    });
                    assert_eq!(calls.load(Ordering::Relaxed), threads, "round {round}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn members_meet_at_the_barrier() -> std::io::Result<()> {
        let pool = TeamPool::new(2)?;
        let barrier = SpinBarrier::new(2);
        let seen = [AtomicUsize::new(0), AtomicUsize::new(0)];
        pool.run(&|i| {
            seen[i].store(1, Ordering::Relaxed);
            barrier.wait();
            // After the barrier each member sees the other's write.
            assert_eq!(seen[1 - i].load(Ordering::Relaxed), 1);
        });
        Ok(())
    }
}
