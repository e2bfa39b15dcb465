//! Keeping rayon's workers awake for the length of a forward step.
//!
//! A one-stream decode step is about 150 short parallel sections (each projection, attention)
//! with a little serial work between them. Rayon puts a worker that finds nothing to do to
//! sleep after a few rounds of `sched_yield`, and the next section wakes it with a futex: on
//! two cores that sleeping and waking was about a fifth of a one-stream step's samples
//! (`docs/BENCHMARKS.md`, "Quantized projections, third pass"). Here another worker spins on
//! the pool's queues while the step runs, as llama.cpp's threads do, and goes back to rayon's
//! own sleeping as soon as it returns.

use std::sync::atomic::{AtomicBool, Ordering};

/// Empty polls between the spinning workers' `sched_yield`s, which let other runnable
/// threads (the server's) have the core.
const POLLS_PER_YIELD: u32 = 64;

/// Runs `work` on one of rayon's threads while another worker of the pool takes the jobs it
/// spawns as soon as they appear, instead of sleeping between them.
///
/// One such worker, not one per thread: the spinning job sits at the bottom of the owner's
/// queue, so the first thread to steal anything of this step takes it, before any of the
/// step's own jobs. A second spinning job could be stolen by a thread already inside one of
/// the step's jobs (waiting on a join there), which would then spin until the step ends while
/// the step waits for it. Pools of more than two threads keep rayon's sleeping for the rest.
pub fn run_with_workers_awake<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    let done = AtomicBool::new(false);
    let done = &done;
    rayon::scope(|scope| {
        let owner = rayon::current_thread_index();
        if rayon::current_num_threads() > 1 {
            scope.spawn(move |_| take_jobs_until(done, owner));
        }
        // Set however `work` ends: the scope waits for the spinning jobs, so a panic that
        // left `done` unset would hang here instead of reaching the caller.
        let _done_on_exit = DoneOnDrop(done);
        work()
    })
}

/// Sets its flag when dropped.
struct DoneOnDrop<'a>(&'a AtomicBool);

impl Drop for DoneOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Executes the pool's pending jobs until `done`. On `owner` (the thread running the work,
/// which can pick this job up itself while it waits inside a join) it returns at once:
/// spinning there would wait for the work it interrupted.
fn take_jobs_until(done: &AtomicBool, owner: Option<usize>) {
    if rayon::current_thread_index() == owner {
        return;
    }
    let mut idle_polls = 0u32;
    while !done.load(Ordering::Acquire) {
        if let Some(rayon::Yield::Executed) = rayon::yield_now() {
            idle_polls = 0;
            continue;
        }
        idle_polls += 1;
        if idle_polls.is_multiple_of(POLLS_PER_YIELD) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    fn pool_of(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    #[test]
    fn the_work_and_its_parallel_sections_finish_on_pools_of_any_size() {
        for threads in [1, 2, 4] {
            let pool = pool_of(threads);
            let total = pool.install(|| {
                run_with_workers_awake(|| {
                    // Many sections, nested joins: the owner waits inside joins whose other
                    // halves the awake workers took.
                    (0..200u64)
                        .map(|i| (0..1000u64).into_par_iter().map(|j| i * j).sum::<u64>())
                        .sum::<u64>()
                })
            });
            let want: u64 = (0..200u64).map(|i| i * (999 * 1000 / 2)).sum();
            assert_eq!(total, want, "{threads} threads");
        }
    }

    #[test]
    fn the_other_workers_take_the_work_and_then_stop_spinning() {
        let pool = pool_of(2);
        let owner_and_helpers = pool.install(|| {
            run_with_workers_awake(|| {
                let owner = rayon::current_thread_index();
                let threads: std::collections::HashSet<_> = (0..64)
                    .into_par_iter()
                    .map(|_| {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                        rayon::current_thread_index()
                    })
                    .collect();
                (owner, threads)
            })
        });
        let (owner, threads) = owner_and_helpers;
        assert!(threads.len() == 2, "both workers took jobs: {threads:?}");
        assert!(threads.contains(&owner));
        // Returned: the helper saw `done` (a helper still spinning would keep `install`'s
        // pool busy, and the scope would not have ended).
    }

    #[test]
    fn the_thread_running_the_work_never_spins() {
        // Its own queue may hand it a helper job while it waits inside a join; that job must
        // return, since `done` waits on this very thread.
        let pool = pool_of(2);
        pool.install(|| {
            let never = AtomicBool::new(false);
            take_jobs_until(&never, rayon::current_thread_index());
        });
    }

    #[test]
    fn a_panicking_step_reaches_the_caller_instead_of_hanging() {
        let pool = pool_of(2);
        let outcome = pool.install(|| {
            std::panic::catch_unwind(|| {
                run_with_workers_awake(|| {
                    (0..100).into_par_iter().for_each(|_| {});
                    panic!("a step that fails");
                })
            })
        });
        assert!(outcome.is_err());
    }
}
