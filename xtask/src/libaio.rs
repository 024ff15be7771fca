//! `cargo xtask libaio [DIR]`: builds the drop-in `libaio.so.1` and stages
//! it with its header, so that `LD_LIBRARY_PATH=DIR program`,
//! `LD_PRELOAD=DIR/libaio.so.1 program` or `cc -IDIR ... -LDIR -laio` use it.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use crate::Outcome;
use crate::proc;

/// Builds `aio-libaio` in release mode and copies it to `dir`.
pub fn stage(dir: &Path) -> Outcome {
    let root = proc::workspace_root();
    let status = Command::new(proc::cargo())
        .current_dir(&root)
        .args(["build", "--release", "-p", "aio-libaio"])
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            return Outcome::Failed(format!(
                "cargo build -p aio-libaio failed ({})",
                proc::describe(&s)
            ));
        }
        Err(e) => return Outcome::Failed(format!("cannot run cargo: {e}")),
    }
    let release = match crate::fsmatrix::cargo_target_dir(&root) {
        Ok(d) => d.join("release"),
        Err(e) => return Outcome::Failed(e),
    };
    let copy = || -> std::io::Result<()> {
        fs::create_dir_all(dir)?;
        fs::copy(release.join("libaio_libaio.so"), dir.join("libaio.so.1"))?;
        let link = dir.join("libaio.so");
        let _ = fs::remove_file(&link);
        symlink("libaio.so.1", &link)?;
        fs::copy(
            root.join("aio-sys/libaio/include/libaio.h"),
            dir.join("libaio.h"),
        )?;
        let launcher = release.join("aio-seccomp-exec");
        if launcher.exists() {
            fs::copy(&launcher, dir.join("aio-seccomp-exec"))?;
        }
        Ok(())
    };
    match copy() {
        Ok(()) => {
            let d = dir.display();
            out!("staged libaio.so.1, libaio.so and libaio.h in {d}");
            out!("  run a program on it:   LD_LIBRARY_PATH={d} fio --ioengine=libaio ...");
            out!("  or preload it:         LD_PRELOAD={d}/libaio.so.1 program");
            out!("  build against it:      cc -I{d} prog.c -L{d} -laio");
            out!("  choose the driver:     AIO_LIBAIO_DRIVER=kernel|engine|auto (default auto)");
            Outcome::Passed(format!("staged in {d}"))
        }
        Err(e) => Outcome::Failed(format!("staging in {}: {e}", dir.display())),
    }
}
