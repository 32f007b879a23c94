//! SIGINT and SIGTERM (Slurm's preemption and time-limit signal) as a request to stop: the
//! trainer finishes the step in flight, saves a checkpoint of the run and returns
//! [`Interrupted`]; the grid records nothing for that run and stops; the next start resumes
//! it. A second signal ends the process at once.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

static SIGNAL: OnceLock<Arc<AtomicUsize>> = OnceLock::new();

/// Installs the handlers (once; later calls do nothing).
pub fn install() -> anyhow::Result<()> {
    if SIGNAL.get().is_some() {
        return Ok(());
    }
    let flag = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while the first is being handled exits with 128 + signal.
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, armed.clone())?;
        signal_hook::flag::register(sig, armed)?;
        signal_hook::flag::register_usize(sig, flag.clone(), sig as usize)?;
    }
    let _ = SIGNAL.set(flag);
    Ok(())
}

/// The signal that asked to stop, if any.
pub fn requested() -> Option<i32> {
    SIGNAL
        .get()
        .map(|f| f.load(Ordering::SeqCst))
        .filter(|&s| s != 0)
        .map(|s| s as i32)
}

/// A run stopped by a signal after saving its checkpoint.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
    /// Where the run can resume from.
    pub resume_at: String,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "interrupted by {} after saving a checkpoint at {}: run the same command again to resume",
            match self.signal {
                2 => "SIGINT",
                15 => "SIGTERM",
                _ => "a signal",
            },
            self.resume_at
        )
    }
}

impl std::error::Error for Interrupted {}

/// The exit status for an error chain: 128 + signal when it is an interruption.
pub fn exit_code(e: &anyhow::Error) -> Option<u8> {
    e.chain()
        .find_map(|c| c.downcast_ref::<Interrupted>())
        .map(|i| (128 + i.signal).clamp(0, 255) as u8)
}
