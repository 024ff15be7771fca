//! cargo-afl (AFL++) entry point; builds and runs on stable Rust.
fn main() {
    afl::fuzz!(|data: &[u8]| aio_kernel_fuzz::run(data));
}
