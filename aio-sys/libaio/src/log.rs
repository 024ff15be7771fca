//! `AIO_LIBAIO_LOG`: one-line reports of what the library does, for people
//! and for tests that must know that this library (not the system's libaio)
//! served a program.
//!
//! Unset or empty: silent. `stderr` (or `1`): standard error. Anything else:
//! a file path, opened for appending (created if needed). Each report is one
//! `write(2)` of one line, starting with `aio-libaio[<pid>]:`.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::OnceLock;

/// Where reports go.
enum Sink {
    Off,
    Stderr,
    File(File),
}

fn sink() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| match std::env::var_os("AIO_LIBAIO_LOG") {
        None => Sink::Off,
        Some(v) if v.is_empty() || v == "0" => Sink::Off,
        Some(v) if v == "stderr" || v == "1" => Sink::Stderr,
        Some(path) => match OpenOptions::new().append(true).create(true).open(&path) {
            Ok(f) => Sink::File(f),
            // A log that cannot be opened must not break the program: fall
            // back to standard error.
            Err(_) => Sink::Stderr,
        },
    })
}

/// Whether reports are wanted (so callers can skip gathering them).
pub(crate) fn enabled() -> bool {
    !matches!(sink(), Sink::Off)
}

/// Writes one report line.
pub(crate) fn write_line(args: fmt::Arguments<'_>) {
    let sink = sink();
    if matches!(sink, Sink::Off) {
        return;
    }
    let line = format!("aio-libaio[{}]: {args}\n", std::process::id());
    // Errors are ignored: reporting is best effort and must never change
    // what the library returns.
    let _ = match sink {
        Sink::Off => Ok(()),
        Sink::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
        Sink::File(f) => (&*f).write_all(line.as_bytes()),
    };
}

/// `report!("...", args)`: a report line, formatted only when logging is on.
macro_rules! report {
    ($($arg:tt)*) => {
        if $crate::log::enabled() {
            $crate::log::write_line(format_args!($($arg)*));
        }
    };
}
pub(crate) use report;

/// Runs when the library is loaded (an `.init_array` entry), so that a log
/// shows which libaio a program got even if it never creates a context.
extern "C" fn on_load() {
    let _errno = crate::errno::KeepErrno::new();
    report!(
        "loaded {} {} (driver {})",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION"),
        crate::driver::mode().name()
    );
}

#[used]
#[unsafe(link_section = ".init_array")]
static ON_LOAD: extern "C" fn() = on_load;
