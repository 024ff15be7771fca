//! `aio-tools vectest [TARGET]`: the seed's test program, done right.
//!
//! Each pass writes the whole target with `PWRITEV` requests of random
//! segment layouts, many in flight, then reads it back with `PREADV`
//! through *different* layouts and checks every byte against a pattern in
//! which each 8-byte word names its own offset, pass and seed.

mod lock;
mod pattern;
mod plan;
mod run;
mod scratch;
mod target;
mod unwritten;

use std::path::PathBuf;

use crate::stats::{parse_nonzero_size, parse_size};

pub use pattern::{Pattern, Word};
pub use plan::{Rng, split};
pub use run::run;
pub use target::{block_device_size, logical_block_size, signatures_on};

/// The command's arguments.
#[derive(clap::Args, Debug)]
pub struct VectestArgs {
    /// A regular file (created, or reused: refused if it backs a loop
    /// device, is read-only, is formatted or holds data vectest did not
    /// write, unless --force) or a block device (opened with
    /// O_DIRECT|O_EXCL; refused if mounted, in use or formatted unless
    /// --force). Default: a scratch file in the temporary directory,
    /// removed afterwards.
    pub target: Option<PathBuf>,
    /// Bytes to test (k, M, G, T suffixes; at most 8T, what the pattern
    /// tells apart). Default: 64M for a scratch file, the file's size if it
    /// has one, the whole device.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Use O_DIRECT (the default for block devices).
    #[arg(long, conflicts_with = "buffered")]
    pub direct: bool,
    /// Go through the page cache (the default for files).
    #[arg(long)]
    pub buffered: bool,
    /// Most segments in one request (1..=1024).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub max_segments: u16,
    /// Largest request (default: 1M, or enough for --max-segments aligned
    /// segments with O_DIRECT; at most 2147479552, Linux's MAX_RW_COUNT).
    #[arg(long, value_parser = parse_nonzero_size)]
    pub max_request: Option<u64>,
    /// Requests in flight.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub iodepth: u32,
    /// Write-then-verify passes over the target.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=255))]
    pub passes: u8,
    /// Seed of the layouts and the pattern (default: from the clock; printed
    /// so a failure can be replayed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write on a block device even if it holds a filesystem or partition
    /// table, or on a file whatever it holds (never on a mounted target,
    /// nor on one whose data is mounted through a loop device).
    #[arg(long)]
    pub force: bool,
    /// The aio API that issues the requests.
    #[arg(long, value_enum, default_value_t = crate::Api::Sync)]
    pub api: crate::Api,
    /// What executes the requests.
    #[arg(long, value_enum, default_value_t = crate::DriverArg::Auto)]
    pub driver: crate::DriverArg,
    /// Test hook: after the first write phase, overwrite 4 KiB at this
    /// offset through a second descriptor with the data of another offset,
    /// to show how a misplaced write is reported.
    #[arg(long, hide = true, value_parser = parse_size)]
    pub inject_misplaced_block: Option<u64>,
}
