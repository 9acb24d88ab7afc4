//! The compute team: `threads − 1` persistent OS threads that run the index jobs of
//! [`run_indexed`] with the calling thread, and **spin** for [`TEAM_SPIN`] after each call
//! before they sleep.
//!
//! Decides: how a parallel region starts and ends. A decode step is hundreds of small
//! regions (a 1024 × 256 projection takes ~20 µs); waking a parked thread (futex, scheduler)
//! costs about as much, so with rayon's sleeping workers the small matrices ran faster on one
//! thread (`MATMUL_PARALLEL_MIN_MACS` was 4 Mi) and two-thread decode kept a third of its
//! work serial. Members that spin between regions start a region's jobs within a cache-line
//! transfer, as llama.cpp's thread pool does; after [`TEAM_SPIN`] without work they park, so
//! an idle process holds no core.
//!
//! Protocol (one region at a time; [`run_indexed`] falls back to rayon when another thread
//! holds the team, and runs inline when called from inside a team job):
//! - the caller stores the job (a pointer to its `&dyn Fn(usize)`, valid until it returns),
//!   the job count and how many members take part, then publishes a new epoch in the
//!   `ticket` word (`epoch << 32 | next index`, release) and wakes parked members;
//! - every participant claims indices by compare-and-swap on `ticket`, which fails once the
//!   epoch moved on, so a late member can never claim (and so never calls) a finished job;
//! - `pending` counts jobs not yet finished; the caller, after claiming what it can, spins
//!   until it is zero (acquire), and only then returns (or re-raises a job's panic).

use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a member spins for the next region before it parks (a decode step's regions
/// are microseconds apart; a request's end, or a cluster round trip, is longer).
pub const TEAM_SPIN: Duration = Duration::from_micros(300);

/// Spin iterations between two clock reads while a member waits.
const SPINS_PER_CLOCK_READ: u32 = 256;

/// Bits of the ticket word that hold the next job index (so at most 2^32 − 1 jobs a region).
const INDEX_BITS: u32 = 32;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;

type Job<'a> = &'a (dyn Fn(usize) + Sync);

struct Team {
    /// `epoch << 32 | next unclaimed index` of the current region.
    ticket: AtomicU64,
    /// Jobs of the current region.
    n_jobs: AtomicUsize,
    /// Members `0..participants` take part in the current region.
    participants: AtomicUsize,
    /// Points at the caller's `Job` (on its stack) while a region runs.
    job: AtomicPtr<Job<'static>>,
    /// Jobs of the current region not yet finished.
    pending: AtomicUsize,
    /// The first panic of a job of the current region.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Held by the thread running a region.
    busy: AtomicBool,
    /// Members started so far.
    members: Mutex<usize>,
    /// Members parked on `wake`.
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
}

thread_local! {
    /// Set while this thread runs a team job (nested regions then run inline).
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
}

fn team() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| Team {
        ticket: AtomicU64::new(0),
        n_jobs: AtomicUsize::new(0),
        participants: AtomicUsize::new(0),
        job: AtomicPtr::new(std::ptr::null_mut()),
        pending: AtomicUsize::new(0),
        panic: Mutex::new(None),
        busy: AtomicBool::new(false),
        members: Mutex::new(0),
        sleepers: AtomicUsize::new(0),
        sleep_lock: Mutex::new(()),
        wake: Condvar::new(),
    })
}

/// Runs `f(i)` for every `i < n` on the calling thread and up to `threads − 1` team members
/// (see the module docs), returning when all have run. A panicking job re-raises its panic
/// here after every other job finished.
pub fn run_indexed(n: usize, threads: usize, f: &(dyn Fn(usize) + Sync)) {
    let threads = threads.min(n).min(crate::MATMUL_THREADS_MAX);
    if threads <= 1 || IN_JOB.with(Cell::get) {
        (0..n).for_each(f);
        return;
    }
    let t = team();
    if t.busy
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return run_on_rayon(n, threads, f);
    }
    t.grow(threads - 1);
    let job: Job<'_> = f;
    // SAFETY: the pointer is only dereferenced by a participant that claimed an index of
    // this region, and this function does not return (the guard below waits) before every
    // claimed job finished; after that no claim of this epoch can succeed.
    let job_ptr = (&job as *const Job<'_>).cast::<Job<'static>>().cast_mut();
    t.job.store(job_ptr, Ordering::Relaxed);
    t.n_jobs.store(n, Ordering::Relaxed);
    t.participants.store(threads - 1, Ordering::Relaxed);
    t.pending.store(n, Ordering::Relaxed);
    let epoch = (t.ticket.load(Ordering::Relaxed) >> INDEX_BITS) + 1;
    t.ticket.store(epoch << INDEX_BITS, Ordering::SeqCst);
    if t.sleepers.load(Ordering::SeqCst) > 0 {
        let _g = t.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
        t.wake.notify_all();
    }
    let region = Region { team: t };
    t.drain(epoch);
    drop(region);
}

/// Waits for the region's jobs, frees the team, re-raises a job's panic (also when the
/// caller's own job unwinds, so the job it points to outlives every member's use of it).
struct Region {
    team: &'static Team,
}

