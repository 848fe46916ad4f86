//! The `--status-file`: one `GENERATION:PID` line per live worker.
//!
//! Invariant: the file is only ever replaced whole (a temp file next to it,
//! then rename(2)), so a reader sees the old or the new contents, never a
//! mix; the temp file is created exclusively and never through a symlink;
//! and the file is removed at exit only if we wrote it.

use crate::state::record;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The status file of a running supervisor.
pub struct StatusFile {
    path: PathBuf,
    written: bool,
}

/// The file's contents for these `(generation, pid)` pairs, sorted by
/// generation numerically (the reference sorts as strings: 10 before 2).
pub fn format(entries: &[(u64, i32)]) -> String {
    let mut sorted = entries.to_vec();
    sorted.sort_unstable();
    sorted.iter().map(|(g, p)| format!("{g}:{p}\n")).collect()
}

/// The generations listed in a status file's contents, sorted, deduplicated.
pub fn generations(contents: &str) -> Vec<u64> {
    let mut gens: Vec<u64> = contents
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter_map(|(g, _)| g.parse().ok())
        .collect();
    gens.sort_unstable();
    gens.dedup();
    gens
}

impl StatusFile {
    pub fn new(path: PathBuf) -> StatusFile {
        StatusFile {
            path,
            written: false,
        }
    }

    /// Atomically replaces the file with these workers.
    pub fn write(&mut self, entries: &[(u64, i32)]) -> std::io::Result<()> {
        let (tmp_path, mut tmp) = create_temp(&self.path)?;
        let result = tmp
            .write_all(format(entries).as_bytes())
            .and_then(|_| std::fs::rename(&tmp_path, &self.path));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp_path);
        } else {
            self.written = true;
        }
        result
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StatusFile {
    fn drop(&mut self) {
        if self.written {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `FILE.PID` (the reference's name), or `FILE.PID.N` when that exists,
/// opened with O_EXCL|O_NOFOLLOW so nothing planted there is followed.
fn create_temp(path: &Path) -> std::io::Result<(PathBuf, File)> {
    // Built from the path's bytes: `display()` would replace bytes that are
    // not UTF-8 and name a directory that does not exist.
    let mut base = path.as_os_str().to_os_string();
    base.push(format!(".{}", std::process::id()));
    let mut last_err = None;
    for attempt in 0..100 {
        let mut name = base.clone();
        if attempt > 0 {
            name.push(format!(".{attempt}"));
        }
        let name = PathBuf::from(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&name)
        {
            Ok(f) => return Ok((name, f)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| ErrorKind::AlreadyExists.into()))
}

// Handed to a new image on an upgrade (the file itself stays as it is).
record!(StatusFile { path, written });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_numerically() {
        assert_eq!(format(&[(10, 5), (2, 7), (9, 1)]), "2:7\n9:1\n10:5\n");
        assert_eq!(format(&[]), "");
    }

    #[test]
    fn reads_generations() {
        assert_eq!(
            generations("10:5\n2:7\n2:8\ngarbage\n:3\nx:1\n"),
            vec![2, 10]
        );
        assert_eq!(generations(""), Vec::<u64>::new());
    }

    #[test]
    fn written_in_a_directory_whose_name_is_not_utf8() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join(OsStr::from_bytes(b"dir\xff"));
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("status");
        let mut status = StatusFile::new(path.clone());
        status.write(&[(1, 100)]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1:100\n");
        // Only the status file: the temp file was renamed onto it.
        let names: Vec<_> = std::fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["status"]);
        drop(status);
        assert!(!path.exists());
    }

    #[test]
    fn replaces_atomically_and_never_follows_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let planted = format!("{}.{}", path.display(), std::process::id());
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let mut status = StatusFile::new(path.clone());
        status.write(&[(1, 100), (2, 200)]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1:100\n2:200\n");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        drop(status);
        assert!(!path.exists());
    }
}
