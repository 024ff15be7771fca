//! One vectest per target at a time: an exclusive `flock` on the target,
//! held while its descriptor is open, and who holds it when it is taken.

use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

/// Who holds the lock of a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Its process id, when `/proc/locks` names it.
    pub pid: Option<u32>,
    /// Whether that process is an `aio-tools vectest`.
    pub vectest: bool,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.pid, self.vectest) {
            (Some(pid), true) => write!(f, "another vectest (pid {pid})"),
            (Some(pid), false) => write!(f, "another program (pid {pid})"),
            (None, _) => f.write_str("another vectest or program"),
        }
    }
}

/// Takes the exclusive lock of `file` (`flock(LOCK_EX | LOCK_NB)`) until
/// the file is closed; `Err` names the process that holds it. A filesystem
/// without `flock` (`ENOLCK`, `EOPNOTSUPP`, `EINVAL`) runs unlocked.
pub fn lock(file: &File) -> Result<(), Holder> {
    // SAFETY: flock on a descriptor `file` owns; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EWOULDBLOCK) => Err(file.metadata().map_or(
            Holder {
                pid: None,
                vectest: false,
            },
            |m| holder(&m),
        )),
        _ => Ok(()),
    }
}

/// Who holds a `flock` on the file of `meta`, from `/proc/locks`.
pub fn holder(meta: &Metadata) -> Holder {
    let pid = std::fs::read_to_string("/proc/locks")
        .ok()
        .and_then(|locks| flock_owner(&locks, meta.dev(), meta.ino()));
    Holder {
        pid,
        vectest: pid.is_some_and(is_vectest),
    }
}

/// The pid of the `FLOCK` held on inode `ino` of device `dev` in the text
/// of `/proc/locks` ("1: FLOCK  ADVISORY  WRITE 4242 fe:00:5669164 0 EOF";
/// waiters' lines carry "->" and are skipped).
fn flock_owner(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let file = format!(
        "{:02x}:{:02x}:{ino}",
        libc::major(dev as libc::dev_t),
        libc::minor(dev as libc::dev_t)
    );
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&file.as_str()))
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })
}

/// Whether process `pid` runs `... vectest ...`.
fn is_vectest(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == b"vectest"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_of_a_flock_is_read_from_proc_locks() {
        let locks = "1: POSIX  ADVISORY  WRITE 7 fe:00:99 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4242 fe:00:99 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 4343 fe:00:99 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 17 103:0a:99 0 EOF\n";
        let dev = libc::makedev(0xfe, 0) as u64;
        assert_eq!(flock_owner(locks, dev, 99), Some(4242));
        assert_eq!(flock_owner(locks, dev, 98), None);
        assert_eq!(
            flock_owner(locks, libc::makedev(0x103, 0x0a) as u64, 99),
            Some(17)
        );
    }

    #[test]
    fn a_second_lock_on_the_same_file_names_this_process() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let first = File::open(f.path()).unwrap();
        let second = File::open(f.path()).unwrap();
        lock(&first).unwrap();
        let held = lock(&second).unwrap_err();
        assert_eq!(held.pid, Some(std::process::id()));
        drop(first);
        lock(&second).unwrap();
    }
}
