//! Link arguments for `libaio.so.1`: its SONAME and its symbol versions.
//!
//! rustc hands the linker a version script of its own (an anonymous one that
//! exports the crate's `#[no_mangle]` items). Ours only declares the version
//! nodes of libaio 0.3.113; the exported symbols get their versions from
//! `.symver` directives next to their trampolines (`src/exports.rs`). LLVM's
//! lld accepts both scripts together (GNU ld refuses to mix an anonymous
//! version tag with named ones), so the cdylib is linked with lld: rustc's
//! own copy on x86-64 Linux from Rust 1.90 on, where it is the default, and
//! the system's `ld.lld` (Debian package `lld`) elsewhere.

use std::env;
use std::process::Command;

/// The minor version of the rustc building this crate (`1.MINOR.x`).
fn rustc_minor() -> Option<u32> {
    let rustc = env::var_os("RUSTC")?;
    let out = Command::new(rustc).arg("--version").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    text.split_whitespace()
        .nth(1)?
        .split('.')
        .nth(1)?
        .parse()
        .ok()
}

fn main() {
    let dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=libaio.map");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libaio.so.1");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={dir}/libaio.map");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let rustc_links_with_lld = arch == "x86_64" && os == "linux" && rustc_minor() >= Some(90);
    if !rustc_links_with_lld {
        println!("cargo:rustc-cdylib-link-arg=-fuse-ld=lld");
    }
}
