//! Diagnostics of the inserted modules (`dka inspect`): while a probe is on (on this thread),
//! every module a site applies records, per sample, how much it changes what it is given
//! (`‖f(x) − x‖ / ‖x‖` for a module on the token stream, `‖term‖ / ‖x‖` for a module beside a
//! residual branch, `‖delta‖ / ‖layer output‖` for a delta on a frozen layer), and a DKA
//! module the output norms of its large and small branches separately. Off (always, outside
//! `dka inspect`), the sites pay one thread-local read.
use std::cell::RefCell;
use tch::{Kind, Tensor};

/// What one application of one module recorded.
#[derive(Debug, Clone)]
pub struct Record {
    /// The kind of site: `token`, `parallel`, `linear`, `conv`, `map`.
    pub site: &'static str,
    /// Per sample: how much the module changes its input, relative to it.
    pub change: Vec<f64>,
    /// DKA: per sample, the norms of the large and the small branch's outputs.
    pub branches: Option<(Vec<f64>, Vec<f64>)>,
    /// DKA: the height and width of the map its kernels ran on.
    pub grid: Option<(i64, i64)>,
}

thread_local! {
    static RECORDS: RefCell<Option<Vec<Record>>> = const { RefCell::new(None) };
    static BRANCHES: RefCell<Option<((Vec<f64>, Vec<f64>), (i64, i64))>> = const { RefCell::new(None) };
}

/// Starts recording (dropping what an earlier probe left).
pub fn start() {
    RECORDS.with(|r| *r.borrow_mut() = Some(Vec::new()));
    BRANCHES.with(|b| *b.borrow_mut() = None);
}

/// Stops recording and returns the records, in the order the modules ran.
pub fn finish() -> Vec<Record> {
    BRANCHES.with(|b| *b.borrow_mut() = None);
    RECORDS.with(|r| r.borrow_mut().take()).unwrap_or_default()
}

/// Whether a probe is recording.
pub fn on() -> bool {
    RECORDS.with(|r| r.borrow().is_some())
}

/// Per-sample L2 norms of `t` (`[batch, ...]`), in f64.
pub fn norms(t: &Tensor) -> Vec<f64> {
    let n = t.size()[0];
    let v = t
        .detach()
        .to_kind(Kind::Double)
        .reshape([n, -1])
        .norm_scalaropt_dim(2, [1], false)
        .to_device(tch::Device::Cpu);
    Vec::<f64>::try_from(&v).unwrap_or_default()
}

/// Records a DKA module's branch outputs (taken by the next [`record`] of that module).
pub(crate) fn branches(large: &Tensor, small: &Tensor) {
    let s = large.size();
    let b = (
        (norms(large), norms(small)),
        (s[s.len() - 2], s[s.len() - 1]),
    );
    BRANCHES.with(|s| *s.borrow_mut() = Some(b));
}

/// Records a module at a `site` that changed `base` by `delta` (both `[batch, ...]`).
pub(crate) fn record(site: &'static str, base: &Tensor, delta: &Tensor) {
    let (b, d) = (norms(base), norms(delta));
    let change = b
        .iter()
        .zip(&d)
        .map(|(b, d)| if *b > 0.0 { d / b } else { f64::NAN })
        .collect();
    let taken = BRANCHES.with(|s| s.borrow_mut().take());
    let (branches, grid) = match taken {
        Some((b, g)) => (Some(b), Some(g)),
        None => (None, None),
    };
    RECORDS.with(|r| {
        if let Some(v) = r.borrow_mut().as_mut() {
            v.push(Record {
                site,
                change,
                branches,
                grid,
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_while_on() {
        let x = Tensor::ones([2, 3, 4], (Kind::Float, tch::Device::Cpu));
        record("token", &x, &(&x * 0.5));
        assert!(!on());
        start();
        branches(&x, &(&x * 2.0));
        record("token", &x, &(&x * 0.5));
        let r = finish();
        assert_eq!(r.len(), 1);
        assert!((r[0].change[0] - 0.5).abs() < 1e-12);
        let (l, s) = r[0].branches.clone().unwrap();
        assert!((s[1] / l[1] - 2.0).abs() < 1e-12);
        assert!(!on());
    }
}
