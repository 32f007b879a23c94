//! Panics as one-line errors. tch turns a libtorch error (a CUDA out-of-memory, a shape
//! mismatch) into a Rust panic; [`catch`] turns a panic inside a run into that run's error,
//! so a grid records it as a failed run and goes on. Outside [`catch`], the hook
//! ([`install_hook`]) prints the panic as one line instead of a backtrace.
use std::cell::{Cell, RefCell};

thread_local! {
    /// Depth of [`catch`] calls on this thread: the hook stays quiet inside them.
    static CATCHING: Cell<usize> = const { Cell::new(0) };
    /// The last caught panic's message and place.
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A panic's first line and where it happened.
fn describe(info: &std::panic::PanicHookInfo) -> String {
    let msg = info
        .payload()
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| info.payload().downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    let first = msg.lines().next().unwrap_or(msg);
    let at = info
        .location()
        .map(|l| format!(" (at {}:{})", l.file(), l.line()))
        .unwrap_or_default();
    format!("internal error: {first}{at}")
}

/// Replaces the default panic hook: one line on stderr, or, inside [`catch`], nothing (the
/// message becomes the caught error).
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let text = describe(info);
        if CATCHING.with(Cell::get) > 0 {
            LAST.with(|l| *l.borrow_mut() = Some(text));
        } else {
            eprintln!("error: {text}");
        }
    }));
}

/// Runs `f`; a panic inside it (a libtorch error through tch) becomes an error naming the
/// panic's first line and place.
pub fn catch<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    CATCHING.with(|c| c.set(c.get() + 1));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(c.get() - 1));
    match r {
        Ok(r) => r,
        Err(payload) => {
            let text = LAST.with(|l| l.borrow_mut().take()).unwrap_or_else(|| {
                payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .map_or("internal error: a panic".into(), |m| {
                        format!("internal error: {}", m.lines().next().unwrap_or(""))
                    })
            });
            Err(anyhow::anyhow!(text))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_libtorch_error_inside_catch_is_an_error_not_a_panic() {
        let r: anyhow::Result<()> = catch(|| {
            let a = tch::Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu));
            let _ = a.matmul(&a); // [2, 3] x [2, 3]: libtorch refuses, tch panics
            Ok(())
        });
        let e = r.unwrap_err().to_string();
        assert!(e.starts_with("internal error: "), "{e}");
        assert!(
            e.contains("mat1 and mat2 shapes cannot be multiplied"),
            "{e}"
        );
        assert_eq!(catch(|| Ok(7)).unwrap(), 7);
        assert_eq!(CATCHING.with(Cell::get), 0);
    }
}
