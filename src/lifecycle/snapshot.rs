//! The core's state in the upgrade format (`state.rs`): every field of
//! [`Lifecycle`] but its [`Config`], which the new image parses again from
//! the same command line.
//!
//! Times are the core's own (since the supervisor started); the shell
//! carries its clock's reading beside them, so every deadline keeps its
//! instant across the exec.
//!
//! Invariant: `restore(config, save(core)) == core`. Both functions
//! destructure every struct whole, so a field added to the core cannot be
//! forgotten here without a compile error.

use super::{
    Attempt, Config, Lifecycle, Phase, Reason, Service, Sig, Signalled, Start, Stopping, Worker,
};
use crate::settings::{Seconds, Settings};
use crate::state::{Decode, Encode, Error, Reader, Writer, record};

record!(Seconds { text, value });
record!(Settings {
    auto_restart,
    kill_old_delay
});
record!(Worker { pid, generation });
record!(Sig { number, name });
record!(Start { reason, phase });
record!(Attempt {
    worker,
    started,
    exit,
    doomed,
    ready,
    deadline,
    killed
});
record!(Stopping {
    remaining,
    signal,
    since
});
record!(Service {
    ready_sent,
    reloading,
    upgrading,
});
record!(Signalled {
    pid,
    at,
    signal,
    killed
});

impl Lifecycle {
    /// Writes the state (all but the config).
    pub fn save(&self, w: &mut Writer) {
        let Lifecycle {
            config: _,
            settings,
            generation,
            current,
            old,
            start,
            kill_at,
            killed_at,
            hup_pending,
            hup_paced,
            hup_restart_at,
            last_restart,
            last_spawn,
            failed_starts,
            stopping,
            signalled,
            service,
        } = self;
        w.put(settings);
        w.put(generation);
        w.put(current);
        w.put(old);
        w.put(start);
        w.put(kill_at);
        w.put(killed_at);
        w.put(hup_pending);
        w.put(hup_paced);
        w.put(hup_restart_at);
        w.put(last_restart);
        w.put(last_spawn);
        w.put(failed_starts);
        w.put(stopping);
        w.put(signalled);
        w.put(service);
    }

    /// The core [`Lifecycle::save`] wrote, under `config`.
    pub fn restore(config: Config, r: &mut Reader<'_>) -> Result<Lifecycle, Error> {
        Ok(Lifecycle {
            config,
            settings: r.get()?,
            generation: r.get()?,
            current: r.get()?,
            old: r.get()?,
            start: r.get()?,
            kill_at: r.get()?,
            killed_at: r.get()?,
            hup_pending: r.get()?,
            hup_paced: r.get()?,
            hup_restart_at: r.get()?,
            last_restart: r.get()?,
            last_spawn: r.get()?,
            failed_starts: r.get()?,
            stopping: r.get()?,
            signalled: r.get()?,
            service: r.get()?,
        })
    }
}

impl Encode for Reason {
    fn encode(&self, w: &mut Writer) {
        w.put(&match self {
            Reason::Initial => 0u8,
            Reason::Crash => 1,
            Reason::Restart => 2,
        });
    }
}

impl Decode for Reason {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Error> {
        match r.get::<u8>()? {
            0 => Ok(Reason::Initial),
            1 => Ok(Reason::Crash),
            2 => Ok(Reason::Restart),
            n => Err(unknown("reason", n)),
        }
    }
}

fn unknown(what: &str, tag: u8) -> Error {
    Error::new(format!("unknown {what} {tag}"))
}

impl Encode for Phase {
    fn encode(&self, w: &mut Writer) {
        match self {
            Phase::Waiting { not_before } => {
                w.put(&0u8);
                w.put(not_before);
            }
            Phase::Spawning { generation } => {
                w.put(&1u8);
                w.put(generation);
            }
            Phase::Checking(attempt) => {
                w.put(&2u8);
                w.put(attempt);
            }
        }
    }
}

impl Decode for Phase {
    fn decode(r: &mut Reader<'_>) -> Result<Self, Error> {
        match r.get::<u8>()? {
            0 => Ok(Phase::Waiting {
                not_before: r.get()?,
            }),
            1 => Ok(Phase::Spawning {
                generation: r.get()?,
            }),
            2 => Ok(Phase::Checking(r.get()?)),
            n => Err(unknown("phase", n)),
        }
    }
}
