//! The default target: a scratch file in the temporary directory, named
//! after the process that owns it (`aio-vectest-<pid>-<seed>`), removed
//! however the run ends, and by a later run when its owner was killed.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::lock::lock;

const PREFIX: &str = "aio-vectest-";

/// Where this process's scratch file for `seed` goes.
pub fn scratch_path(seed: u64) -> PathBuf {
    std::env::temp_dir().join(format!("{PREFIX}{}-{seed:x}", std::process::id()))
}

/// Removes a file this run created when dropped, unless [`kept`](Self::keep).
#[derive(Debug)]
pub struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    /// Removes `path` on drop.
    pub fn new(path: PathBuf) -> RemoveOnDrop {
        RemoveOnDrop(Some(path))
    }

    /// Leaves the file in place.
    pub fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The owner's pid in a scratch file's name.
fn owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, seed) = rest.split_once('-')?;
    (!seed.is_empty() && seed.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| pid.parse().ok())
        .flatten()
}

/// Removes the scratch files in `dir` whose owner is gone: no process has
/// its pid, and no one holds the file's lock (an owner in another pid
/// namespace still would). Returns what it removed, with the owner's pid.
pub fn remove_stale(dir: &Path) -> Vec<(PathBuf, u32)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(owner) else {
            continue;
        };
        if !e.file_type().is_ok_and(|t| t.is_file()) || Path::new(&format!("/proc/{pid}")).exists()
        {
            continue;
        }
        let path = e.path();
        let unlocked = File::open(&path).is_ok_and(|f| lock(&f).is_ok());
        if unlocked && std::fs::remove_file(&path).is_ok() {
            removed.push((path, pid));
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_is_read_from_the_name() {
        assert_eq!(owner("aio-vectest-4242-1f"), Some(4242));
        assert_eq!(owner("aio-vectest-4242-"), None);
        assert_eq!(owner("aio-vectest-x-1f"), None);
        assert_eq!(owner("aio-vectest-4242-notes.txt"), None);
        assert_eq!(owner("aio-stress-4242-1f"), None);
        let p = scratch_path(0xab);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(owner(name), Some(std::process::id()));
    }

    #[test]
    fn only_files_of_gone_owners_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .map_or(4 << 20, |s| s.trim().parse().unwrap());
        // No process can have a pid above pid_max.
        let gone = dir.path().join(format!("{PREFIX}{}-1", max + 1));
        let locked = dir.path().join(format!("{PREFIX}{}-2", max + 2));
        let live = dir.path().join(format!("{PREFIX}{}-3", std::process::id()));
        let other = dir.path().join("notes.txt");
        for p in [&gone, &locked, &live, &other] {
            std::fs::write(p, b"").unwrap();
        }
        let holder = File::open(&locked).unwrap();
        lock(&holder).unwrap();
        assert_eq!(remove_stale(dir.path()), vec![(gone.clone(), max + 1)]);
        assert!(!gone.exists() && locked.exists() && live.exists() && other.exists());
    }
}
