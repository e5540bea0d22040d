//! Per-handle ordering: the requests that change an open file run one after
//! another, in the order they arrived.
//!
//! The server works on a connection's requests concurrently, which is what lets a
//! quick stat overtake a slow read. But two overlapping writes, or a write and a
//! later `futimens`, give a different file when swapped, and a write-behind client
//! sends them without waiting for each answer. So requests that change an open
//! file queue per handle (which requests, and why, is in [`crate::schedule`]),
//! while everything else, reads included, still runs at once.

use ferry_common::sync::lock;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// The queues of one connection. A queue exists while a worker is draining it; the
/// worker is a task on tokio's blocking pool that runs the queued jobs one by one
/// and removes the queue when it finds it empty.
#[derive(Default)]
pub(crate) struct Sequencer {
    // A std mutex: held for a queue operation only, never across a job or an await.
    queues: Mutex<HashMap<u64, VecDeque<Job>>>,
}

impl Sequencer {
    pub(crate) fn new() -> Sequencer {
        Sequencer::default()
    }

    /// Whether nothing is queued or running under `key`. Only the caller of
    /// [`run`](Self::run) adds work, so the answer holds until it adds some.
    pub(crate) fn is_idle(&self, key: u64) -> bool {
        !lock(&self.queues).contains_key(&key)
    }

    /// Runs `job` on `pool`'s blocking threads, after every job queued before
    /// it under `key`.
    pub(crate) fn run(
        self: &Arc<Self>,
        pool: &tokio::runtime::Handle,
        key: u64,
        job: impl FnOnce() + Send + 'static,
    ) {
        let job: Job = Box::new(job);
        {
            let mut queues = lock(&self.queues);
            if let Some(queue) = queues.get_mut(&key) {
                // A worker is draining this key and will get to it.
                queue.push_back(job);
                return;
            }
            queues.insert(key, VecDeque::new());
        }
        let this = Arc::clone(self);
        drop(pool.spawn_blocking(move || this.drain(key, job)));
    }

    fn drain(&self, key: u64, first: Job) {
        let mut job = first;
        loop {
            job();
            let mut queues = lock(&self.queues);
            match queues.get_mut(&key).and_then(VecDeque::pop_front) {
                Some(next) => job = next,
                None => {
                    queues.remove(&key);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn jobs_of_one_key_run_in_order_and_keys_run_apart() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("a runtime");
        let pool = rt.handle();
        let seq = Arc::new(Sequencer::new());
        let (tx, rx) = mpsc::channel();
        // Key 1's first job blocks until key 2 has run: keys do not wait for each other.
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let t = tx.clone();
        seq.run(pool, 1, move || {
            let _ = gate_rx.recv_timeout(Duration::from_secs(10));
            let _ = t.send((1, 0));
        });
        for i in 1..50 {
            let t = tx.clone();
            seq.run(pool, 1, move || {
                let _ = t.send((1, i));
            });
        }
        let t = tx.clone();
        seq.run(pool, 2, move || {
            let _ = t.send((2, 0));
            let _ = gate_tx.send(());
        });
        drop(tx);
        let got: Vec<(u32, u32)> = rx.iter().collect();
        assert_eq!(got[0], (2, 0));
        let ones: Vec<u32> = got
            .iter()
            .filter(|(k, _)| *k == 1)
            .map(|(_, i)| *i)
            .collect();
        assert_eq!(ones, (0..50).collect::<Vec<_>>());
        // The workers remove their queues just after their last job.
        for _ in 0..500 {
            if lock(&seq.queues).is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("a queue outlived its jobs");
    }
}
