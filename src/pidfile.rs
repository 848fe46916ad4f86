//! The `--pid-file`: our pid, under an exclusive flock(2) held for the
//! supervisor's whole life.
//!
//! Invariant: the file is never truncated or written before we hold its
//! lock, so a second instance cannot damage a live one's file; and the lock
//! is the last thing released at exit, so `--stop` (which waits on it)
//! returns only when everything else is gone.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::state::record;
use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// A locked pid file.
pub struct PidFile {
    path: PathBuf,
    /// The locked descriptor (close-on-exec, so workers never hold the lock).
    pub fd: OwnedFd,
    /// Remove the file when dropped: true once we wrote our pid, or if we
    /// created the file ourselves.
    remove: bool,
}

/// The descriptor of a lock we keep for the process's life. A flock(2)
/// lock belongs to the open file description, so it stays until the last
/// descriptor of it closes, wherever the supervisor moves this one; nix's
/// `Flock` would instead unlock on drop.
fn keep_locked(lock: Flock<File>) -> OwnedFd {
    let lock = ManuallyDrop::new(lock);
    // SAFETY: neither the `Flock` nor the `File` in it is ever dropped, so
    // the OwnedFd made here is the descriptor's only owner.
    unsafe { OwnedFd::from_raw_fd(lock.as_raw_fd()) }
}

/// What the pid file says, for the client modes.
pub fn read_pid(path: &Path) -> Result<i32> {
    let mut text = String::new();
    File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .with_context(|| format!("failed to open file:{}", path.display()))?;
    let first = text.lines().next().unwrap_or("").trim();
    match first.parse::<i32>() {
        Ok(pid) if pid > 1 => Ok(pid),
        _ => bail!(
            "pid file {} does not hold a process id (it holds {:?})",
            path.display(),
            first
        ),
    }
}

/// Whether some process holds the exclusive lock of the file at `path`
/// (start_server does for its whole life).
pub fn is_locked(path: &Path) -> Result<bool> {
    let file =
        File::open(path).with_context(|| format!("failed to open file:{}", path.display()))?;
    // A lock we get is released at once, when it is dropped.
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_) => Ok(false),
        Err((_, Errno::EWOULDBLOCK)) => Ok(true),
        Err((_, e)) => Err(e).with_context(|| format!("flock failed({})", path.display())),
    }
}

/// Waits until nobody holds the lock of the file at `path`, at most
/// `bound`: whether it was released. Polls, since flock(2) has no timeout;
/// every 10 ms, so that `--stop` returns promptly.
pub fn wait_unlocked(path: &Path, bound: Duration) -> Result<bool> {
    let deadline = Instant::now() + bound;
    loop {
        match is_locked(path) {
            Ok(false) => return Ok(true),
            Ok(true) => {}
            // Removed: the server is gone (it unlinks before it unlocks).
            Err(e)
                if e.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) =>
            {
                return Ok(true);
            }
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl PidFile {
    /// Opens (creating if needed) and locks the file without truncating it.
    pub fn lock(path: &Path) -> Result<PidFile> {
        let open = |create_new: bool| {
            let mut options = OpenOptions::new();
            options.read(true).write(true).mode(0o644);
            if create_new {
                options.create_new(true);
            } else {
                options.create(true);
            }
            options.open(path) // O_CLOEXEC is std's default
        };
        let opened = match open(true) {
            Ok(f) => Ok((f, true)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                open(false).map(|f| (f, false))
            }
            Err(e) => Err(e),
        };
        let (file, created) =
            opened.with_context(|| format!("failed to open file:{}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(PidFile {
                path: path.to_path_buf(),
                fd: keep_locked(lock),
                remove: created,
            }),
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                bail!(
                    "another start_server (pid:{}) is running with pid file {}",
                    text.trim(),
                    path.display()
                )
            }
            Err((_, e)) => {
                if created {
                    let _ = std::fs::remove_file(path);
                }
                Err(e).with_context(|| format!("flock failed({})", path.display()))
            }
        }
    }

    /// Replaces the contents with `PID\n`.
    pub fn write_pid(&mut self, pid: u32) -> Result<()> {
        self.remove = true;
        let text = format!("{pid}\n");
        nix::unistd::ftruncate(self.fd.as_fd(), 0)
            .and_then(|_| nix::sys::uio::pwrite(self.fd.as_fd(), text.as_bytes(), 0))
            .and_then(|n| {
                if n == text.len() {
                    Ok(())
                } else {
                    Err(Errno::EIO)
                }
            })
            .with_context(|| format!("failed to write pid file {}", self.path.display()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if !self.remove {
            return;
        }
        // Only our file: if it was replaced meanwhile, leave the new one;
        // and never a device or a FIFO given as the pid file
        // (`--pid-file=/dev/null`), which removing as root would break.
        if let (Ok(mine), Ok(there)) = (
            nix::sys::stat::fstat(self.fd.as_fd()),
            std::fs::symlink_metadata(&self.path),
        ) {
            if there.file_type().is_file()
                && mine.st_dev == there.dev()
                && mine.st_ino == there.ino()
            {
                let _ = std::fs::remove_file(&self.path);
            }
        }
        // The lock goes with the descriptor, after the unlink.
    }
}

// Handed to a new image on an upgrade: the same open file description,
// so the lock is never released.
record!(PidFile { path, fd, remove });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_for_the_lock_is_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pid");
        let held = PidFile::lock(&path).expect("lock");
        let before = Instant::now();
        assert!(!wait_unlocked(&path, Duration::from_millis(50)).expect("wait"));
        assert!(before.elapsed() >= Duration::from_millis(50));
        drop(held);
        assert!(wait_unlocked(&path, Duration::from_millis(50)).expect("wait"));
    }
}
