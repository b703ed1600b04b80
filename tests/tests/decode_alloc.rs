//! A decode step (one token appended to a warm session) allocates nothing:
//! counted with a global allocator wrapper. Runs in its own test binary so
//! no other test's allocations are counted.

use coordgen::{Engine, EngineOptions};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; it only
// counts allocations while `COUNTING` is set.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is `GlobalAlloc::alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn a_decode_step_allocates_nothing() {
    let Some(model) = coordgen_tests::default_model() else {
        return;
    };
    let engine = Engine::load(&model, EngineOptions::default()).unwrap();
    let mut session = engine.session();
    session.append(&[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    // Warm up: buffers grow to their steady-state sizes.
    for t in 0..8 {
        session.append(&[100 + t]).unwrap();
    }
    // The counter sees every thread of the process, the test harness's
    // included: one CI run under heavy load counted a single stray
    // allocation once. A decode path that allocates does so in every
    // round, so the best of three rounds of 32 steps must be clean.
    let mut best = usize::MAX;
    for round in 0..3u32 {
        let mut worst = 0;
        for t in 0..32 {
            ALLOCATIONS.store(0, Ordering::Relaxed);
            COUNTING.store(true, Ordering::Relaxed);
            let step = session.append(&[200 + 32 * round + t]);
            COUNTING.store(false, Ordering::Relaxed);
            step.unwrap();
            worst = worst.max(ALLOCATIONS.load(Ordering::Relaxed));
        }
        best = best.min(worst);
        if best == 0 {
            break;
        }
    }
    assert_eq!(
        best, 0,
        "a decode step allocated {best} times in every round"
    );
}
