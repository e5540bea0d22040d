//! See `ferry_server::fuzz::frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_server::fuzz::frame(data);
});
