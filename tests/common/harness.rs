//! The end-to-end tests' harness. Each test binary lists its tests with what
//! they need (FUSE, root, pjdfstest); a test whose needs this machine does not
//! meet is listed as *ignored*, so `cargo nextest run` reports it as SKIP (and
//! counts it among the skipped in its summary) instead of a pass that ran
//! nothing. Under `CI` nothing is skipped: a test that cannot run there fails.
//! (libtest has no way to skip at run time, hence libtest-mimic, which speaks
//! the same command line to cargo and nextest.)

use libtest_mimic::{Arguments, Failed, Trial};
use std::panic::{self, AssertUnwindSafe};

/// Something a test needs from the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A usable `/dev/fuse` (mounting).
    Fuse,
    /// Running as root (switching users, mounting a tmpfs, pjdfstest).
    Root,
    /// The pjdfstest binary.
    Pjdfstest,
}

/// One test: its name, body, and needs.
pub struct Test {
    pub name: &'static str,
    pub run: fn(),
    pub needs: &'static [Need],
}

/// Why `need` is not met here, if it is not.
fn unmet(need: Need) -> Option<&'static str> {
    let met = match need {
        Need::Fuse => super::fuse_unusable().is_none(),
        Need::Root => super::is_root(),
        Need::Pjdfstest => super::pjdfstest_on_path(),
    };
    (!met).then_some(match need {
        Need::Fuse => {
            "FUSE is unavailable (/dev/fuse is missing, not the device, or not ours to open)"
        }
        Need::Root => "not root",
        Need::Pjdfstest => "pjdfstest is not installed",
    })
}

/// Runs (or lists) `tests` as libtest would, and exits.
pub fn main(tests: &[Test]) -> ! {
    let args = Arguments::from_args();
    let ci = super::in_ci();
    let trials = tests
        .iter()
        .map(|test| {
            let run = test.run;
            let missing: Vec<&str> = if ci {
                Vec::new()
            } else {
                test.needs.iter().filter_map(|n| unmet(*n)).collect()
            };
            let trial = Trial::test(test.name, move || {
                panic::catch_unwind(AssertUnwindSafe(run)).map_err(|payload| {
                    let message = payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "the test panicked".into());
                    Failed::from(message)
                })
            });
            if missing.is_empty() {
                trial
            } else {
                if !args.list {
                    eprintln!("SKIPPED {}: {}", test.name, missing.join(", "));
                }
                trial.with_ignored_flag(true)
            }
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    super::binary::remove_state_dir();
    conclusion.exit()
}

/// The `main` of a test binary: `tests! { a => [Fuse], b => [Fuse, Root], c => [] }`
/// lists the test functions with what they need. A test function left out is
/// dead code, which the build refuses (`-D warnings`).
#[macro_export]
macro_rules! tests {
    ($( $name:ident => [$($need:ident),*] ),* $(,)?) => {
        fn main() {
            use $crate::common::harness::{Need, Test};
            $crate::common::harness::main(&[
                $(Test {
                    name: stringify!($name),
                    run: $name,
                    needs: &[$(Need::$need),*],
                }),*
            ])
        }
    };
}
