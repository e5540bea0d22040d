//! Fuzz targets: what a hostile peer can reach first.
//!
//! - [`frame`]: the codec, fed any bytes as a stream of frames, through every
//!   reader both sides use; what decodes must encode back to the same message,
//!   and a frame the bulk readers split (a data answer, a write) must be the
//!   same message the plain decoder reads.
//! - [`handshake`]: a real server on loopback, sent any bytes as the first
//!   thing on a new connection (and whatever follows); it answers with a
//!   well-formed handshake reply or closes, never panics, and still welcomes
//!   the next honest client.
//! - [`dispatch`]: `Session::handle` on a program of operations decoded from the
//!   bytes, against a fresh export with symlinks that lead out of it beside a
//!   directory outside; nothing outside may change, a read-only session may
//!   change nothing, and no call may panic.
//!
//! Each target answers a fingerprint of what happened (which operations
//! succeeded, which errors came back), which the stable runner in
//! `runner.rs` uses as cheap feedback to keep inputs that did something new.
//! The same functions are the targets of `fuzz/` (cargo-fuzz, coverage-guided,
//! with a nightly compiler), where they are built with `--cfg fuzzing`.

mod bytes;
mod dispatch;
mod frame;
mod handshake;
#[cfg(test)]
mod runner;

pub use dispatch::dispatch;
pub use frame::frame;
pub use handshake::handshake;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

/// Folds what happened into a fingerprint.
#[derive(Default)]
struct Fingerprint(DefaultHasher);

impl Fingerprint {
    fn add(&mut self, what: impl Hash) {
        what.hash(&mut self.0);
    }

    fn finish(&self) -> u64 {
        self.0.finish()
    }
}
