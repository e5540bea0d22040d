//! See `ferry_server::fuzz::dispatch`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_server::fuzz::dispatch(data);
});