impl Drop for Region {
    fn drop(&mut self) {
        let t = self.team;
        while t.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        t.job.store(std::ptr::null_mut(), Ordering::Relaxed);
        let panic = t.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        t.busy.store(false, Ordering::Release);
        if let Some(p) = panic {
            if !std::thread::panicking() {
                resume_unwind(p);
            }
        }
    }
}

impl Team {
    /// Starts members until there are `want`.
    fn grow(&'static self, want: usize) {
        let mut have = self.members.lock().unwrap_or_else(|e| e.into_inner());
        while *have < want {
            let index = *have;
            let spawned = std::thread::Builder::new()
                .name(format!("moe-team-{index}"))
                .spawn(move || self.member(index));
            if spawned.is_err() {
                // Fewer members: the region still completes, with the threads there are.
                break;
            }
            *have += 1;
        }
    }

    /// Claims and runs jobs of region `epoch` until none is left.
    fn drain(&self, epoch: u64) {
        let was = IN_JOB.with(|c| c.replace(true));
        while let Some(i) = self.claim(epoch) {
            // SAFETY: see `run_indexed`: a successful claim means the caller still waits.
            let job: Job<'_> = unsafe { *self.job.load(Ordering::Relaxed) };
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| job(i))) {
                let mut slot = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                slot.get_or_insert(p);
            }
            self.pending.fetch_sub(1, Ordering::Release);
        }
        IN_JOB.with(|c| c.set(was));
    }

    /// The next unclaimed index of region `epoch`, if that region is current and has one.
    fn claim(&self, epoch: u64) -> Option<usize> {
        let mut cur = self.ticket.load(Ordering::Acquire);
        loop {
            let index = (cur & INDEX_MASK) as usize;
            if cur >> INDEX_BITS != epoch || index >= self.n_jobs.load(Ordering::Relaxed) {
                return None;
            }
            match self.ticket.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(index),
                Err(now) => cur = now,
            }
        }
    }

    /// A member's life: wait for a region (spinning, then parked), take part if its index
    /// is among the region's participants.
    fn member(&self, index: usize) {
        let mut seen = self.ticket.load(Ordering::Acquire) >> INDEX_BITS;
        loop {
            let epoch = self.next_epoch(seen);
            seen = epoch;
            if index < self.participants.load(Ordering::Relaxed) {
                self.drain(epoch);
            }
        }
    }

    /// Waits for an epoch after `seen`: spins for [`TEAM_SPIN`], then parks.
    fn next_epoch(&self, seen: u64) -> u64 {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let epoch = self.ticket.load(Ordering::Acquire) >> INDEX_BITS;
            if epoch != seen {
                return epoch;
            }
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(SPINS_PER_CLOCK_READ) && start.elapsed() >= TEAM_SPIN {
                break;
            }
        }
        let mut g = self.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        loop {
            let epoch = self.ticket.load(Ordering::SeqCst) >> INDEX_BITS;
            if epoch != seen {
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
                return epoch;
            }
            g = self.wake.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The region on rayon's pool, for a caller that found the team held by another thread.
fn run_on_rayon(n: usize, threads: usize, f: &(dyn Fn(usize) + Sync)) {
    let next = AtomicUsize::new(0);
    let drain = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        f(i);
    };
    rayon::in_place_scope(|s| {
        for _ in 1..threads {
            s.spawn(|_| drain());
        }
        drain();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every index runs exactly once, for many regions in a row (members spinning between
    /// them) and after a pause long enough for them to park.
    #[test]
    fn every_index_once_across_regions() {
        for round in 0..200 {
            let n = round % 17;
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            run_indexed(n, 1 + round % 4, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "round {round}"
            );
            if round % 50 == 49 {
                std::thread::sleep(TEAM_SPIN * 4);
            }
        }
    }

    /// Regions from several threads at once: one holds the team, the others take the rayon
    /// path; each still runs its indices exactly once.
    #[test]
    fn concurrent_callers() {
        std::thread::scope(|s| {
            for caller in 0..4 {
                s.spawn(move || {
                    for _ in 0..100 {
                        let n = 8 + caller;
                        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                        run_indexed(n, 3, &|i| {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                    }
                });
            }
        });
    }

    /// A region inside a job runs inline, and all of its indices run.
    #[test]
    fn nested_regions_run_inline() {
        let total = AtomicUsize::new(0);
        run_indexed(4, 2, &|_| {
            run_indexed(5, 2, &|_| {
                total.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(total.load(Ordering::Relaxed), 20);
    }

    /// A panicking job reaches the caller after the region ends, and the team serves the
    /// next region.
    #[test]
    fn panic_propagates_and_team_recovers() {
        let r = catch_unwind(|| {
            run_indexed(8, 2, &|i| {
                if i == 5 {
                    panic!("job five");
                }
            })
        });
        let msg = r.expect_err("the panic must reach the caller");
        assert_eq!(msg.downcast_ref::<&str>(), Some(&"job five"));
        let hits = AtomicUsize::new(0);
        run_indexed(8, 2, &|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 8);
    }
}
