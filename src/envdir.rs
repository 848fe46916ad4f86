//! The `--envdir`: a daemontools-style directory of environment variables,
//! one file per variable, read again at every turn of the supervisor loop.
//!
//! Invariant: the worker environment is always start_server's own
//! environment overlaid with what the directory holds *now*: a variable
//! whose file was removed is gone again, even if it was there at start-up.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::state::record;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// An ordered set of environment variables.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Env {
    vars: Vec<(OsString, OsString)>,
}

impl Env {
    /// Our own environment.
    pub fn inherited() -> Env {
        Env {
            vars: std::env::vars_os().collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&OsString> {
        self.vars
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The value as text (lossy), as the supervisor reads its settings.
    pub fn get_str(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| v.to_string_lossy().into_owned())
    }

    /// Sets `name`, replacing any earlier value in place.
    pub fn set(&mut self, name: impl Into<OsString>, value: impl Into<OsString>) {
        let (name, value) = (name.into(), value.into());
        match self.vars.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((name, value)),
        }
    }

    /// This environment with `other`'s variables set on top.
    pub fn overlaid(&self, other: &Env) -> Env {
        let mut env = self.clone();
        for (k, v) in &other.vars {
            env.set(k.clone(), v.clone());
        }
        env
    }

    pub fn iter(&self) -> impl Iterator<Item = &(OsString, OsString)> {
        self.vars.iter()
    }
}

/// Reads the directory like the reference: every file not starting with a
/// dot, its first line without the newline; an empty or unreadable file
/// sets nothing. A missing directory is an empty set.
pub fn read(dir: &Path) -> Env {
    let mut env = Env::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return env;
    };
    let mut names: Vec<OsString> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in names {
        let bytes = name.as_bytes();
        if bytes.starts_with(b".") || bytes.contains(&b'=') {
            continue;
        }
        let Ok(file) = std::fs::File::open(dir.join(&name)) else {
            continue;
        };
        let mut line = Vec::new();
        match BufReader::new(file).read_until(b'\n', &mut line) {
            Ok(n) if n > 0 => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                if !line.contains(&0) {
                    env.set(name, OsString::from_vec(line));
                }
            }
            _ => {}
        }
    }
    env
}

/// Keeps an eye on the envdir so that a change wakes the loop at once
/// (inotify), without periodic wake-ups. When the directory cannot be
/// watched (it does not exist yet, say), it is read again every second.
pub struct Watch {
    dir: PathBuf,
    inotify: Option<Inotify>,
    next_poll: Option<Instant>,
}

const WATCH_FLAGS: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MODIFY)
    .union(AddWatchFlags::IN_CLOSE_WRITE)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_ATTRIB)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF);

impl Watch {
    pub fn new(dir: PathBuf) -> Watch {
        let mut watch = Watch {
            dir,
            inotify: None,
            next_poll: None,
        };
        watch.arm();
        watch
    }

    fn arm(&mut self) {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).ok();
        self.inotify = inotify.filter(|i| i.add_watch(&self.dir, WATCH_FLAGS).is_ok());
        self.next_poll = match self.inotify {
            Some(_) => None,
            None => Some(Instant::now() + Duration::from_secs(1)),
        };
    }

    /// The directory's variables now (re-arming the watch if it was lost).
    pub fn read(&mut self) -> Env {
        if self.next_poll.is_some_and(|t| Instant::now() >= t) {
            self.arm();
        }
        read(&self.dir)
    }

    /// The descriptor poll(2) should watch, if any.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.inotify.as_ref().map(|i| i.as_fd())
    }

    /// When to look again without an inotify event, if ever.
    pub fn next_poll(&self) -> Option<Instant> {
        self.next_poll
    }

    /// Consumes pending events; a watch whose directory went away falls
    /// back to polling until it comes back.
    pub fn drain_events(&mut self) {
        let Some(inotify) = &self.inotify else {
            return;
        };
        let mut lost = false;
        while let Ok(events) = inotify.read_events() {
            if events.is_empty() {
                break;
            }
            lost |= events.iter().any(|e| {
                e.mask.intersects(
                    AddWatchFlags::IN_IGNORED
                        | AddWatchFlags::IN_DELETE_SELF
                        | AddWatchFlags::IN_MOVE_SELF,
                )
            });
        }
        if lost {
            self.inotify = None;
            self.next_poll = Some(Instant::now() + Duration::from_secs(1));
        }
    }
}

record!(Env { vars });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_first_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("A"), "one\ntwo\n").unwrap();
        std::fs::write(dir.path().join("B"), "no newline").unwrap();
        std::fs::write(dir.path().join("C"), "").unwrap();
        std::fs::write(dir.path().join("D"), "\n").unwrap();
        std::fs::write(dir.path().join(".hidden"), "x").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let env = read(dir.path());
        assert_eq!(env.get_str("A").as_deref(), Some("one"));
        assert_eq!(env.get_str("B").as_deref(), Some("no newline"));
        assert_eq!(env.get_str("C"), None);
        assert_eq!(env.get_str("D").as_deref(), Some(""));
        assert_eq!(env.get_str(".hidden"), None);
        assert_eq!(env.get_str("sub"), None);
        assert_eq!(read(&dir.path().join("missing")), Env::default());
    }

    #[test]
    fn overlay_replaces_in_place() {
        let mut base = Env::default();
        base.set("A", "1");
        base.set("B", "2");
        let mut top = Env::default();
        top.set("B", "3");
        top.set("C", "4");
        let env = base.overlaid(&top);
        let pairs: Vec<_> = env
            .iter()
            .map(|(k, v)| (k.to_str().unwrap(), v.to_str().unwrap()))
            .collect();
        assert_eq!(pairs, vec![("A", "1"), ("B", "3"), ("C", "4")]);
    }
}
