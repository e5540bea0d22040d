//! Locking shared by both sides.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, ignoring poisoning. Every critical section in ferry is a single
/// table or slot update that leaves its data consistent even when a panic
/// interrupts another thread, so a poisoned lock is as good as a clean one, and
/// refusing it would only turn one failed request into a dead mount or server.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
