//! Which `aio` API issues the requests of vectest and bench.

use std::io;

use aio::{Context, Driver};

/// Which API of the `aio` crate drives the requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Api {
    /// `aio::Context`: push, submit, wait, from this thread.
    Sync,
    /// `aio::tokio`: one task per request on a current-thread runtime.
    Tokio,
}

impl Api {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Api::Sync => "sync",
            Api::Tokio => "tokio",
        }
    }
}

/// What issues the requests: the sync API, or the tokio API on a
/// current-thread runtime.
pub enum Issuer {
    /// The blocking `aio::Context` (boxed: it is large).
    Sync(Box<Context>),
    /// A current-thread runtime and its driver.
    Tokio(tokio::runtime::Runtime, aio::tokio::Handle),
}

impl Issuer {
    /// An issuer for `api` with `depth` requests in flight on `driver`,
    /// submitting in calls of `submit_batch` or more on a device (see
    /// `aio::ContextBuilder::submit_batch`; 0: one call).
    pub fn new(api: Api, depth: u32, driver: Driver, submit_batch: usize) -> io::Result<Issuer> {
        match api {
            Api::Sync => Ok(Issuer::Sync(Box::new(
                Context::builder()
                    .queue_depth(depth)
                    .driver(driver)
                    .submit_batch(submit_batch)
                    .build()?,
            ))),
            Api::Tokio => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let handle = rt.block_on(async {
                    aio::tokio::Handle::builder()
                        .queue_depth(depth)
                        .driver(driver)
                        .submit_batch(submit_batch)
                        .build()
                })?;
                Ok(Issuer::Tokio(rt, handle))
            }
        }
    }

    /// The context's or driver's counters.
    pub fn stats(&self) -> aio::Stats {
        match self {
            Issuer::Sync(ctx) => ctx.stats(),
            Issuer::Tokio(_, h) => h.stats(),
        }
    }

    /// Why the auto driver runs every request on the engine, if it does.
    pub fn kernel_unavailable(&self) -> Option<aio::Error> {
        match self {
            Issuer::Sync(ctx) => ctx.kernel_unavailable(),
            Issuer::Tokio(_, h) => h.kernel_unavailable(),
        }
    }
}

/// `--driver`: what executes the requests (see `aio::Driver`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DriverArg {
    /// O_DIRECT, syncs and polls in the kernel; page-cached reads in the
    /// kernel with RWF_NOWAIT; everything that could block on the engine.
    Auto,
    /// The running kernel (buffered I/O blocks inside io_submit).
    Kernel,
    /// The userspace engine of aio-kernel (worker threads).
    Engine,
}

impl From<DriverArg> for Driver {
    fn from(d: DriverArg) -> Driver {
        match d {
            DriverArg::Auto => Driver::Auto,
            DriverArg::Kernel => Driver::Kernel,
            DriverArg::Engine => Driver::Engine,
        }
    }
}
