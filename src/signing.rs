//! Turns at the CPU for slow signatures. An RSA signature takes a few hundred
//! microseconds (2048 bits) to about two milliseconds (4096 bits). Run back to
//! back on an async worker, a queue of them would hold up every discovery and
//! JWKS request behind it; handed to other threads, each one costs the
//! context switches and wake-ups of the hand-over, and the requests wait on
//! the OS scheduler instead.
//!
//! So a slow signature runs on the worker that took the request, but only in
//! its turn: at most as many at once as the runtime has workers, never two on
//! one worker without an I/O poll between them, and a turn starts only after
//! the worker has polled for I/O and run what that woke. Whatever arrived
//! while a signature ran is answered before the next one starts, so a JWKS
//! request waits at most for the signature in progress on its worker.
//!
//! Knows nothing of keys or tokens: it runs closures.

use std::cell::Cell;
use std::thread::ThreadId;

use tokio::sync::Semaphore;

thread_local! {
    /// Signatures run on this thread so far.
    static SIGNED: Cell<u64> = const { Cell::new(0) };
}

pub struct SigningTurns {
    /// One per worker thread of the runtime.
    turns: Semaphore,
}

impl SigningTurns {
    /// Turns for a runtime of `workers` threads.
    pub fn new(workers: usize) -> SigningTurns {
        SigningTurns {
            turns: Semaphore::new(workers.max(1)),
        }
    }

    /// Runs `work` on this task's worker when its turn comes.
    pub async fn run<T>(&self, work: impl FnOnce() -> T) -> T {
        // The semaphore is fair (first come, first served) and never closed:
        // an error cannot happen, and would only mean running without a turn.
        let turn = self.turns.acquire().await;
        // Tokio wakes a yielded task only after the worker has polled the
        // I/O driver: the first yield gets the requests that arrived during
        // the previous signature picked up. The wake puts this task first in
        // line, ahead of them; the second yield lets them be answered first.
        tokio::task::yield_now().await;
        loop {
            let before = here();
            tokio::task::yield_now().await;
            // Two turns can land on one worker (tasks move between workers)
            // and be woken by the same poll: the second waits for the next.
            if here() == before {
                break;
            }
        }
        let value = work();
        SIGNED.with(|n| n.set(n.get() + 1));
        drop(turn);
        value
    }
}

/// This thread, and how many signatures it has run.
fn here() -> (ThreadId, u64) {
    (std::thread::current().id(), SIGNED.with(Cell::get))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Stands in for an RSA signature: holds the thread for `d`.
    fn busy(d: Duration) {
        let start = Instant::now();
        while start.elapsed() < d {
            std::hint::spin_loop();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_slow_work_runs_at_once_than_there_are_turns() {
        let turns = Arc::new(SigningTurns::new(2));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let (turns, running, most) = (turns.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    turns
                        .run(|| {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            busy(Duration::from_micros(200));
                            running.fetch_sub(1, Ordering::SeqCst);
                            i
                        })
                        .await
                })
            })
            .collect();
        let mut sum = 0;
        for t in tasks {
            sum += t.await.unwrap();
        }
        assert_eq!(sum, (0..32).sum::<i32>());
        assert!(most.load(Ordering::SeqCst) <= 2, "at most one per turn");
    }

    /// On one worker, a queue of slow work must let I/O through between
    /// two pieces: a connection that arrives while 400 signatures are queued
    /// is accepted once the signature in progress ends, not after all.
    #[tokio::test(flavor = "current_thread")]
    async fn io_that_arrives_is_answered_between_two_turns() {
        const QUEUED: usize = 400;
        let turns = Arc::new(SigningTurns::new(1));
        let done = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (start_peer, peer_go) = std::sync::mpsc::channel::<()>();
        let start_peer = Arc::new(std::sync::Mutex::new(start_peer));
        let tasks: Vec<_> = (0..QUEUED)
            .map(|_| {
                let (turns, done, start_peer) = (turns.clone(), done.clone(), start_peer.clone());
                tokio::spawn(async move {
                    turns
                        .run(|| {
                            if done.fetch_add(1, Ordering::SeqCst) == 3 {
                                let _ = start_peer.lock().unwrap().send(());
                            }
                            busy(Duration::from_millis(1));
                        })
                        .await
                })
            })
            .collect();
        // The peer connects from another thread once the queue is running,
        // and notes how many signatures had started when it got in.
        let peer_done = done.clone();
        let peer = std::thread::spawn(move || {
            peer_go.recv().unwrap();
            let stream = std::net::TcpStream::connect(addr).unwrap();
            (peer_done.load(Ordering::SeqCst), stream)
        });
        listener.accept().await.unwrap();
        let accepted_at = done.load(Ordering::SeqCst);
        let (connected_at, _stream) = peer.join().unwrap();
        assert!(
            connected_at < QUEUED,
            "the peer came in after the queue ran dry"
        );
        assert!(
            accepted_at <= connected_at + 2,
            "connected during signature {connected_at}, accepted after {accepted_at}: \
             I/O waited behind the queue"
        );
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(done.load(Ordering::SeqCst), QUEUED);
    }
}
