//! The exported symbols of `libaio.so.1` and their versions.
//!
//! libaio 0.3.113 exports:
//!
//! | symbol | versions |
//! |---|---|
//! | `io_queue_init`, `io_queue_release`, `io_queue_run`, `io_submit` | `LIBAIO_0.1` (default) |
//! | `io_getevents`, `io_cancel`, `io_queue_wait` | `LIBAIO_0.4` (default) and `LIBAIO_0.1` (old signatures) |
//! | `io_setup`, `io_destroy` | `LIBAIO_0.4` (default) |
//! | `io_pgetevents` | `LIBAIO_0.5` (default) |
//!
//! Rust cannot attach an ELF symbol version to a function, and rustc's own
//! version script would list a name like `io_getevents@LIBAIO_0.1` verbatim.
//! So each exported symbol is a one-instruction trampoline written in
//! assembly (a tail jump to the Rust function in [`crate::api`]), named
//! `aio_libaio_<symbol>_<version>`, and a `.symver` directive gives it its
//! public name and version (`name@@VERSION` for the default one that new
//! programs link against, `name@VERSION` for a compatibility one). The
//! trampoline names themselves are not exported: rustc's version script
//! makes every symbol it does not know local. `libaio.map` declares the
//! version nodes.
//!
//! Unit tests link this crate into an executable, where versions mean
//! nothing: there the same list becomes a table (`exports()`) that the tests
//! check against libaio's.

use crate::api;

/// Emits one trampoline with its `.symver` line per entry (or, in unit
/// tests, the `exports()` table).
macro_rules! exports {
    ($($tramp:ident => $symver:literal = $target:path;)*) => {
        /// `(symbol@version, function address)` of every export.
        #[cfg(test)]
        pub(crate) fn exports() -> Vec<(&'static str, usize)> {
            vec![$(($symver, $target as *const () as usize),)*]
        }

        #[cfg(not(test))]
        exports_asm! { $($tramp => $symver = $target;)* }
    };
}

#[cfg(not(test))]
macro_rules! exports_asm {
    ($($tramp:ident => $symver:literal = $target:path;)*) => {
        #[cfg(target_arch = "x86_64")]
        core::arch::global_asm!(
            $(
                concat!(".globl ", stringify!($tramp)),
                concat!(".type ", stringify!($tramp), ", @function"),
                ".p2align 4",
                concat!(stringify!($tramp), ":"),
                concat!("jmp {", stringify!($tramp), "}"),
                concat!(".size ", stringify!($tramp), ", . - ", stringify!($tramp)),
                concat!(".symver ", stringify!($tramp), ", ", $symver),
            )*
            $($tramp = sym $target,)*
        );
        #[cfg(target_arch = "aarch64")]
        core::arch::global_asm!(
            $(
                concat!(".globl ", stringify!($tramp)),
                concat!(".type ", stringify!($tramp), ", %function"),
                ".p2align 2",
                concat!(stringify!($tramp), ":"),
                concat!("b {", stringify!($tramp), "}"),
                concat!(".size ", stringify!($tramp), ", . - ", stringify!($tramp)),
                concat!(".symver ", stringify!($tramp), ", ", $symver),
            )*
            $($tramp = sym $target,)*
        );
        #[cfg(target_arch = "riscv64")]
        core::arch::global_asm!(
            $(
                concat!(".globl ", stringify!($tramp)),
                concat!(".type ", stringify!($tramp), ", %function"),
                ".p2align 2",
                concat!(stringify!($tramp), ":"),
                concat!("tail {", stringify!($tramp), "}"),
                concat!(".size ", stringify!($tramp), ", . - ", stringify!($tramp)),
                concat!(".symver ", stringify!($tramp), ", ", $symver),
            )*
            $($tramp = sym $target,)*
        );
    };
}

exports! {
    aio_libaio_io_queue_init_0_1 => "io_queue_init@@LIBAIO_0.1" = api::io_queue_init;
    aio_libaio_io_queue_release_0_1 => "io_queue_release@@LIBAIO_0.1" = api::io_queue_release;
    aio_libaio_io_queue_run_0_1 => "io_queue_run@@LIBAIO_0.1" = api::io_queue_run;
    aio_libaio_io_submit_0_1 => "io_submit@@LIBAIO_0.1" = api::io_submit;
    aio_libaio_io_getevents_0_1 => "io_getevents@LIBAIO_0.1" = api::io_getevents_0_1;
    aio_libaio_io_cancel_0_1 => "io_cancel@LIBAIO_0.1" = api::io_cancel_0_1;
    aio_libaio_io_queue_wait_0_1 => "io_queue_wait@LIBAIO_0.1" = api::io_queue_wait_0_1;
    aio_libaio_io_setup_0_4 => "io_setup@@LIBAIO_0.4" = api::io_setup;
    aio_libaio_io_destroy_0_4 => "io_destroy@@LIBAIO_0.4" = api::io_destroy;
    aio_libaio_io_cancel_0_4 => "io_cancel@@LIBAIO_0.4" = api::io_cancel;
    aio_libaio_io_getevents_0_4 => "io_getevents@@LIBAIO_0.4" = api::io_getevents;
    aio_libaio_io_queue_wait_0_4 => "io_queue_wait@@LIBAIO_0.4" = api::io_queue_wait;
    aio_libaio_io_pgetevents_0_5 => "io_pgetevents@@LIBAIO_0.5" = api::io_pgetevents;
}

#[cfg(test)]
mod tests {
    use super::exports;

    /// libaio 0.3.113's dynamic symbols, as `objdump -T` lists them.
    const LIBAIO_0_3_113: &[&str] = &[
        "io_queue_init@@LIBAIO_0.1",
        "io_queue_release@@LIBAIO_0.1",
        "io_queue_run@@LIBAIO_0.1",
        "io_submit@@LIBAIO_0.1",
        "io_getevents@LIBAIO_0.1",
        "io_cancel@LIBAIO_0.1",
        "io_queue_wait@LIBAIO_0.1",
        "io_setup@@LIBAIO_0.4",
        "io_destroy@@LIBAIO_0.4",
        "io_cancel@@LIBAIO_0.4",
        "io_getevents@@LIBAIO_0.4",
        "io_queue_wait@@LIBAIO_0.4",
        "io_pgetevents@@LIBAIO_0.5",
    ];

    #[test]
    fn exports_are_libaios() {
        let all = exports();
        let mut ours: Vec<&str> = all.iter().map(|e| e.0).collect();
        let mut theirs = LIBAIO_0_3_113.to_vec();
        ours.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(ours, theirs);
        // One default version per name; distinct functions behind the
        // default and the compatibility version of a name.
        for (name, addr) in &all {
            let base = name.split('@').next().unwrap();
            let defaults = all
                .iter()
                .filter(|e| e.0.starts_with(&format!("{base}@@")))
                .count();
            assert_eq!(defaults, 1, "{base}");
            assert_ne!(*addr, 0);
        }
        let map = include_str!("../libaio.map");
        for v in ["LIBAIO_0.1 {", "LIBAIO_0.4 {", "LIBAIO_0.5 {"] {
            assert!(map.contains(v), "{v} missing from libaio.map");
        }
    }
}
