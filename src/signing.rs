//! Threads for slow signatures. An RSA signature takes a few hundred
//! microseconds: on the async workers it would hold up every request queued
//! behind it. Minting hands such work to these threads (one per core) and
//! awaits the result, so discovery and JWKS keep flowing while minting
//! saturates the CPU. Under load a signing thread works through its queue
//! back to back and hands the results over a few at a time, so the switch
//! back to the async workers is paid once per batch, not once per signature.
//!
//! Knows nothing of keys or tokens: it runs closures.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// Runs the work and returns what hands its result over.
type Job = Box<dyn FnOnce() -> Delivery + Send>;
type Delivery = Box<dyn FnOnce() + Send>;

/// Most results held back while more work is queued.
const BATCH: usize = 32;

pub struct SigningThreads {
    queue: Mutex<Option<mpsc::Sender<Job>>>,
}

impl SigningThreads {
    /// Starts `threads` threads; they end when this is dropped.
    pub fn start(threads: usize) -> std::io::Result<Arc<SigningThreads>> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("signing-{i}"))
                .spawn(move || work(&rx))?;
        }
        Ok(Arc::new(SigningThreads {
            queue: Mutex::new(Some(tx)),
        }))
    }

    /// Runs `work` on a signing thread; `None` if the threads are gone.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let value = work();
            Box::new(move || {
                let _ = done.send(value);
            })
        });
        self.queue.lock().ok()?.as_ref()?.send(job).ok()?;
        result.await.ok()
    }
}

/// A signing thread: runs jobs, delivering results when its queue runs dry
/// or a batch is full.
fn work(rx: &Mutex<mpsc::Receiver<Job>>) {
    let mut held: Vec<Delivery> = Vec::with_capacity(BATCH);
    loop {
        let next = if held.is_empty() {
            // Nothing to hand over: wait for work. Hold the lock only to
            // take one job.
            let Ok(rx) = rx.lock() else { return };
            rx.recv().map_err(|_| true)
        } else {
            // Results are waiting: never block on the lock or the queue
            // with them held, or another thread waiting for work could
            // keep them from their callers.
            match rx.try_lock() {
                Ok(rx) => rx
                    .try_recv()
                    .map_err(|e| e == mpsc::TryRecvError::Disconnected),
                Err(std::sync::TryLockError::WouldBlock) => Err(false),
                Err(std::sync::TryLockError::Poisoned(_)) => Err(true),
            }
        };
        match next {
            Ok(job) => {
                held.push(job());
                if held.len() < BATCH {
                    continue;
                }
            }
            Err(gone) => {
                held.drain(..).for_each(|deliver| deliver());
                if gone {
                    return;
                }
                continue;
            }
        }
        held.drain(..).for_each(|deliver| deliver());
    }
}

impl Drop for SigningThreads {
    fn drop(&mut self) {
        if let Ok(mut q) = self.queue.lock() {
            q.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_runs_on_a_signing_thread_and_returns() {
        let threads = SigningThreads::start(2).unwrap();
        let name = threads
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("signing-"));
        let sum: u64 = futures_sum(&threads).await;
        assert_eq!(sum, (0..100u64).sum::<u64>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_threads_and_concurrent_callers_never_hold_results_back() {
        let threads = SigningThreads::start(4).unwrap();
        let mut tasks = Vec::new();
        for i in 0..64u64 {
            let t = threads.clone();
            tasks.push(tokio::spawn(async move {
                let mut total = 0;
                for j in 0..50u64 {
                    total += t.run(move || i * j).await.unwrap();
                }
                total
            }));
        }
        let run = async {
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap();
            }
            total
        };
        let total = tokio::time::timeout(std::time::Duration::from_secs(20), run)
            .await
            .expect("no result is held back");
        assert_eq!(total, (0..64u64).sum::<u64>() * (0..50u64).sum::<u64>());
    }

    async fn futures_sum(t: &Arc<SigningThreads>) -> u64 {
        let mut total = 0;
        for i in 0..100u64 {
            total += t.run(move || i).await.unwrap();
        }
        total
    }
}
