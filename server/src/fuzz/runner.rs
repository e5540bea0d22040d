//! The fuzz targets as ordinary tests, on the stable compiler, for a bounded
//! time: each runs the corpus in the repository (`fuzz/corpus/<target>/`:
//! seeds, and what coverage-guided runs of `fuzz/` found worth keeping), then
//! mutations of it until its time is up. Without coverage instrumentation
//! (which needs a nightly compiler), what guides the mutations is the targets'
//! fingerprint of what happened: an input that made something new happen joins
//! the pool.
//!
//! `FERRY_FUZZ_SECS` sets each target's time (default 8 s, or as long as its
//! corpus takes); `FERRY_FUZZ_SEED`
//! repeats a run; `FERRY_FUZZ_WRITE_SEEDS` writes the built-in seeds into the
//! corpus. A failing input is written to `target/fuzz-failures/` and its
//! bytes printed, to be added to the corpus once fixed.

use std::collections::HashSet;
use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DEFAULT_SECS: u64 = 8;
/// Inputs grow no longer than this.
const MAX_INPUT: usize = 64 * 1024;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Values that sit on the edges of what decoders and checks compare against.
const INTERESTING: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xfa,
    0xfb,
    0xfc,
    0xfd,
    0xff,
    0x100,
    0xffff,
    0x1_0000,
    255,
    256,
    4095,
    4096,
    1 << 20,
    (4 << 20) + 1,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    i64::MAX as u64,
    u64::MAX,
];

