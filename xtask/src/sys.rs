//! The few privileged system calls the fs matrix makes itself: loop devices
//! through ioctls and mount(2)/umount2(2), so that a failure carries the
//! errno the kernel returned rather than a tool's message.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

// <linux/loop.h>
const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

const _: () = assert!(size_of::<LoopInfo64>() == 232);

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// An attached loop device. It is set to autoclear, so the kernel detaches
/// it when the last user closes it, even if xtask is killed with SIGKILL;
/// `detach` (or Drop) detaches it explicitly.
pub struct LoopDevice {
    path: PathBuf,
    file: Option<File>,
}

impl LoopDevice {
    /// Attaches `image` to a free loop device.
    pub fn attach(image: &Path) -> io::Result<LoopDevice> {
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")?;
        let backing = OpenOptions::new().read(true).write(true).open(image)?;
        // Another process may take the free device between GET_FREE and
        // SET_FD: then SET_FD says EBUSY and we ask again.
        for _ in 0..16 {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
            let n = check(unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) })?;
            let path = PathBuf::from(format!("/dev/loop{n}"));
            let dev = OpenOptions::new().read(true).write(true).open(&path)?;
            // SAFETY: LOOP_SET_FD takes an fd by value; `backing` is open.
            let ret = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_FD, backing.as_raw_fd()) };
            if let Err(e) = check(ret) {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    continue;
                }
                return Err(e);
            }
            let device = LoopDevice {
                path,
                file: Some(dev),
            };
            device.set_autoclear(image)?;
            return Ok(device);
        }
        Err(io::Error::from_raw_os_error(libc::EBUSY))
    }

    fn set_autoclear(&self, image: &Path) -> io::Result<()> {
        let mut info = LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: LO_FLAGS_AUTOCLEAR,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        };
        let name = image.as_os_str().as_bytes();
        let len = name.len().min(LO_NAME_SIZE - 1);
        info.lo_file_name[..len].copy_from_slice(&name[..len]);
        let fd = self.file.as_ref().map_or(-1, |f| f.as_raw_fd());
        // SAFETY: `info` is a live loop_info64 the kernel only reads.
        check(unsafe { libc::ioctl(fd, LOOP_SET_STATUS64, &info as *const LoopInfo64) })?;
        Ok(())
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Detaches the device and waits (briefly) until the kernel shows it free.
    pub fn detach(mut self) -> io::Result<()> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> io::Result<()> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        // SAFETY: LOOP_CLR_FD takes no argument. If another opener (udev) is
        // still there, the kernel defers the detach to its close.
        let ret = check(unsafe { libc::ioctl(file.as_raw_fd(), LOOP_CLR_FD) });
        drop(file);
        if let Err(e) = ret {
            // ENXIO: already detached (autoclear ran).
            if e.raw_os_error() != Some(libc::ENXIO) {
                return Err(e);
            }
        }
        let name = self.path.file_name().unwrap_or_default().to_os_string();
        let backing = Path::new("/sys/block").join(name).join("loop/backing_file");
        for _ in 0..100 {
            if !backing.exists() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(io::Error::other(format!(
            "{} is still attached 2 s after LOOP_CLR_FD",
            self.path.display()
        )))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Err(e) = self.detach_inner() {
            err!("xtask: detaching {}: {e}", self.path.display());
        }
    }
}

/// Detaches the loop device at `path` (stale-run cleanup).
pub fn detach_path(path: &Path) -> io::Result<()> {
    let dev = OpenOptions::new().read(true).open(path)?;
    LoopDevice {
        path: path.to_path_buf(),
        file: Some(dev),
    }
    .detach()
}

/// mount(2).
pub fn mount(source: &str, target: &Path, fstype: &str, data: Option<&str>) -> io::Result<()> {
    let source = CString::new(source).map_err(io::Error::other)?;
    let fstype = CString::new(fstype).map_err(io::Error::other)?;
    let data = data
        .map(|d| CString::new(d).map_err(io::Error::other))
        .transpose()?;
    let target = cstr(target)?;
    let data_ptr = data
        .as_ref()
        .map_or(std::ptr::null(), |d| d.as_ptr().cast::<libc::c_void>());
    // SAFETY: every pointer is a live NUL-terminated string (or null data).
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            data_ptr,
        )
    })?;
    Ok(())
}

/// umount2(2), retrying while busy; after 5 s detaches lazily and reports
/// that as an error.
pub fn unmount(target: &Path) -> io::Result<()> {
    let c = cstr(target)?;
    for _ in 0..50 {
        // SAFETY: `c` is a live NUL-terminated path.
        match check(unsafe { libc::umount2(c.as_ptr(), 0) }) {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => return Err(e),
        }
    }
    // SAFETY: as above.
    check(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) })?;
    Err(io::Error::other(format!(
        "{} stayed busy for 5 s; detached lazily",
        target.display()
    )))
}

/// Mount points from /proc/self/mountinfo, unescaped.
pub fn mount_points() -> io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_octal(field)))
        .collect())
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An exclusive flock(2) on a file, released on drop.
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Takes the lock without blocking, or `None` if someone holds it.
    pub fn try_take(path: &Path) -> io::Result<Option<Lock>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        // SAFETY: flock(2) on an fd we own.
        match check(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) {
            Ok(_) => Ok(Some(Lock { _file: file })),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Whether a process with this pid exists.
pub fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// "ENODEV" for 19, and so on for the errnos the matrix can meet.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EACCES => "EACCES",
        libc::ENOTBLK => "ENOTBLK",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOMEM => "ENOMEM",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

/// Restores a sysctl file to the value it had when saved, on drop.
pub struct SysctlGuard {
    path: &'static str,
    value: Option<String>,
}

impl SysctlGuard {
    /// Remembers the current value of `path` (nothing if unreadable).
    pub fn save(path: &'static str) -> SysctlGuard {
        SysctlGuard {
            path,
            value: std::fs::read_to_string(path).ok(),
        }
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        let Some(saved) = &self.value else { return };
        if std::fs::read_to_string(self.path).ok().as_ref() != Some(saved) {
            if let Err(e) = std::fs::write(self.path, saved.trim()) {
                eprintln!("cannot restore {} to {}: {e}", self.path, saved.trim());
            } else {
                eprintln!("restored {} to {}", self.path, saved.trim());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(super::unescape_octal(r"/tmp/a\040b\011c"), "/tmp/a b\tc");
        assert_eq!(super::unescape_octal(r"/plain\"), "/plain\\");
    }
}
