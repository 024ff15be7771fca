//! Link arguments for `libaio.so.1`: its SONAME and its symbol versions.
//!
//! rustc hands the linker a version script of its own (an anonymous one that
//! exports the crate's `#[no_mangle]` items). Ours only declares the version
//! nodes of libaio 0.3.113; the exported symbols get their versions from
//! `.symver` directives next to their trampolines (`src/exports.rs`). LLVM's
//! lld accepts both scripts together (GNU ld refuses to mix an anonymous
//! version tag with named ones), so the cdylib is linked with lld: rustc's
//! own copy on x86-64 Linux, where it is the default, and the system's
//! `ld.lld` elsewhere.

use std::env;

fn main() {
    let dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=libaio.map");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libaio.so.1");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={dir}/libaio.map");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if arch != "x86_64" {
        println!("cargo:rustc-cdylib-link-arg=-fuse-ld=lld");
    }
}