/// One to eight random changes to `input`, sometimes spliced with `other`.
fn mutate(rng: &mut fastrand::Rng, input: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..=rng.usize(..8) {
        let len = input.len();
        match rng.usize(..8) {
            0 if len > 0 => {
                let at = rng.usize(..len);
                input[at] ^= 1 << rng.usize(..8);
            }
            1 if len > 0 => {
                let at = rng.usize(..len);
                input[at] = rng.u8(..);
            }
            2 => {
                let at = rng.usize(..len + 1);
                let n = 1 + rng.usize(..16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
                input.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let at = rng.usize(..len);
                let n = 1 + rng.usize(..(len - at).min(64));
                input.drain(at..at + n);
            }
            4 if len > 0 => {
                let at = rng.usize(..len);
                let n = 1 + rng.usize(..(len - at).min(64));
                let copy = input[at..at + n].to_vec();
                let to = rng.usize(..len + 1);
                input.splice(to..to, copy);
            }
            5 => {
                let value = INTERESTING[rng.usize(..INTERESTING.len())].to_le_bytes();
                let width = [1, 2, 4, 8][rng.usize(..4)];
                let at = rng.usize(..len + 1);
                let end = (at + width).min(len);
                input.splice(at..end, value[..width].iter().copied());
            }
            6 if !other.is_empty() => {
                let from = rng.usize(..other.len());
                let n = 1 + rng.usize(..(other.len() - from).min(256));
                let at = rng.usize(..len + 1);
                input.splice(at..at, other[from..from + n].iter().copied());
            }
            _ => {
                // A frame's length header, where a frame may start.
                let at = rng.usize(..len + 1);
                let value = INTERESTING[rng.usize(..INTERESTING.len())] as u32;
                input.splice(at..at, value.to_le_bytes());
            }
        }
    }
    input.truncate(MAX_INPUT);
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `target` on `input`; a panic fails the test with the input saved.
fn run_one(name: &str, target: &dyn Fn(&[u8]) -> u64, input: &[u8], seed: u64) -> u64 {
    match panic::catch_unwind(AssertUnwindSafe(|| target(input))) {
        Ok(fingerprint) => fingerprint,
        Err(_) => {
            let dir = repo().join("target/fuzz-failures");
            let _ = fs::create_dir_all(&dir);
            let file = dir.join(format!("{name}-{:016x}", seed));
            let _ = fs::write(&file, input);
            panic!(
                "fuzz target {name} failed (seed {seed}) on the input saved at {}:\n{}",
                file.display(),
                hex(input)
            );
        }
    }
}

/// The corpus of `name`: the files in `fuzz/corpus/<name>/` and `seeds`. With
/// `FERRY_FUZZ_WRITE_SEEDS` set, the seeds are written there too (to start
/// cargo-fuzz from them).
fn corpus(name: &str, seeds: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let dir = repo().join("fuzz/corpus").join(name);
    if std::env::var_os("FERRY_FUZZ_WRITE_SEEDS").is_some() {
        let _ = fs::create_dir_all(&dir);
        for (i, seed) in seeds.iter().enumerate() {
            let _ = fs::write(dir.join(format!("seed-{i}")), seed);
        }
    }
    let mut inputs = seeds;
    if let Ok(entries) = fs::read_dir(&dir) {
        let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        inputs.extend(files.iter().filter_map(|f| fs::read(f).ok()));
    }
    inputs
}

/// Runs `target` over its corpus, then on mutations for the time budget.
/// Answers how many inputs ran.
pub(super) fn fuzz(name: &str, seeds: Vec<Vec<u8>>, target: &dyn Fn(&[u8]) -> u64) -> usize {
    let secs = std::env::var("FERRY_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECS);
    let seed = std::env::var("FERRY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("fuzz {name}: seed {seed} (FERRY_FUZZ_SEED={seed} repeats this run), {secs} s");
    // The corpus always runs whole; mutations fill what is left of the time.
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut pool = corpus(name, seeds);
    let mut fingerprints = HashSet::new();
    let mut runs = 0;
    for input in &pool {
        fingerprints.insert(run_one(name, target, input, seed));
        runs += 1;
    }
    let corpus_len = pool.len();
    while Instant::now() < deadline {
        let mut input = pool[rng.usize(..pool.len())].clone();
        let other = pool[rng.usize(..pool.len())].clone();
        mutate(&mut rng, &mut input, &other);
        let fingerprint = run_one(name, target, &input, seed);
        runs += 1;
        if fingerprints.insert(fingerprint) {
            pool.push(input);
        }
    }
    eprintln!(
        "fuzz {name}: {runs} inputs, {} distinct outcomes, pool {corpus_len} -> {}",
        fingerprints.len(),
        pool.len()
    );
    runs
}

mod targets {
    use super::super::{dispatch, frame, handshake};
    use super::fuzz;
    use ferry_common::frame::encode;
    use ferry_common::proto::{Cred, Hello, Op, Reply, Request, Response};
    use ferry_common::{Errno, RelPath};

    fn request(id: u64, op: Op) -> Vec<u8> {
        let cred = Cred {
            uid: 1000,
            gid: 1000,
            groups: vec![1000],
        };
        encode(&Request { id, cred, op }).expect("a request encodes")
    }

    /// Well-formed frames of each kind to start from.
    fn frames() -> Vec<Vec<u8>> {
        let path = RelPath::parse("d/x").expect("a path");
        let mut seeds = vec![
            encode(&Hello::new()).expect("a hello"),
            request(1, Op::Stat { path: path.clone() }),
            request(
                2,
                Op::Write {
                    handle: 1,
                    offset: 7,
                    data: vec![0x5a; 100],
                },
            ),
            request(3, Op::ReadDir { path, start: 0 }),
            encode(&Response {
                id: 4,
                result: Ok(Reply::Data(vec![0xa5; 100])),
            })
            .expect("a response"),
            encode(&Response {
                id: 5,
                result: Err(Errno::ENOENT),
            })
            .expect("a response"),
        ];
        let all: Vec<u8> = seeds.concat();
        seeds.push(all);
        seeds
    }

    #[test]
    fn fuzz_the_frame_decoder() {
        assert!(fuzz("frame", frames(), &frame) > 0);
    }

    #[test]
    fn fuzz_the_handshake() {
        let export = tempfile::tempdir().expect("an export");
        let hello = encode(&Hello::new()).expect("a hello");
        let mut wrong_magic = Hello::new();
        wrong_magic.magic = *b"SSH-2.0-";
        let seeds = vec![
            hello.clone(),
            [hello.clone(), frames().concat()].concat(),
            encode(&wrong_magic).expect("a hello"),
            b"SSH-2.0-OpenSSH_9.2\r\n".to_vec(),
            Vec::new(),
        ];
        assert!(
            fuzz("handshake", seeds, &|data| handshake::handshake_in(
                export.path(),
                data
            )) > 0
        );
    }

    #[test]
    fn fuzz_the_dispatch_of_operations() {
        // Any bytes are a program; these start from a few.
        let seeds = vec![
            vec![0],
            vec![1],
            (0u8..=255).collect(),
            (0u8..=255).rev().collect(),
            [0u8, 3, 0, 2, 0, 6, 0, 0, 0, 5, b'x', b'y', b'z', b'w', b'v'].to_vec(),
        ];
        assert!(fuzz("dispatch", seeds, &dispatch) > 0);
    }
}
