//! [`run_jobs`]: a list of independent jobs run on at most `threads` threads of the compute
//! team (`team.rs`), each thread taking the next job as it finishes one (dynamic load
//! balance, one region for the whole list instead of one per matrix).
//!
//! Decides only the scheduling; what a job computes, and that its output is disjoint from
//! every other job's, is the caller's (jobs own their outputs, so this is checked by the
//! borrow checker).

use std::sync::Mutex;

use crate::team::run_indexed;

/// Runs `work(job)` for every job, on the calling thread and up to `threads - 1` team
/// members, and returns when all have run. Jobs start in list order; a job that panics
/// propagates the panic to the caller after the others finish.
pub fn run_jobs<J, F>(jobs: Vec<J>, threads: usize, work: F)
where
    J: Send,
    F: Fn(J) + Sync,
{
    let n = jobs.len();
    if threads.min(n) <= 1 {
        jobs.into_iter().for_each(work);
        return;
    }
    // One slot per job, taken exactly once (each index runs once), so the mutexes are never
    // contended; they only make the hand-over safe.
    let slots: Vec<Mutex<Option<J>>> = jobs.into_iter().map(|j| Mutex::new(Some(j))).collect();
    run_indexed(n, threads, &|i| {
        let job = slots[i].lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(job) = job {
            work(job);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Every job runs exactly once, whatever the thread count (more threads than jobs,
    /// one thread, none).
    #[test]
    fn every_job_once() {
        for threads in [0, 1, 2, 3, 64] {
            for n in [0usize, 1, 5, 100] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                run_jobs((0..n).collect(), threads, |i: usize| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "threads {threads}, jobs {n}"
                );
            }
        }
    }
}
