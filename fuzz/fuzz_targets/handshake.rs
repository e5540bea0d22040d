//! See `ferry_server::fuzz::handshake`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ferry_server::fuzz::handshake(data);
});
