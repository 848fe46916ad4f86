//! The status-file watcher: every content the file had during a run, in
//! order, with the time each was first seen, and the fork times of the
//! workers (read from /proc while they are surely alive).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::harness;

/// Contents of the status file (`None`: absent), each with the time it
/// was first seen (ms since the epoch).
pub type Contents = Vec<(Option<String>, u128)>;

/// Watches the status file and records every content it had, in order.
///
/// Each version of the file is a new inode renamed into place, and some
/// live only for milliseconds (the two-line file during a restart), so the
/// watcher wakes on inotify events rather than polling, and the runs it
/// watches are started at a lower priority (see `harness::NICE`). Script
/// steps that wait for a status read the watcher's record, so every
/// content a script waited for is in it.
pub struct StatusWatcher {
    stop: Arc<AtomicBool>,
    /// Each content and when it was first seen (ms since the epoch).
    seen: Arc<Mutex<Contents>>,
    /// Fork times of the workers, by pid, read from /proc as soon as a
    /// worker writes its first report file (while it is surely alive).
    forks: Arc<Mutex<BTreeMap<i32, u128>>>,
    handle: thread::JoinHandle<()>,
}

impl StatusWatcher {
    pub fn start(dir: &Path, file: PathBuf, tw: &Path) -> StatusWatcher {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let inotify =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).expect("inotify_init");
        inotify
            .add_watch(
                dir,
                AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_CLOSE_WRITE
                    | AddWatchFlags::IN_DELETE
                    | AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_MODIFY,
            )
            .expect("inotify_add_watch");
        let tw_watch = inotify
            .add_watch(tw, AddWatchFlags::IN_CREATE)
            .expect("inotify_add_watch");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(vec![(None, harness::now_ms())]));
        let forks = Arc::new(Mutex::new(BTreeMap::new()));
        let (flag, record, fork_times) = (Arc::clone(&stop), Arc::clone(&seen), Arc::clone(&forks));
        let handle = thread::spawn(move || {
            use std::os::fd::{AsFd, AsRawFd};
            let look = || {
                let now = fs::read_to_string(&file).ok();
                let mut seen = record.lock().unwrap_or_else(|e| e.into_inner());
                if seen.last().map(|(c, _)| c) != Some(&now) {
                    seen.push((now, harness::now_ms()));
                }
            };
            loop {
                let stopping = flag.load(Ordering::SeqCst);
                let mut pfd = libc::pollfd {
                    fd: inotify.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll(2) on one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 20) };
                while let Ok(events) = inotify.read_events() {
                    if events.is_empty() {
                        break;
                    }
                    look();
                    for event in events.iter().filter(|e| e.wd == tw_watch) {
                        let pid = event
                            .name
                            .as_ref()
                            .and_then(|n| n.to_str()?.split('.').next()?.parse::<i32>().ok());
                        if let Some(pid) = pid {
                            let mut forks = fork_times.lock().unwrap_or_else(|e| e.into_inner());
                            if let (std::collections::btree_map::Entry::Vacant(slot), Some(t)) =
                                (forks.entry(pid), harness::fork_time_ms(pid))
                            {
                                slot.insert(t);
                            }
                        }
                    }
                }
                look();
                if stopping {
                    return;
                }
            }
        });
        StatusWatcher {
            stop,
            seen,
            forks,
            handle,
        }
    }

    /// The contents last recorded.
    pub fn latest(&self) -> Option<String> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.last().and_then(|(c, _)| c.clone())
    }

    pub fn finish(self) -> (Contents, BTreeMap<i32, u128>) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("status watcher");
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let forks = self.forks.lock().unwrap_or_else(|e| e.into_inner());
        (seen.clone(), forks.clone())
    }
}
