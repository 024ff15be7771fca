//! cargo-fuzz (libFuzzer) entry point.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aio_kernel_fuzz::run(data));
